//! The embedded backend: in-process queues and tables with SQS and DynamoDB semantics, on
//! tokio's clock (so tests can pause time).

mod queue;
mod store;

pub use queue::EmbeddedQueue;
pub use store::EmbeddedStore;

use async_trait::async_trait;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, QueueSpec, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Queues and tables in this process.
#[derive(Default)]
pub struct EmbeddedBackend {
    queues: Mutex<HashMap<String, Arc<EmbeddedQueue>>>,
    tables: Mutex<HashMap<String, Arc<EmbeddedStore>>>,
}

impl EmbeddedBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// The concrete queue of a name, for tests and the demo's inspection.
    pub fn embedded_queue(&self, name: &str) -> Option<Arc<EmbeddedQueue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        self.embedded_queue(name)
            .map(|q| q as Arc<dyn Queue>)
            .ok_or_else(|| QueueError::NotFound { queue: name.to_owned() })
    }

    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .cloned()
            .map(|s| s as Arc<dyn Store>)
            .ok_or_else(|| StoreError::NotFound { table: table.to_owned() })
    }

    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if queues.contains_key(&spec.name) {
            return Ok(());
        }
        let dead_letter = match &spec.dead_letter {
            Some((name, max)) => {
                let dlq = queues.get(name).cloned().ok_or_else(|| QueueError::NotFound { queue: name.clone() })?;
                Some((dlq, *max))
            }
            None => None,
        };
        queues.insert(spec.name.clone(), Arc::new(EmbeddedQueue::new(spec, dead_letter)));
        Ok(())
    }

    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(table.to_owned())
            .or_insert_with(|| Arc::new(EmbeddedStore::new(table)));
        Ok(())
    }
}
