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

/// What a discovery found, place by place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The resources found in the places that answered.
    pub resources: Vec<Resource>,
    /// The places that did not answer, each with its one-line reason.
    pub failed: Vec<PlaceFailed>,
}

/// An (account, region) a discovery could not search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceFailed {
    /// The account.
    pub account: String,
    /// The region.
    pub region: String,
    /// Why, in one line.
    pub error: String,
}

/// Runs discovery queries.
#[async_trait]
pub trait Discover: Send + Sync {
    /// The resources a discovery finds; an error when any place failed.
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError>;

    /// The resources a discovery finds in every (account, region) that answers, and the places
    /// that did not: one failing region or account does not hold back the others.
    async fn discover_places(&self, discovery: &Discovery) -> Result<Discovered, DiscoveryError> {
        Ok(Discovered { resources: self.discover(discovery).await?, failed: Vec::new() })
    }
}

/// A discoverer that has no way to find resources: every discovery is refused.
pub struct NoDiscovery;

#[async_trait]
impl Discover for NoDiscovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        Err(DiscoveryError::Unavailable { task: discovery.task_name.clone(), kind: discovery.query.kind.to_string() })
    }
}
