//! Loading: structure first, then every semantic problem with its place.

use super::raw::{RawConfig, RawTask, Targets};
use super::schedule::{check_shared, Schedule};
use super::{Config, Limit, Task};
use crate::pattern::Pattern;
use crate::resource::{is_account_id, looks_like_region, ResourceType};
use crate::template::Template;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What an action tells config validation about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionInfo {
    /// The resource types the action acts on.
    pub targets: Vec<ResourceType>,
    /// The fleet-wide limit the action takes a slot of, with its defaults.
    pub limit: Option<LimitDefault>,
    /// The params that are templates, by name, with their text (checked and read for
    /// `{event.FIELD}` placeholders).
    pub templates: Vec<(String, String)>,
}

/// A limit an action uses, with what applies when the config has no `[limits.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDefault {
    /// The limit's name.
    pub name: String,
    /// The default maximum.
    pub max: u32,
    /// The default pool template.
    pub pool: String,
}

/// The actions a build knows, for checking tasks' `action` and `params`.
pub trait ActionCatalog {
    /// Checks an action name and its params; the error is a one-line reason.
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String>;
}

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// Where in the config, such as `tasks[1] "nightly".pattern`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

pub(super) fn parse(text: &str, catalog: Option<&dyn ActionCatalog>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        problems: vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            path: String::new(),
            message: e.message().trim().to_owned(),
        }],
    })?;
    let mut problems = Vec::new();
    let mut fleet = raw.fleet;
    // `{fleet}` in the member role names it per fleet, so two fleets' member stacks in one
    // account do not fight over one role.
    fleet.member_role = fleet.member_role.map(|role| role.replace("{fleet}", &fleet.name));
    let mut problem =
        |line: Option<usize>, path: String, message: String| problems.push(Problem { line, path, message });

    if fleet.name.is_empty()
        || fleet.name.len() > 40
        || !fleet.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problem(
            None,
            "fleet.name".into(),
            format!("`{}` must be 1-40 letters, digits, `-` or `_` (it prefixes queue names)", fleet.name),
        );
    }
    if fleet.partitions.get() > 100 {
        problem(None, "fleet.partitions".into(), format!("{} partitions is over the 100 supported", fleet.partitions));
    }
    for account in &fleet.allowed_accounts {
        if !is_account_id(account) {
            problem(None, "fleet.allowed_accounts".into(), format!("`{account}` is not a 12-digit account id"));
        }
    }
    if let Some(role) = &fleet.member_role {
        if !role.contains("{account}") {
            problem(None, "fleet.member_role".into(), format!("`{role}` must contain `{{account}}`"));
        }
        if fleet.external_id.as_deref().is_none_or(str::is_empty) {
            problem(
                None,
                "fleet.external_id".into(),
                "is required with `member_role`: the member accounts' roles trust the fleet only with it".into(),
            );
        }
    }
    if !PARTITIONS.contains(&fleet.partition.as_str()) {
        problem(
            None,
            "fleet.partition".into(),
            format!("`{}` is not an AWS partition ({})", fleet.partition, PARTITIONS.join(", ")),
        );
    }
    if let Some(organization) = &fleet.organization_id {
        let body = organization.strip_prefix("o-").unwrap_or_default();
        if !(10..=32).contains(&body.len()) || !body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            problem(
                None,
                "fleet.organization_id".into(),
                format!("`{organization}` is not an organization id (`o-` and 10 to 32 lowercase letters or digits)"),
            );
        }
        if fleet.member_role.is_none() {
            problem(
                None,
                "fleet.organization_id".into(),
                "is set but fleet.member_role is not: the fleet reaches the organization's accounts through it".into(),
            );
        }
    }
    if fleet.member_role.is_none() && fleet.allowed_accounts.len() > 1 {
        problem(
            None,
            "fleet.allowed_accounts".into(),
            format!(
                "names {} accounts but fleet.member_role is not set: the fleet acts in accounts other than its own \
                 only through a member role",
                fleet.allowed_accounts.len()
            ),
        );
    }
    for topic in &fleet.alarm_topics {
        if !is_topic_arn(topic) {
            problem(None, "fleet.alarm_topics".into(), format!("`{topic}` is not an SNS topic ARN"));
        }
    }

    let mut limits = BTreeMap::new();
    for (name, spanned) in &raw.limits {
        let line = Some(line_of(text, spanned.span().start));
        let settings = spanned.get_ref();
        match Template::parse(&settings.pool).and_then(|t| steady("a pool", t)) {
            Ok(pool) => {
                limits.insert(name.clone(), Limit { name: name.clone(), max: settings.max.get(), pool });
            }
            Err(e) => problem(line, format!("limits.{name}.pool"), e),
        }
    }

    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    let mut task_schedules: Vec<(String, Schedule)> = Vec::new();
    for (index, spanned) in raw.tasks.iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let task = spanned.get_ref();
        let place = format!("tasks[{index}] \"{}\"", task.name);
        let mut task_problem = |field: &str, message: String| {
            let path = if field.is_empty() { place.clone() } else { format!("{place}.{field}") };
            problem(Some(line), path, message);
        };
        if task.name.is_empty() || !task.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            task_problem("name", "a task name must be letters, digits, `-`, `_` or `.`".into());
        } else if !seen.insert(task.name.clone()) {
            task_problem("name", "another task has the same name".into());
        }
        let pattern_json = match (&task.pattern, &task.schedule) {
            (Some(Value::String(json)), None) => {
                serde_json::from_str(json).map_err(|e| task_problem("pattern", format!("not JSON: {e}"))).ok()
            }
            (Some(pattern), None) => Some(pattern.clone()),
            (None, Some(raw)) => {
                if task.targets == Targets::Event {
                    task_problem("targets", "a scheduled event names no resources: give a discovery table".into());
                }
                match Schedule::from_raw(&fleet.name, &task.name, raw) {
                    Ok(schedule) => {
                        let pattern = schedule.pattern();
                        task_schedules.push((task.name.clone(), schedule));
                        Some(pattern)
                    }
                    Err(e) => {
                        task_problem("schedule", e);
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                task_problem("schedule", "a task has a pattern or a schedule, not both".into());
                None
            }
            (None, None) => {
                task_problem("pattern", "a task needs a pattern or a schedule".into());
                None
            }
        };
        let pattern = pattern_json
            .as_ref()
            .map(|p| Pattern::from_value(p).map_err(|e| task_problem("pattern", e.to_string())))
            .and_then(Result::ok);
        let (action, params) = match (&task.action, &task.steps, &task.params) {
            (Some(action), None, params) => {
                (action.clone(), params.clone().unwrap_or_else(|| Value::Object(Default::default())))
            }
            (None, Some(steps), None) => (RUNBOOK.to_owned(), serde_json::json!({ "steps": steps })),
            (None, Some(_), Some(_)) => {
                task_problem("params", "a runbook's params are its steps' own: give them in each step".into());
                (RUNBOOK.to_owned(), Value::Null)
            }
            (Some(_), Some(_), _) => {
                task_problem("steps", "a task has an action or steps, not both".into());
                (String::new(), Value::Null)
            }
            (None, None, _) => {
                task_problem("action", "a task needs an action or steps".into());
                (String::new(), Value::Null)
            }
        };
        if !params.is_object() {
            task_problem("params", "params must be a table".into());
        }
        let info = match catalog {
            Some(catalog) if !action.is_empty() => {
                catalog.check(&action, &params).map_err(|e| task_problem("action", e)).ok()
            }
            _ => None,
        };
        let timeout_secs = u64::from(task.timeout_secs.get()).max(longest_step_timeout(&params));
        if let Some(percent) = task.max_targets_percent {
            if percent.get() > 100 {
                task_problem("max_targets_percent", format!("{percent} is over 100"));
            }
            if task.targets == Targets::Event {
                task_problem(
                    "max_targets_percent",
                    "is a share of a discovery's population: the task's targets must be a discovery table".into(),
                );
            }
        }
        if let Some(approve) = &task.approve {
            if !is_topic_arn(&approve.topic_arn) {
                task_problem("approve.topic_arn", format!("`{}` is not an SNS topic ARN", approve.topic_arn));
            }
            if approve.timeout_mins.get() > 7 * 24 * 60 {
                task_problem("approve.timeout_mins", format!("{} min is over 7 days", approve.timeout_mins));
            }
        }
        for alarm in &task.halt_on_alarms {
            if alarm.is_empty() || alarm.len() > 255 {
                task_problem("halt_on_alarms", format!("`{alarm}` is not an alarm name (1 to 255 characters)"));
            }
        }
        if let (Some(info), Targets::Discover(query)) = (&info, &task.targets) {
            if !info.targets.contains(&query.kind) {
                task_problem("targets", format!("action `{action}` does not act on {}", query.kind));
            }
        }
        if let Targets::Discover(query) = &task.targets {
            if !query.kind.is_ec2() && !query.state.is_empty() {
                task_problem(
                    "targets.state",
                    format!("{} is found by its tags only (no states): drop `state`", query.kind),
                );
            }
            if !query.kind.is_ec2() && query.tags.is_empty() {
                task_problem(
                    "targets.tags",
                    format!("{} is found by its tags: give at least one (`*` for any value of a key)", query.kind),
                );
            }
            for region in &query.regions {
                if !looks_like_region(region) {
                    task_problem("targets.regions", format!("`{region}` is not a region name"));
                }
            }
            for account in &query.accounts {
                if !is_account_id(account) {
                    task_problem("targets.accounts", format!("`{account}` is not a 12-digit account id"));
                }
            }
        }
        let lock = Template::parse(task.lock.as_deref().unwrap_or("{resource}"))
            .and_then(|t| steady("a lock", t))
            .map_err(|e| task_problem("lock", e))
            .ok();
        let limit =
            resolve_limit(task, info.as_ref(), &mut limits).map_err(|e| task_problem("limit", e)).ok().flatten();
        if let Some(limit) = limit.as_ref().and_then(|name| limits.get(name)) {
            for param in limit.pool.params() {
                if params.get(param).is_none() {
                    task_problem(
                        "params",
                        format!("limit `{}` pools by `params.{param}`, which this task does not set", limit.name),
                    );
                }
            }
        }
        let mut event_fields = BTreeSet::new();
        for (param, text) in info.as_ref().map(|i| i.templates.as_slice()).unwrap_or_default() {
            match Template::parse(text) {
                Ok(template) => event_fields.extend(template.event_fields().map(str::to_owned)),
                Err(e) => task_problem(&format!("params.{param}"), e),
            }
        }
        if let Targets::Discover(query) = &task.targets {
            if fleet.member_role.is_none() && query.accounts.len() > 1 {
                task_problem(
                    "targets.accounts",
                    format!(
                        "{} accounts but fleet.member_role is not set: discovery reaches accounts other than the \
                         fleet's own only through a member role",
                        query.accounts.len()
                    ),
                );
            }
        }
        if task.delay_secs > 12 * 3600 {
            task_problem("delay_secs", format!("{} s is over the 12 hours a message can wait hidden", task.delay_secs));
        }
        if task.deadline_mins.get() > 7 * 24 * 60 {
            task_problem(
                "deadline_mins",
                format!("{} min is over the 7 days a job may stay pending", task.deadline_mins),
            );
        }
        if let (Some(pattern), Some(pattern_json), Some(lock)) = (pattern, pattern_json, lock) {
            tasks.push(Task {
                name: task.name.clone(),
                pattern,
                pattern_json,
                schedule: task_schedules.iter().find(|(t, _)| *t == task.name).map(|(_, s)| s.clone()),
                targets: task.targets.clone(),
                ramp_up: task.ramp_up.unwrap_or(action == RUNBOOK),
                action,
                params,
                max_concurrency: task.max_concurrency.map(|n| n.get()),
                max_errors: match task.max_errors {
                    Some(super::raw::MaxErrors::Count(n)) => Some(n),
                    _ => None,
                },
                max_errors_percent: match task.max_errors {
                    Some(super::raw::MaxErrors::Percent(p)) => Some(p),
                    _ => None,
                },
                max_targets: task.max_targets.map(|n| n.get()),
                max_targets_percent: task.max_targets_percent.map(|n| n.get()),
                allow_over_max_targets: task.allow_over_max_targets,
                approve: task.approve.clone(),
                max_concurrency_per_location: task.max_concurrency_per_location.map(|n| n.get()),
                max_errors_per_location: task.max_errors_per_location,
                halt_on_alarms: fleet.halt_on_alarms.iter().chain(&task.halt_on_alarms).cloned().collect(),
                lock,
                limit,
                retries: task.retries,
                timeout: std::time::Duration::from_secs(timeout_secs),
                delay: std::time::Duration::from_secs(u64::from(task.delay_secs)),
                deadline: std::time::Duration::from_secs(60 * u64::from(task.deadline_mins.get())),
                event_fields: event_fields.into_iter().collect(),
                acts_on: info.as_ref().map(|i| i.targets.clone()).unwrap_or_default(),
                line,
            });
        }
    }
    for (task, message) in check_shared(&task_schedules) {
        let index = raw.tasks.iter().position(|t| t.get_ref().name == task).unwrap_or_default();
        let line = raw.tasks.get(index).map(|t| line_of(text, t.span().start));
        problem(line, format!("tasks[{index}] \"{task}\".schedule"), message);
    }
    if problems.is_empty() {
        let budget = raw.ec2_budget;
        for (class, bucket) in [
            ("describe", budget.describe),
            ("describe_unfiltered", budget.describe_unfiltered),
            ("mutating", budget.mutating),
            ("run_start", budget.run_start),
            ("tags", budget.tags),
            ("snapshots", budget.snapshots),
            ("copy_image", budget.copy_image),
        ] {
            if bucket.rate == 0 || bucket.burst == 0 {
                problems.push(Problem {
                    line: None,
                    path: format!("ec2_budget.{class}"),
                    message: "rate and burst must be at least 1".into(),
                });
            }
        }
        if raw.worker.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
            problems.push(Problem {
                line: None,
                path: "worker.shutdown_grace_secs".into(),
                message: format!(
                    "{} s is over {MAX_SHUTDOWN_GRACE_SECS}: a worker needs the grace and 10 s more to stop, and ECS \
                     stops a task at most 120 s after SIGTERM",
                    raw.worker.shutdown_grace_secs
                ),
            });
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.line.unwrap_or(0));
            return Err(ConfigError { problems });
        }
        Ok(Config {
            fleet,
            limits,
            tasks,
            router: raw.router,
            worker: raw.worker,
            metrics: raw.metrics,
            ec2_budget: budget,
        })
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(0));
        Err(ConfigError { problems })
    }
}

