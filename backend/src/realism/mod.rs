//! AWS as it behaves, around any backend: what the emulators and the embedded backend are too
//! kind to do. DynamoDB's eventually consistent reads return an item as it was a moment ago, and
//! its indexes miss recent writes; a write can be applied and its reply lost, so the SDK sends it
//! again a while later; a standard SQS queue delivers a message more than once. Tests run the
//! worker on this layer so that every decision it takes on a read, a retry or a delivery meets
//! what production does.

mod queue;
mod store;

pub use queue::DuplicatingQueue;
pub use store::{EventualStore, LostReply};

use async_trait::async_trait;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, QueueSpec, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How unkind to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Realism {
    /// An eventually consistent read (and an index or eventually consistent query) sees the
    /// table as it was this long ago.
    pub read_lag: Duration,
    /// The share of writes that are applied and whose reply is lost: the write is sent again
    /// after [`Realism::retry_after`], as the SDK does, and the caller gets the second answer.
    pub lost_replies: f64,
    /// How long the SDK takes to send a write again whose reply was lost.
    pub retry_after: Duration,
    /// The share of messages a standard queue delivers a second time, to the next receive.
    pub duplicates: f64,
}

impl Realism {
    /// What a test of the fleet runs with: reads a second behind, one write in twenty lost and
    /// retried 300 ms later, one standard message in ten delivered twice.
    pub fn aws() -> Self {
        Realism {
            read_lag: Duration::from_secs(1),
            lost_replies: 0.05,
            retry_after: Duration::from_millis(300),
            duplicates: 0.1,
        }
    }

    /// Stale reads only.
    pub fn stale_reads(read_lag: Duration) -> Self {
        Realism { read_lag, lost_replies: 0.0, retry_after: Duration::ZERO, duplicates: 0.0 }
    }
}

/// A backend whose tables and standard queues behave as AWS's do (see [`Realism`]). Every
/// caller of one table or queue shares one layer, so that what one writes, another reads late.
pub struct RealisticBackend {
    inner: Arc<dyn Backend>,
    realism: Realism,
    stores: Mutex<HashMap<String, Arc<EventualStore>>>,
    queues: Mutex<HashMap<String, Arc<dyn Queue>>>,
}

impl RealisticBackend {
    /// The layer around `inner`.
    pub fn new(inner: Arc<dyn Backend>, realism: Realism) -> Self {
        RealisticBackend { inner, realism, stores: Mutex::default(), queues: Mutex::default() }
    }

    /// The layer of a table, for tests that lose one chosen reply.
    pub async fn eventual_store(&self, table: &str) -> Result<Arc<EventualStore>, StoreError> {
        if let Some(store) = self.stores.lock().unwrap_or_else(PoisonError::into_inner).get(table) {
            return Ok(Arc::clone(store));
        }
        let inner = self.inner.store(table).await?;
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let store = stores.entry(table.to_owned()).or_insert_with(|| Arc::new(EventualStore::new(inner, self.realism)));
        Ok(Arc::clone(store))
    }
}

#[async_trait]
impl Backend for RealisticBackend {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        if let Some(queue) = self.queues.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(Arc::clone(queue));
        }
        let inner = self.inner.queue(name).await?;
        let layer: Arc<dyn Queue> = if name.ends_with(".fifo") || self.realism.duplicates <= 0.0 {
            // FIFO queues deduplicate; the embedded queue already hands out several messages
            // of a group per receive, as SQS does.
            inner
        } else {
            Arc::new(DuplicatingQueue::new(inner, self.realism.duplicates))
        };
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(queues.entry(name.to_owned()).or_insert(layer)))
    }

    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        Ok(self.eventual_store(table).await? as Arc<dyn Store>)
    }

    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        self.inner.ensure_queue(spec).await
    }

    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.inner.ensure_table(table).await
    }
}
