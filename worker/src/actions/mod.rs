//! Actions: what to do to one resource. An action only describes the effect (`start`, and
//! `check` for long-running work) and its metadata; locks, limits, the ledger, retries and
//! metrics live in the worker around it.

/// The value of a `Result<T, Step>`, or the step returned from the action at once (an action
/// step's `?`).
macro_rules! or_step {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(step) => return step,
        }
    };
}

mod ami_create;
mod ebs_snapshot;
mod ec2;
mod instance_power;
mod noop;
mod notify;
mod registry;
mod snapshot_copy;
mod snapshot_retention;
mod tag;

pub use ami_create::AmiCreate;
pub use ebs_snapshot::EbsSnapshot;
pub use instance_power::InstancePower;
pub use noop::Noop;
pub use notify::Notify;
pub use registry::ActionRegistry;
pub use snapshot_copy::SnapshotCopy;
pub use snapshot_retention::SnapshotRetention;
pub use tag::Tag;

use async_trait::async_trait;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::template::{Template, TemplateInput};
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

impl Step {
    /// The step with its next check `after` that long when it is pending: a start that
    /// checks at once waits the action's own delay before the next check.
    pub fn checked_after(self, after: Duration) -> Step {
        match self {
            Step::Pending { state, .. } => Step::Pending { check_after: after, state },
            other => other,
        }
    }
}

/// What an action is told about the job it runs.
#[derive(Clone, Copy)]
pub struct ActionContext<'a> {
    /// The job.
    pub job: &'a Job,
    /// Plan mode: record what would be done, change nothing.
    pub dry_run: bool,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The number of this completion check, from 1 (0 in `start`).
    pub check: u32,
    /// AWS clients in the job's account and region (none in plan mode and in tests of the
    /// worker on the embedded backend).
    pub aws: Option<&'a AwsAccounts>,
    /// Now, in Unix ms (`{date}`, `{datetime}`).
    pub now_ms: u64,
}

impl ActionContext<'_> {
    /// Renders a param's template for this job; an invalid template (caught by
    /// `opsfleet validate`) renders as its text.
    pub fn render(&self, text: &str) -> String {
        match Template::parse(text) {
            Ok(template) => template.render(TemplateInput::of(self.job, self.now_ms)),
            Err(_) => text.to_owned(),
        }
    }

    /// The AWS clients, or the failure of a step that has none.
    pub fn aws(&self) -> Result<&AwsAccounts, Step> {
        self.aws.ok_or_else(|| Step::Failed {
            retryable: false,
            error: "this worker has no AWS clients (plan mode or a test backend)".into(),
        })
    }

    /// An EC2 client in the job's account and region.
    pub async fn ec2(&self) -> Result<aws_sdk_ec2::Client, Step> {
        let r = &self.job.resource;
        self.aws()?.ec2(&r.account, &r.region).await.map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
    }
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

    /// The IAM policy statements a task of this action needs, scoped to resource ARNs and
    /// tag conditions where EC2 allows (`opsfleet iam-policy`); by default its IAM actions on
    /// every resource.
    fn iam_statements(&self, _params: &Value) -> Vec<Value> {
        vec![serde_json::json!({ "Effect": "Allow", "Action": self.iam_actions(), "Resource": "*" })]
    }

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

/// IAM statement helpers: EC2 resource ARNs and the conditions actions scope themselves by.
pub mod iam {
    use serde_json::{json, Value};

    /// Every instance, volume, snapshot or image.
    pub const INSTANCES: &str = "arn:aws:ec2:*:*:instance/*";
    /// Every volume.
    pub const VOLUMES: &str = "arn:aws:ec2:*:*:volume/*";
    /// Every snapshot (snapshot ARNs name no account).
    pub const SNAPSHOTS: &str = "arn:aws:ec2:*::snapshot/*";
    /// Every image (image ARNs name no account).
    pub const IMAGES: &str = "arn:aws:ec2:*::image/*";

    /// A statement.
    pub fn allow(actions: &[&str], resources: &[&str]) -> Value {
        json!({ "Effect": "Allow", "Action": actions, "Resource": resources })
    }

    /// A statement with a condition.
    pub fn allow_if(actions: &[&str], resources: &[&str], condition: Value) -> Value {
        json!({ "Effect": "Allow", "Action": actions, "Resource": resources, "Condition": condition })
    }

    /// Only on resources opsfleet made (they carry `opsfleet:job`).
    pub fn made_by_opsfleet() -> Value {
        json!({ "StringLike": { "aws:ResourceTag/opsfleet:job": "*" } })
    }

    /// Only when the request tags what it makes with `opsfleet:job`.
    pub fn tagged_by_opsfleet() -> Value {
        json!({ "StringLike": { "aws:RequestTag/opsfleet:job": "*" } })
    }

    /// Tags only as part of creating with one of these actions.
    pub fn on_create(actions: &[&str]) -> Value {
        json!({ "StringEquals": { "ec2:CreateAction": actions } })
    }

    /// Not on resources that opted out (`opsfleet:skip = true`).
    pub fn not_opted_out() -> Value {
        json!({ "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" } })
    }
}

/// How long until the first completion check of long-running EC2 work, by default.
pub fn default_check_after_secs() -> u64 {
    15
}
