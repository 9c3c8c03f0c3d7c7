//! Run permits: how many jobs (and, apart, how many completion checks) run at once in this
//! process, and the in-flight gauge that counts them.

use crate::telemetry::jobs_in_flight;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A pool of permits (`max_in_flight`) and the count of what runs under any pool.
#[derive(Clone)]
pub(super) struct Permits {
    pool: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
}

/// A job or check running in this process: it holds one permit, and the in-flight gauge counts
/// it until it is dropped.
pub(crate) struct Running {
    _permit: OwnedSemaphorePermit,
    count: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        jobs_in_flight(self.count.fetch_sub(1, Ordering::SeqCst).saturating_sub(1));
    }
}

impl Permits {
    /// `n` permits, counted in `in_flight`.
    pub(super) fn new(n: usize, in_flight: Arc<AtomicUsize>) -> Self {
        Permits { pool: Arc::new(Semaphore::new(n)), in_flight }
    }

    /// The semaphore, for the consumer to take a permit per message it receives.
    pub(super) fn pool(&self) -> Arc<Semaphore> {
        Arc::clone(&self.pool)
    }

    /// Takes a permit; `None` once `stop` is cancelled.
    pub(super) async fn take(&self, stop: &CancellationToken) -> Option<Running> {
        let permit = tokio::select! {
            permit = Arc::clone(&self.pool).acquire_owned() => permit.ok()?,
            () = stop.cancelled() => return None,
        };
        Some(self.count(permit))
    }

    /// Counts a permit already taken as running.
    pub(super) fn count(&self, permit: OwnedSemaphorePermit) -> Running {
        jobs_in_flight(self.in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        Running { _permit: permit, count: Arc::clone(&self.in_flight) }
    }
}
