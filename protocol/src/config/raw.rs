//! The configuration as written: serde types with `deny_unknown_fields`.

use crate::resource::ResourceType;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::num::NonZeroU32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub fleet: FleetSettings,
    #[serde(default)]
    pub limits: BTreeMap<String, toml::Spanned<LimitSettings>>,
    #[serde(default)]
    pub tasks: Vec<toml::Spanned<RawTask>>,
    #[serde(default)]
    pub router: RouterSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub ec2_budget: Ec2BudgetSettings,
}

/// `[fleet]`: the fleet's name, partitions and trust.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// Prefix of the fleet's queues and its table name.
    pub name: String,
    /// Number of job queue partitions.
    #[serde(default = "default_partitions")]
    pub partitions: NonZeroU32,
    /// Accounts whose events are accepted; empty accepts every account.
    #[serde(default)]
    pub allowed_accounts: Vec<String>,
    /// Role to assume in member accounts; `{account}` is replaced by the account id, `{fleet}`
    /// by the fleet's name.
    #[serde(default)]
    pub member_role: Option<String>,
    /// External id passed when assuming `member_role`.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The AWS partition the fleet runs in (`aws`, `aws-cn`, `aws-us-gov`): the ARNs of its
    /// IAM policies are written in it.
    #[serde(default = "default_partition")]
    pub partition: String,
    /// The AWS Organization (`o-…`) whose accounts may send events to the fleet's event bus;
    /// without it, the bus admits `allowed_accounts`.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// The most jobs one event may expand to; more rejects the event.
    #[serde(default = "default_max_jobs_per_event")]
    pub max_jobs_per_event: NonZeroU32,
    /// SNS topics of CloudWatch alarms whose notifications feed the events queue (ARNs): the
    /// rendered stack subscribes the queue to them and its policy admits them.
    #[serde(default)]
    pub alarm_topics: Vec<String>,
    /// CloudWatch alarms that halt every task of the fleet while they are in ALARM (their
    /// state-change events reach the events queue).
    #[serde(default)]
    pub halt_on_alarms: Vec<String>,
}

fn default_partition() -> String {
    "aws".to_owned()
}

fn default_partitions() -> NonZeroU32 {
    NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)
}

fn default_max_jobs_per_event() -> NonZeroU32 {
    NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN)
}

/// `[limits.NAME]`: a fleet-wide concurrency limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// The most concurrent holders per pool.
    pub max: NonZeroU32,
    /// The pool template (default: one pool for the whole fleet).
    #[serde(default = "default_pool")]
    pub pool: String,
}

fn default_pool() -> String {
    "global".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub name: String,
    #[serde(default)]
    pub pattern: Option<Value>,
    #[serde(default)]
    pub schedule: Option<super::schedule::RawSchedule>,
    pub targets: Targets,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub params: Option<Value>,
    #[serde(default)]
    pub steps: Option<Vec<Value>>,
    #[serde(default)]
    pub halt_on_alarms: Vec<String>,
    #[serde(default)]
    pub max_targets: Option<NonZeroU32>,
    #[serde(default)]
    pub max_targets_percent: Option<NonZeroU32>,
    #[serde(default)]
    pub allow_over_max_targets: bool,
    #[serde(default)]
    pub ramp_up: Option<bool>,
    #[serde(default)]
    pub approve: Option<ApproveSettings>,
    #[serde(default)]
    pub max_concurrency_per_location: Option<NonZeroU32>,
    #[serde(default)]
    pub max_errors_per_location: Option<u32>,
    #[serde(default)]
    pub max_concurrency: Option<NonZeroU32>,
    #[serde(default)]
    pub max_errors: Option<MaxErrors>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: std::num::NonZeroU32,
    #[serde(default)]
    pub delay_secs: u32,
    #[serde(default = "default_deadline")]
    pub deadline_mins: std::num::NonZeroU32,
}

fn default_deadline() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(60).unwrap_or(std::num::NonZeroU32::MIN)
}

fn default_timeout() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(300).unwrap_or(std::num::NonZeroU32::MIN)
}

fn default_retries() -> u32 {
    3
}

/// `max_errors`: a number of failed jobs, or a percentage of the run's jobs (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxErrors {
    /// Failures.
    Count(u32),
    /// A percentage of the run's jobs, 0 to 100.
    Percent(u32),
}

impl<'de> Deserialize<'de> for MaxErrors {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(MaxErrors::Count)
                .ok_or_else(|| D::Error::custom(format!("max_errors {n} is not a count of jobs"))),
            Value::String(s) => s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p <= 100)
                .map(MaxErrors::Percent)
                .ok_or_else(|| {
                    D::Error::custom(format!("max_errors \"{s}\" is not a percentage from \"0%\" to \"100%\""))
                }),
            _ => Err(D::Error::custom("max_errors must be a number of jobs or a percentage such as \"10%\"")),
        }
    }
}

