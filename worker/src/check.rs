//! Completion-check messages on `<name>-checks`: what a check needs to find the work again,
//! with the leases the job keeps while it waits.

use crate::lease::Lease;
use opsfleet_protocol::Job;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A new token for a link of a chain of checks.
pub fn new_token() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// The version of the check JSON this build writes.
pub const CHECK_VERSION: u32 = 2;

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
    /// How much longer to wait once this message arrives, in ms: a check due past SQS's
    /// 15-minute delay is chained, each link carrying what is left. A duration, not a time,
    /// so no two machines' clocks are compared.
    #[serde(default)]
    pub wait_ms: u64,
    /// Version 1 only: when the check was due, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// Checks run so far.
    pub checks: u32,
    /// This link of the job's chain of checks: the same in every delivery of the message and
    /// in a copy redriven from the checks DLQ, so the ledger knows the link again. Messages
    /// written before tokens were carried have none; their message id stands in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// The attempt the job is in.
    pub attempt: u32,
    /// When the lock was taken, Unix ms.
    pub locked_ms: u64,
    /// When the action started, Unix ms.
    pub started_ms: u64,
}

impl CheckMessage {
    /// Reads a check from a message body (this version, or version 1, whose due time is read
    /// against `now_ms`).
    pub fn from_json(text: &str, now_ms: u64) -> Result<Self, String> {
        let mut check: CheckMessage = serde_json::from_str(text).map_err(|e| format!("not a check: {e}"))?;
        match check.v {
            CHECK_VERSION => {}
            1 => {
                check.wait_ms = check.due_ms.take().unwrap_or(0).saturating_sub(now_ms);
                check.v = CHECK_VERSION;
            }
            v => return Err(format!("check version {v} is not {CHECK_VERSION}")),
        }
        Ok(check)
    }
}
