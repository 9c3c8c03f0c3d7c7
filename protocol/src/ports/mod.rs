//! The ports: how the router and workers reach queues and the store. SQS and DynamoDB
//! implement them in `opsfleet-backend`, and so does the embedded in-process backend with the
//! same semantics.

mod queue;
mod send;
mod store;

pub use queue::{
    DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec, ReceivedMessage, SendFailure, MAX_BATCH,
    MAX_DELAY,
};
pub use send::{send_all, SendError};
pub use store::{AttrValue, Attrs, Cond, Index, IndexQuery, Item, Key, Store, StoreError, Update};

/// A queue or store call that failed: what the router's, the worker's and `setup`'s calls
/// through the ports come to.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A queue is missing, unreachable, or refused the call.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The table is missing, unreachable, or refused the call.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Messages could not all be sent, retries included.
    #[error(transparent)]
    Send(#[from] SendError),
}

impl PortError {
    /// Whether trying again later may succeed (transport, throttling, a server error).
    pub fn is_transient(&self) -> bool {
        match self {
            PortError::Queue(e) => e.is_transient(),
            PortError::Store(e) => e.is_transient(),
            PortError::Send(SendError::Queue(e)) => e.is_transient(),
            PortError::Send(SendError::Unavailable { .. }) => true,
            PortError::Send(SendError::Refused { .. } | SendError::TooLarge(_)) => false,
        }
    }
}

/// The secondary indexes of a fleet's table, which `setup` creates: the ledger's jobs by
/// resource id, by task, by status and by run (event and task), newest first by when their
/// event arrived (`opsfleet audit` answers from them without scanning the table). They hold keys only, so a write touches an
/// index only when it changes that index's attributes: starting a job, and changing its status.
///
/// The status index is sparse: its attribute ([`OPEN_STATUS`]) is set only while a job is not
/// done well (in progress, pending, failed, cancelled), so the fleet's stream of successes
/// does not all write one index partition.
pub const INDEXES: [Index; 4] = [
    Index { name: "by-resource", key: "resource_id", order: "received_ms" },
    Index { name: "by-task", key: "task", order: "received_ms" },
    Index { name: "by-status", key: OPEN_STATUS, order: "received_ms" },
    Index { name: "by-run", key: "run", order: "received_ms" },
];

/// A job's status while it is not done well (not succeeded or skipped): the key of the
/// `by-status` index.
pub const OPEN_STATUS: &str = "open_status";

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
    /// Creates a table unless it exists, with the [`INDEXES`] (added to a table that lacks them).
    async fn ensure_table(&self, table: &str) -> Result<(), StoreError>;
}
