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

/// Searches every (account, region) of a discovery at once with `find`, and gathers what each
/// place found or why it failed: one failing place does not hold back the others. The
/// resources come sorted, without duplicates.
pub async fn search_places<'a, F, Fut>(discovery: &'a Discovery, find: F) -> Discovered
where
    F: Fn(&'a str, &'a str) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Resource>, DiscoveryError>>,
{
    let places: Vec<(&str, &str)> = discovery
        .accounts
        .iter()
        .flat_map(|account| discovery.regions.iter().map(move |region| (account.as_str(), region.as_str())))
        .collect();
    let searches = places.iter().map(|(account, region)| find(account, region));
    let mut out = Discovered::default();
    for ((account, region), found) in places.iter().zip(futures::future::join_all(searches).await) {
        match found {
            Ok(resources) => out.resources.extend(resources),
            Err(e) => out.failed.push(PlaceFailed {
                account: (*account).to_owned(),
                region: (*region).to_owned(),
                error: match e {
                    DiscoveryError::Failed { message, .. } => message,
                    other => other.to_string(),
                },
            }),
        }
    }
    out.resources.sort();
    out.resources.dedup();
    out
}

/// The result of a whole discovery: what every place found, or the first failure.
pub fn all_or_first_failure(discovery: &Discovery, found: Discovered) -> Result<Vec<Resource>, DiscoveryError> {
    match found.failed.first() {
        None => Ok(found.resources),
        Some(place) => Err(DiscoveryError::Failed { task: discovery.task_name.clone(), message: place.error.clone() }),
    }
}

/// The failure of a search in one place, from an error's first line.
pub(crate) fn failed(task: &str, place: &str, e: impl std::fmt::Display) -> DiscoveryError {
    let text = e.to_string();
    DiscoveryError::Failed {
        task: task.to_owned(),
        message: format!("{place}: {}", text.lines().next().unwrap_or_default()),
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
