//! Discovery retried place by place: when some (account, region) of a discovery fails, the
//! jobs of the places that answered go out at once and the event is done with; for the failed
//! places the router sends itself a retry message on the events queue, delayed, one per
//! account, naming the task and the regions to search again. A retry runs only that task's
//! discovery in only those places, with the event's own receive time (so its jobs are the
//! ones the first routing would have made); after [`DISCOVERY_RETRIES`] it goes to the events
//! DLQ with each place's reason, and a redrive tries it once more.

use crate::discovery::PlaceFailed;
use opsfleet_protocol::plan::Plan;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The top-level key of a retry message's body.
const KEY: &str = "opsfleet-discovery-retry";

/// How many times failed places are retried before the retry is dead-lettered.
pub const DISCOVERY_RETRIES: u32 = 5;

/// A discovery to run again in some places of one account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryRetry {
    /// The task.
    pub task: String,
    /// The account.
    pub account: String,
    /// The regions to search again, each with the last reason it failed.
    pub regions: BTreeMap<String, String>,
    /// The retries so far, from 1.
    pub attempt: u32,
    /// When the event was first received, Unix ms.
    pub received_ms: u64,
    /// The event, as it was received.
    pub event: Value,
}

impl DiscoveryRetry {
    /// The retries of the failed places of `task`'s discovery, one per account.
    pub fn of(task: &str, failed: &[PlaceFailed], attempt: u32, received_ms: u64, event: &Value) -> Vec<Self> {
        let mut by_account: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for place in failed {
            by_account.entry(&place.account).or_default().insert(place.region.clone(), place.error.clone());
        }
        by_account
            .into_iter()
            .map(|(account, regions)| DiscoveryRetry {
                task: task.to_owned(),
                account: account.to_owned(),
                regions,
                attempt,
                received_ms,
                event: event.clone(),
            })
            .collect()
    }

    /// Reads a retry from a message body; `None` for any other body (an event).
    pub fn from_body(body: &str) -> Option<Result<Self, String>> {
        if !body.trim_start().starts_with('{') || !body.contains(KEY) {
            return None;
        }
        let mut value: Value = serde_json::from_str(body).ok()?;
        let inner = value.as_object_mut()?.remove(KEY)?;
        Some(serde_json::from_value(inner).map_err(|e| format!("not a discovery retry: {e}")))
    }

    /// The message body.
    pub fn body(&self) -> String {
        serde_json::json!({ KEY: self }).to_string()
    }

    /// How long the retry waits before it is received: a minute, doubling, at most SQS's 15.
    pub fn delay(&self) -> Duration {
        Duration::from_secs((60u64 << self.attempt.saturating_sub(1).min(4)).min(900))
    }

    /// The event's plan narrowed to this retry: none of the jobs the event names (they went
    /// out the first time), only this task's discovery, in this account and these regions.
    pub fn narrow(&self, plan: &mut Plan) {
        plan.jobs.clear();
        plan.discoveries.retain(|d| d.task_name == self.task);
        for d in &mut plan.discoveries {
            d.accounts = vec![self.account.clone()];
            d.regions = self.regions.keys().cloned().collect();
        }
    }

    /// The reason a retry that failed its last time is dead-lettered with.
    pub fn reason(&self, failed: &[PlaceFailed]) -> String {
        let places: Vec<String> = failed.iter().map(|p| format!("{}/{}: {}", p.account, p.region, p.error)).collect();
        format!("task {}: discovery failed {} times in {}", self.task, self.attempt, places.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(account: &str, region: &str) -> PlaceFailed {
        PlaceFailed { account: account.into(), region: region.into(), error: format!("{region} refused") }
    }

    #[test]
    fn one_retry_per_account_that_reads_back_from_its_body() {
        let event = serde_json::json!({ "id": "e-1", "source": "aws.events" });
        let places = [
            failed("111122223333", "eu-west-1"),
            failed("111122223333", "us-west-2"),
            failed("444455556666", "eu-west-1"),
        ];
        let retries = DiscoveryRetry::of("nightly", &places, 1, 42, &event);
        assert_eq!(retries.len(), 2);
        assert_eq!(retries[0].regions.keys().collect::<Vec<_>>(), ["eu-west-1", "us-west-2"]);
        let back = DiscoveryRetry::from_body(&retries[0].body()).expect("a retry").expect("valid");
        assert_eq!(back, retries[0]);
        assert!(DiscoveryRetry::from_body(&event.to_string()).is_none(), "an event is not a retry");
        assert_eq!(retries[0].delay(), Duration::from_secs(60));
        assert_eq!(DiscoveryRetry { attempt: 9, ..retries[0].clone() }.delay(), Duration::from_secs(900));
    }
}
