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
mod any;
mod dynamodb;
mod dynamodb_backup;
mod dynamodb_capacity;
mod ebs_snapshot;
mod ec2;
mod image_copy;
mod image_lifecycle;
mod instance_power;
mod instance_resize;
mod noop;
mod notify;
mod params;
mod presign;
mod rds;
mod rds_snapshot;
mod registry;
mod run_command;
mod runbook;
mod schedule_power;
mod snapshot_copy;
mod snapshot_retention;
mod ssm;
mod tag;

pub use ami_create::AmiCreate;
pub use any::{erased, AnyAction};
pub use dynamodb_backup::DynamodbBackup;
pub use dynamodb_capacity::DynamodbCapacity;
pub use ebs_snapshot::EbsSnapshot;
pub use image_copy::ImageCopy;
pub use image_lifecycle::ImageLifecycle;
pub use instance_power::InstancePower;
pub use instance_resize::InstanceResize;
pub use noop::Noop;
pub use notify::Notify;
pub use params::ParamHelp;
pub use rds_snapshot::RdsSnapshot;
pub use registry::ActionRegistry;
pub use run_command::RunCommand;
pub use runbook::{approval_params, Runbook, RunbookParams, RunbookStep, APPROVE};
pub use schedule_power::SchedulePower;
pub use snapshot_copy::SnapshotCopy;
pub use snapshot_retention::SnapshotRetention;
pub use tag::Tag;

use async_trait::async_trait;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::template::{Template, TemplateInput};
use opsfleet_protocol::{Job, ResourceType};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    /// A step whose work is under way: check again after `check_after` with `state`.
    pub fn pending(check_after: Duration, state: &impl Serialize) -> Step {
        match serde_json::to_value(state) {
            Ok(state) => Step::Pending { check_after, state },
            Err(e) => Step::Failed { retryable: false, error: format!("the check state does not serialize: {e}") },
        }
    }

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
    pub aws: Option<&'a dyn AwsClients>,
    /// Now, in Unix ms (`{date}`, `{datetime}`).
    pub now_ms: u64,
}

impl ActionContext<'_> {
    /// Renders a param's template for this job; an invalid template (caught by
    /// `opsfleet validate`) renders as its text.
    ///
    /// `{date}` and `{datetime}` are the job's event time (when it was received), not the
    /// attempt's: every attempt of a job renders the same names.
    pub fn render(&self, text: &str) -> String {
        let at = if self.job.received_ms > 0 { self.job.received_ms } else { self.now_ms };
        match Template::parse(text) {
            Ok(template) => template.render(TemplateInput::of(self.job, at)),
            Err(_) => text.to_owned(),
        }
    }

    /// The AWS clients, or the failure of a step that has none.
    pub fn aws(&self) -> Result<&dyn AwsClients, Step> {
        self.aws.ok_or_else(|| Step::Failed {
            retryable: false,
            error: "this worker has no AWS clients (plan mode or a test backend)".into(),
        })
    }

    /// An EC2 client in the job's account and region.
    pub async fn ec2(&self) -> Result<aws_sdk_ec2::Client, Step> {
        self.ec2_in(&self.job.resource.region).await
    }

    /// An EC2 client in the job's account and another region (a copy's destination).
    pub async fn ec2_in(&self, region: &str) -> Result<aws_sdk_ec2::Client, Step> {
        let account = &self.job.resource.account;
        self.aws()?.ec2(account, region).await.map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
    }

    /// A DynamoDB client in the job's account and region.
    pub async fn dynamodb(&self) -> Result<aws_sdk_dynamodb::Client, Step> {
        let resource = &self.job.resource;
        self.aws()?
            .dynamodb(&resource.account, &resource.region)
            .await
            .map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
    }
}