/// `approve = { topic_arn, timeout_mins }`: a run of the task waits for an operator's approval.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveSettings {
    /// The SNS topic the notice goes to: what the run will do, to which resources, and how to
    /// approve or deny it.
    pub topic_arn: String,
    /// How long the run waits for a decision, in minutes; past it, its jobs are cancelled.
    #[serde(default = "default_approval_timeout")]
    pub timeout_mins: NonZeroU32,
}

fn default_approval_timeout() -> NonZeroU32 {
    NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN)
}

/// What a task acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// `"event"`: the resources the event names.
    Event,
    /// A discovery query run against EC2.
    Discover(DiscoveryQuery),
}

/// `targets = { type, tags, regions, accounts }`: resources found by EC2 `Describe*` calls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryQuery {
    /// The resource type to find.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// Tags the resources must have (key = value; `*` is any value).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// States the resources must be in (instances: `running`, `stopped`, …; volumes:
    /// `in-use`, `available`; snapshots: `completed`; images: `available`); empty = any. EC2
    /// types only: DynamoDB tables and RDS instances and clusters are found by tags alone.
    #[serde(default)]
    pub state: Vec<String>,
    /// Regions to search (default: the event's region).
    #[serde(default)]
    pub regions: Vec<String>,
    /// Accounts to search (default: the event's account).
    #[serde(default)]
    pub accounts: Vec<String>,
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::String(s) if s == "event" => Ok(Targets::Event),
            Value::String(s) => Err(D::Error::custom(format!(
                "targets must be \"event\" or a discovery table {{ type, tags, state, regions, accounts }}, not \"{s}\""
            ))),
            table @ Value::Object(_) => DiscoveryQuery::deserialize(table)
                .map(Targets::Discover)
                .map_err(|e| D::Error::custom(format!("targets: {e}"))),
            _ => Err(D::Error::custom("targets must be \"event\" or a discovery table")),
        }
    }
}

/// `[router]`: ingest settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// Concurrent long-poll loops on the events queue.
    #[serde(default = "default_pollers")]
    pub pollers: NonZeroU32,
    /// Visibility timeout of a received event, in seconds.
    #[serde(default = "default_event_visibility")]
    pub visibility_secs: u32,
}

fn default_pollers() -> NonZeroU32 {
    NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)
}

fn default_event_visibility() -> u32 {
    60
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings { pollers: default_pollers(), visibility_secs: default_event_visibility() }
    }
}

/// `[worker]`: execution settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// The most jobs running at once in one worker process.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: NonZeroU32,
    /// How long running actions may finish after SIGTERM/SIGINT, in seconds.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u32,
    /// Lock and slot lease length, in seconds; heartbeats renew it at a third.
    #[serde(default = "default_lease")]
    pub lease_secs: u32,
    /// Visibility timeout of a received job, in seconds; heartbeats extend it.
    #[serde(default = "default_job_visibility")]
    pub visibility_secs: u32,
    /// Receives after which SQS dead-letters a job that crashes or hangs workers. Waiting
    /// for a lock or a slot spends no receives.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// The most job messages one process holds while they wait for a lock or a slot (on top
    /// of `max_in_flight`); a waiting job holds no run permit and no lease.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: u32,
    /// How long ledger items are kept, in days (DynamoDB TTL).
    #[serde(default = "default_retention_days")]
    pub ledger_retention_days: u32,
}

fn default_max_in_flight() -> NonZeroU32 {
    NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN)
}

fn default_shutdown_grace() -> u32 {
    25
}

fn default_lease() -> u32 {
    60
}

fn default_job_visibility() -> u32 {
    60
}

fn default_max_receive_count() -> u32 {
    100
}

fn default_max_waiting() -> u32 {
    256
}

fn default_retention_days() -> u32 {
    30
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_in_flight: default_max_in_flight(),
            shutdown_grace_secs: default_shutdown_grace(),
            lease_secs: default_lease(),
            visibility_secs: default_job_visibility(),
            max_receive_count: default_max_receive_count(),
            max_waiting: default_max_waiting(),
            ledger_retention_days: default_retention_days(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address to serve `/metrics` on, such as `0.0.0.0:9090`; none serves nothing.
    #[serde(default)]
    pub address: Option<String>,
}

/// One token bucket: requests per second, and how many may go at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    /// Tokens added per second.
    pub rate: u32,
    /// The most tokens held (a burst).
    pub burst: u32,
}

