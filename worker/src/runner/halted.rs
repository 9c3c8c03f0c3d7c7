//! Whether a task is halted (an alarm of its `halt_on_alarms` in ALARM, or `opsfleet halt`),
//! read from the fleet's table at most every [`HALT_READ_EVERY`] per task and process: a job
//! entering the gate costs no read of its own, and a halt reaches every worker within that
//! long (plus the read's eventual consistency).

use opsfleet_protocol::halt::{Halt, Halts};
use opsfleet_protocol::ports::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long one read of a task's halts is taken as current.
pub const HALT_READ_EVERY: Duration = Duration::from_secs(2);

/// The halts of the fleet's tasks, as this process last read them.
pub(super) struct HaltWatch {
    halts: Halts,
    read: Mutex<HashMap<String, (Instant, Option<Halt>)>>,
}

impl HaltWatch {
    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        HaltWatch { halts: Halts::new(store), read: Mutex::default() }
    }

    /// The halt of `task` in force, if any (the first, when several are).
    pub(super) async fn halted(&self, task: &str) -> Result<Option<Halt>, StoreError> {
        {
            let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, halt)) = read.get(task).filter(|(at, _)| at.elapsed() < HALT_READ_EVERY) {
                let _ = at;
                return Ok(halt.clone());
            }
        }
        let halt = self.halts.of_task(task).await?.into_iter().next();
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(task.to_owned(), (Instant::now(), halt.clone()));
        Ok(halt)
    }
}
