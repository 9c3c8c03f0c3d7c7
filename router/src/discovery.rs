//! The discovery port: resources found by a query rather than named by the event.

use async_trait::async_trait;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::Resource;

/// Why a discovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// This process cannot run discoveries; the event is dead-lettered with this reason.
    #[error("task {task}: discovery of {kind} is not available in this process")]
    Unavailable {
        /// The task.
        task: String,
        /// The resource type asked for.
        kind: String,
    },
    /// A call failed in a way that may pass; the event is retried.
    #[error("task {task}: discovery failed: {message}")]
    Failed {
        /// The task.
        task: String,
        /// What happened.
        message: String,
    },
}

/// Runs discovery queries.
#[async_trait]
pub trait Discover: Send + Sync {
    /// The resources a discovery finds.
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError>;
}

/// A discoverer that has no way to find resources: every discovery is refused.
pub struct NoDiscovery;

#[async_trait]
impl Discover for NoDiscovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        Err(DiscoveryError::Unavailable { task: discovery.task_name.clone(), kind: discovery.query.kind.to_string() })
    }
}
