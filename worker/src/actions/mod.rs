//! Actions: what to do to one resource. An action only describes the effect (`start`, and
//! `check` for long-running work) and its metadata; locks, limits, the ledger, retries and
//! metrics live in the worker around it.

mod noop;
mod registry;

pub use noop::Noop;
pub use registry::ActionRegistry;

use async_trait::async_trait;
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::{Job, ResourceType};
use serde_json::Value;
use std::time::Duration;

/// What an action step came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The effect is in place.
    Done {
        /// A short summary for the ledger, such as the id of what was created.
        summary: String,
    },
    /// The effect is under way; ask again after `check_after` with `state`.
    Pending {
        /// When to check again.
        check_after: Duration,
        /// What the check needs to find the work again (such as a snapshot id).
        state: Value,
    },
    /// The resource opted out (`opsfleet:skip = true`) or has nothing to act on: nothing was
    /// done, for this reason.
    Skipped {
        /// A one-line reason.
        reason: String,
    },
    /// The action failed.
    Failed {
        /// Whether trying again may succeed (throttling, a server error).
        retryable: bool,
        /// A one-line reason.
        error: String,
    },
}

/// What an action is told about the job it runs.
#[derive(Debug, Clone, Copy)]
pub struct ActionContext<'a> {
    /// The job.
    pub job: &'a Job,
    /// Plan mode: record what would be done, change nothing.
    pub dry_run: bool,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The number of this completion check, from 1 (0 in `start`).
    pub check: u32,
}

/// One kind of action.
#[async_trait]
pub trait Action: Send + Sync {
    /// The name tasks use in `action = "…"`.
    fn name(&self) -> &'static str;

    /// The resource types it acts on.
    fn targets(&self) -> &'static [ResourceType];

    /// The fleet-wide limit it takes a slot of, with defaults.
    fn limit(&self) -> Option<LimitDefault> {
        None
    }

    /// Whether it changes anything in AWS; in plan mode (`--dry-run`, `demo`) an action that
    /// does is not started, and the ledger records what it would have done instead.
    fn mutates(&self) -> bool {
        true
    }

    /// What the action would do to the job's resource, for plan mode.
    fn describe(&self, ctx: ActionContext<'_>) -> String {
        format!("would run {} on {} with params {}", self.name(), ctx.job.resource.key(), ctx.job.params)
    }

    /// The IAM actions it needs.
    fn iam_actions(&self) -> &'static [&'static str];

    /// The params it takes, with a line on each, for `opsfleet actions`.
    fn params_help(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The params that are templates (`{task}`, `{date}`, `{event.FIELD}`, …), by name with
    /// their text, so that `opsfleet validate` checks them and the router copies the event
    /// fields they read into each job.
    fn templates(&self, _params: &Value) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Checks the task's params (its serde params struct); the error is a one-line reason.
    fn check_params(&self, params: &Value) -> Result<(), String>;

    /// Starts the effect on the job's resource. Must be idempotent by job id.
    async fn start(&self, ctx: ActionContext<'_>) -> Step;

    /// Asks how pending work started by `start` is going.
    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step;
}

/// Parses params into an action's params struct, naming the problem in one line.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, String> {
    serde_json::from_value(params.clone()).map_err(|e| format!("params: {e}"))
}
