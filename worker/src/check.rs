//! Completion-check messages on `<name>-checks`: what a check needs to find the work again,
//! with the leases the job keeps while it waits.

use crate::lease::Lease;
use opsfleet_protocol::Job;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the check JSON.
pub const CHECK_VERSION: u32 = 1;

/// A delayed completion check of a pending job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckMessage {
    /// The check JSON version.
    pub v: u32,
    /// The job.
    pub job: Job,
    /// The job's lock.
    pub lock: Lease,
    /// The slots the job holds.
    pub slots: Vec<Lease>,
    /// The action's state for `check`.
    pub state: Value,
    /// When the check is due, Unix ms (checks past SQS's 15-minute delay are chained).
    pub due_ms: u64,
    /// Checks run so far.
    pub checks: u32,
    /// The attempt the job is in.
    pub attempt: u32,
    /// When the lock was taken, Unix ms.
    pub locked_ms: u64,
    /// When the action started, Unix ms.
    pub started_ms: u64,
}

impl CheckMessage {
    /// Reads a check from a message body.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let check: CheckMessage = serde_json::from_str(text).map_err(|e| format!("not a check: {e}"))?;
        if check.v != CHECK_VERSION {
            return Err(format!("check version {} is not {CHECK_VERSION}", check.v));
        }
        Ok(check)
    }
}