/// `[ec2_budget]`: the fleet's EC2 request budget per (account, region), one bucket per API
/// class, shaped like EC2's request-token buckets and shared by every process of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2BudgetSettings {
    /// `Describe*` and other reads that filter or page (EC2: 100 burst, 20 per s).
    #[serde(default = "describe_bucket")]
    pub describe: BucketSettings,
    /// Reads that neither filter nor page: by id, or everything (EC2: 50 burst, 10 per s).
    #[serde(default = "describe_unfiltered_bucket")]
    pub describe_unfiltered: BucketSettings,
    /// Mutating calls without a bucket of their own (EC2: 50 burst, 5 per s).
    #[serde(default = "mutating_bucket")]
    pub mutating: BucketSettings,
    /// `RunInstances`, `StartInstances` (EC2: 5 burst, 2 per s).
    #[serde(default = "run_start_bucket")]
    pub run_start: BucketSettings,
    /// `CreateTags`, `DeleteTags` (EC2: 100 burst, 10 per s).
    #[serde(default = "tags_bucket")]
    pub tags: BucketSettings,
    /// `CreateSnapshot`, `CreateSnapshots`, `DeleteSnapshot`, `CopySnapshot` (EC2: 50 burst, 5
    /// per s).
    #[serde(default = "snapshots_bucket")]
    pub snapshots: BucketSettings,
    /// `CopyImage` (EC2: 100 burst, 1 per s).
    #[serde(default = "copy_image_bucket")]
    pub copy_image: BucketSettings,
    /// DynamoDB `CreateBackup`, `DeleteBackup` (DynamoDB: 10 per s each).
    #[serde(default = "dynamodb_backups_bucket")]
    pub dynamodb_backups: BucketSettings,
    /// DynamoDB's other control-plane calls on tables: `UpdateTable`, `DescribeTable`,
    /// `ListBackups` (DynamoDB: 5 per s), `DescribeBackup`, `ListTagsOfResource`.
    #[serde(default = "dynamodb_control_bucket")]
    pub dynamodb_control: BucketSettings,
    /// The Resource Groups Tagging API's `GetResources` (discovery of non-EC2 types).
    #[serde(default = "tagging_bucket")]
    pub tagging: BucketSettings,
    /// SSM's Run Command calls: `SendCommand`, `ListCommands`, `GetCommandInvocation`.
    #[serde(default = "ssm_bucket")]
    pub ssm: BucketSettings,
    /// Auto Scaling calls of discovery and the actions.
    #[serde(default = "autoscaling_bucket")]
    pub autoscaling: BucketSettings,
    /// RDS `Describe*` calls of the actions.
    #[serde(default = "rds_describe_bucket")]
    pub rds_describe: BucketSettings,
    /// RDS's other calls: `CreateDBSnapshot`, `CopyDBSnapshot`, `DeleteDBSnapshot`, …
    #[serde(default = "rds_mutating_bucket")]
    pub rds_mutating: BucketSettings,
}

fn ssm_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 20 }
}

fn autoscaling_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 20 }
}

fn rds_describe_bucket() -> BucketSettings {
    BucketSettings { rate: 10, burst: 40 }
}

fn rds_mutating_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 20 }
}

fn dynamodb_backups_bucket() -> BucketSettings {
    BucketSettings { rate: 10, burst: 10 }
}

fn dynamodb_control_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 10 }
}

fn tagging_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 10 }
}

fn describe_bucket() -> BucketSettings {
    BucketSettings { rate: 20, burst: 100 }
}

fn describe_unfiltered_bucket() -> BucketSettings {
    BucketSettings { rate: 10, burst: 50 }
}

fn mutating_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 50 }
}

fn run_start_bucket() -> BucketSettings {
    BucketSettings { rate: 2, burst: 5 }
}

fn tags_bucket() -> BucketSettings {
    BucketSettings { rate: 10, burst: 100 }
}

fn snapshots_bucket() -> BucketSettings {
    BucketSettings { rate: 5, burst: 50 }
}

fn copy_image_bucket() -> BucketSettings {
    BucketSettings { rate: 1, burst: 100 }
}

impl Default for Ec2BudgetSettings {
    fn default() -> Self {
        Ec2BudgetSettings {
            describe: describe_bucket(),
            describe_unfiltered: describe_unfiltered_bucket(),
            mutating: mutating_bucket(),
            run_start: run_start_bucket(),
            tags: tags_bucket(),
            snapshots: snapshots_bucket(),
            copy_image: copy_image_bucket(),
            dynamodb_backups: dynamodb_backups_bucket(),
            dynamodb_control: dynamodb_control_bucket(),
            tagging: tagging_bucket(),
            ssm: ssm_bucket(),
            autoscaling: autoscaling_bucket(),
            rds_describe: rds_describe_bucket(),
            rds_mutating: rds_mutating_bucket(),
        }
    }
}
