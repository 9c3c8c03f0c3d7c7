//! The ports: how the router and workers reach queues and the store. SQS and DynamoDB
//! implement them in `opsfleet-backend`, and so does the embedded in-process backend with the
//! same semantics.

mod queue;
mod store;

pub use queue::{
    DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec, ReceivedMessage, SendFailure, MAX_BATCH,
    MAX_DELAY,
};
pub use store::{AttrValue, Attrs, Cond, Item, Key, Store, StoreError, Update};

use async_trait::async_trait;
use std::sync::Arc;

/// A backend: opens queues and tables by name and creates them (idempotently).
#[async_trait]
pub trait Backend: Send + Sync {
    /// A handle on an existing queue.
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError>;
    /// A handle on an existing table.
    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError>;
    /// Creates a queue (and its DLQ with the redrive policy) unless it exists.
    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError>;
    /// Creates a table unless it exists.
    async fn ensure_table(&self, table: &str) -> Result<(), StoreError>;
}