/// The action a task with `steps` runs: its params are `{ steps = [...] }`.
pub const RUNBOOK: &str = "runbook";

/// The longest `timeout_secs` of a runbook's steps (0 for any other params): a task's own
/// timeout is raised to it, since one call of the runbook runs one step.
fn longest_step_timeout(params: &Value) -> u64 {
    let steps = params.get("steps").and_then(Value::as_array).into_iter().flatten();
    steps.filter_map(|s| s.get("timeout_secs").and_then(Value::as_u64)).max().unwrap_or(0)
}

/// The longest shutdown grace: with the 10 s a worker needs beyond it, ECS's 120-second
/// ceiling on how long it waits for a task to stop after SIGTERM.
pub const MAX_SHUTDOWN_GRACE_SECS: u32 = 110;

/// The AWS partitions a fleet may run in.
pub const PARTITIONS: [&str; 5] = ["aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b"];

/// Whether a text is an SNS topic ARN (`arn:PARTITION:sns:REGION:ACCOUNT:NAME`).
fn is_topic_arn(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "sns"
        && looks_like_region(parts[3])
        && is_account_id(parts[4])
        && !parts[5].is_empty()
}

/// The limit a task's jobs use: the task's `limit` (which must be configured), else its
/// action's (configured, or added with the action's defaults).
fn resolve_limit(
    task: &RawTask,
    info: Option<&ActionInfo>,
    limits: &mut BTreeMap<String, Limit>,
) -> Result<Option<String>, String> {
    if let Some(name) = &task.limit {
        return if limits.contains_key(name) {
            Ok(Some(name.clone()))
        } else {
            Err(format!("no [limits.{name}] is configured"))
        };
    }
    let Some(default) = info.and_then(|i| i.limit.as_ref()) else {
        return Ok(None);
    };
    if !limits.contains_key(&default.name) {
        let pool = Template::parse(&default.pool)?;
        limits.insert(default.name.clone(), Limit { name: default.name.clone(), max: default.max, pool });
    }
    Ok(Some(default.name.clone()))
}

#[cfg(test)]
mod tests;

/// Refuses a lock or pool template that reads the clock: it is rendered again at every
/// attempt, so one job's attempts would take different items (and a pool would double at
/// midnight).
fn steady(what: &str, template: Template) -> Result<Template, String> {
    if template.reads_the_clock() {
        return Err(format!(
            "{what} must name the same item at every attempt: `{}` reads the clock ({{date}}, {{datetime}})",
            template.as_str()
        ));
    }
    Ok(template)
}