/// One kind of action, typed: it declares its params and the state its checks read as serde
/// structs, and the worker parses them (once per step) before calling it.
///
/// The params struct is the action's one description of its params: each field's doc comment
/// and serde default are the help `opsfleet actions` and the docs show (through its JSON
/// schema). The IAM actions it needs are those its [`Action::statements`] name.
#[async_trait]
pub trait Action: Send + Sync + 'static {
    /// The name tasks use in `action = "…"`.
    const NAME: &'static str;

    /// The params a task gives it (`deny_unknown_fields`, a doc comment on every field).
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + Sync;

    /// What a pending start leaves for its checks (`Step::pending`).
    type State: DeserializeOwned + Serialize + Send + Sync;

    /// The resource types it acts on.
    fn targets(&self) -> &'static [ResourceType];

    /// The resource types it acts on with these params (a runbook: those all its steps act on).
    fn targets_of(&self, params: &Self::Params) -> Vec<ResourceType> {
        let _ = params;
        self.targets().to_vec()
    }

    /// The fleet-wide limit it takes a slot of, with defaults.
    fn limit(&self) -> Option<LimitDefault> {
        None
    }

    /// Whether it changes anything in AWS; in plan mode (`--dry-run`, `demo`) an action that
    /// does is not started, and the ledger records what it would have done instead.
    fn mutates(&self) -> bool {
        true
    }

    /// Params that, together, use all it can do: the first is the docs' example, and
    /// `opsfleet actions` lists the IAM actions their statements name.
    fn examples(&self) -> Vec<Self::Params>;

    /// What the action would do to the job's resource, for plan mode.
    fn describe(&self, ctx: ActionContext<'_>, params: &Self::Params) -> String {
        let _ = params;
        format!("would run {} on {} with params {}", Self::NAME, ctx.job.resource.key(), ctx.job.params)
    }

    /// The IAM policy statements a task with these params needs, scoped to resource ARNs and
    /// tag conditions where the service allows (`opsfleet iam-policy`; see [`iam`]).
    fn statements(&self, params: &Self::Params) -> Vec<Value>;

    /// The params that are templates (`{task}`, `{date}`, `{event.FIELD}`, …), by name with
    /// their text, so that `opsfleet validate` checks them and the router copies the event
    /// fields they read into each job.
    fn templates(&self, params: &Self::Params) -> Vec<(String, String)> {
        let _ = params;
        Vec::new()
    }

    /// Checks what serde cannot (a region's spelling, a range); the error is a one-line reason.
    fn validate(&self, params: &Self::Params) -> Result<(), String> {
        let _ = params;
        Ok(())
    }

    /// Starts the effect on the job's resource. Must be idempotent by job id.
    async fn start(&self, ctx: ActionContext<'_>, params: &Self::Params) -> Step;

    /// Asks how pending work started by `start` is going.
    async fn check(&self, ctx: ActionContext<'_>, params: &Self::Params, state: Self::State) -> Step;
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

    /// `ec2:CreateTags` of one key only (an action's own record), on instances that have not
    /// opted out.
    pub fn tag_instances_with(key: &str) -> Value {
        allow_if(
            &["ec2:CreateTags"],
            &[INSTANCES],
            json!({
                "ForAllValues:StringEquals": { "aws:TagKeys": [key] },
                "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" },
            }),
        )
    }

    /// The grant EC2 takes to attach volumes encrypted with a customer-managed key when it
    /// starts an instance, through EC2 only.
    pub fn kms_grant_for_ec2() -> Value {
        json!({
            "Effect": "Allow",
            "Action": ["kms:CreateGrant"],
            "Resource": "arn:aws:kms:*:*:key/*",
            "Condition": { "Bool": { "kms:GrantIsForAWSResource": "true" },
                           "StringLike": { "kms:ViaService": "ec2.*.amazonaws.com" } },
        })
    }
}

/// How long until the first completion check of long-running EC2 work, by default.
pub fn default_check_after_secs() -> u64 {
    15
}

/// The longest `check_after_secs` an action takes: a day.
pub const MAX_CHECK_AFTER_SECS: u64 = 86_400;

/// Refuses a `check_after_secs` past [`MAX_CHECK_AFTER_SECS`].
pub fn check_after_in_range(secs: u64) -> Result<(), String> {
    if secs > MAX_CHECK_AFTER_SECS {
        return Err(format!("params: check_after_secs {secs} is over {MAX_CHECK_AFTER_SECS} (a day)"));
    }
    Ok(())
}
