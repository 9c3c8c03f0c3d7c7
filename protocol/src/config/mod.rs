//! The fleet configuration (TOML), the contract operators write: `[fleet]`, `[limits.NAME]`,
//! `[[tasks]]`, and the optional `[router]`, `[worker]` and `[metrics]` tables.
//!
//! Loading is two steps: serde reads the structure (unknown keys are errors), then
//! [`validate`](load) compiles patterns and templates and checks every task, collecting every
//! problem with its place in the file.

pub mod fixture;
mod load;
mod raw;
mod schedule;

pub use load::{ActionCatalog, ActionInfo, ConfigError, LimitDefault, Problem, RUNBOOK};
pub use raw::{
    ApproveSettings, BucketSettings, DiscoveryQuery, Ec2BudgetSettings, FleetSettings, LimitSettings, MaxErrors,
    MetricsSettings, RouterSettings, Targets, WorkerSettings,
};
pub use schedule::{schedules, unscheduled_patterns, Schedule, SCHEDULE_GROUP};

use crate::pattern::Pattern;
use crate::template::Template;
use serde_json::Value;
use std::collections::BTreeMap;

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[fleet]`.
    pub fleet: FleetSettings,
    /// `[limits.NAME]`, compiled.
    pub limits: BTreeMap<String, Limit>,
    /// `[[tasks]]`, compiled, in file order.
    pub tasks: Vec<Task>,
    /// `[router]`.
    pub router: RouterSettings,
    /// `[worker]`.
    pub worker: WorkerSettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[ec2_budget]`.
    pub ec2_budget: Ec2BudgetSettings,
}

/// A fleet-wide concurrency limit.
#[derive(Debug, Clone)]
pub struct Limit {
    /// The limit's name (`[limits.NAME]`).
    pub name: String,
    /// The most concurrent holders per pool.
    pub max: u32,
    /// The pool template: holders are counted per rendered pool.
    pub pool: Template,
}

/// One compiled task.
#[derive(Debug, Clone)]
pub struct Task {
    /// The task's unique name.
    pub name: String,
    /// The event pattern.
    pub pattern: Pattern,
    /// The pattern's JSON as EventBridge takes it: the task's own, exactly as written, or for
    /// a scheduled task the one that matches its schedule rule's events.
    pub pattern_json: Value,
    /// The schedule of a scheduled task: its expression, time zone and rendered name.
    pub schedule: Option<Schedule>,
    /// What the task acts on.
    pub targets: Targets,
    /// The action's name.
    pub action: String,
    /// The action's params (a JSON object).
    pub params: Value,
    /// The most jobs of one run running at once.
    pub max_concurrency: Option<u32>,
    /// The failures of one run after which its remaining jobs are cancelled.
    pub max_errors: Option<u32>,
    /// The same as a percentage of the run's jobs (`max_errors = "10%"`): the router writes
    /// each job's run size, and the failures allowed are that share of it, rounded down.
    pub max_errors_percent: Option<u32>,
    /// Whether a run's concurrency ramps up (1, 2, then doubling up to `max_concurrency`) as
    /// its jobs succeed: on by default for runbooks.
    pub ramp_up: bool,
    /// The most resources one run may act on (`max_targets`).
    pub max_targets: Option<u32>,
    /// The largest share of the discovered population, in percent, one run may act on
    /// (`max_targets_percent`).
    pub max_targets_percent: Option<u32>,
    /// Whether a run over `max_targets` or `max_targets_percent` goes ahead anyway (logged and
    /// counted) instead of being refused.
    pub allow_over_max_targets: bool,
    /// CloudWatch alarms that halt the task while in ALARM: its own and the fleet's.
    pub halt_on_alarms: Vec<String>,
    /// Whether each run waits for an operator's approval (`approve`).
    pub approve: Option<ApproveSettings>,
    /// The most jobs of one run running at once in one (account, region).
    pub max_concurrency_per_location: Option<u32>,
    /// The failures of one run in one (account, region) after which its remaining jobs there
    /// are cancelled (the run goes on elsewhere).
    pub max_errors_per_location: Option<u32>,
    /// The lock key template.
    pub lock: Template,
    /// The limit this task's jobs take a slot of, if any (the task's own or its action's).
    pub limit: Option<String>,
    /// Real failures a job may have before it is dead-lettered.
    pub retries: u32,
    /// The longest one action step (a start or a check) may take; past it the step counts as
    /// a retryable failure.
    pub timeout: std::time::Duration,
    /// How long after its event a job may start at the earliest (`delay_secs`), for tags and
    /// volumes that appear a little after a launch.
    pub delay: std::time::Duration,
    /// How long after its start long-running work may stay pending (`deadline_mins`, 60 by
    /// default): a check past it ends the job FAILED with the reason and releases its lock and
    /// slot, whatever the work's state.
    pub deadline: std::time::Duration,
    /// The event fields the action's param templates read (`{event.FIELD}`), copied into each
    /// job by the router.
    pub event_fields: Vec<String>,
    /// The resource types the action acts on (empty: any): of the resources an event names,
    /// only these get jobs.
    pub acts_on: Vec<crate::ResourceType>,
    /// The line of the task in the file.
    pub line: usize,
}

impl Task {
    /// The failures a run of `run_size` jobs may have before its remaining jobs are cancelled:
    /// `max_errors` as a count, or its percentage of the run's jobs (rounded down; unknown
    /// without the run's size).
    pub fn max_errors_for(&self, run_size: Option<u32>) -> Option<u32> {
        match (self.max_errors, self.max_errors_percent, run_size) {
            (Some(n), _, _) => Some(n),
            (None, Some(percent), Some(size)) => Some((u64::from(size) * u64::from(percent) / 100) as u32),
            _ => None,
        }
    }

    /// Whether a job of the task checks its run's cancellation before it starts.
    pub fn cancellable(&self) -> bool {
        self.max_errors.is_some()
            || self.max_errors_percent.is_some()
            || self.approve.is_some()
            || self.max_errors_per_location.is_some()
    }
}

impl Config {
    /// Parses and validates a configuration, with an action catalog to check actions and
    /// params against (`None` checks only what the protocol knows).
    pub fn parse(text: &str, catalog: Option<&dyn ActionCatalog>) -> Result<Config, ConfigError> {
        load::parse(text, catalog)
    }

    /// The task of a name.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }
}
