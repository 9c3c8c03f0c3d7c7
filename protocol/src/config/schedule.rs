//! Schedules: a task's `schedule`, what it renders as, the events it sends, and the check that
//! a pattern waiting for a `Scheduled Event` has a schedule of the config that sends one.
//!
//! EventBridge sends a schedule's events only to that schedule's own targets, so a pattern on
//! `Scheduled Event` matches nothing unless the config renders the schedule it waits for.

use super::load::Problem;
use super::Config;
use crate::names;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `schedule = "cron(0 3 * * ? *)"`, or a table that names the schedule (tasks naming the same
/// schedule share it) or gives it a time zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSchedule {
    /// The expression alone: the task's own schedule, in UTC.
    Expression(String),
    /// `{ expression, timezone, name }`.
    Table(RawScheduleTable),
}

/// `schedule = { expression = "...", timezone = "Europe/Paris", name = "nightly" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduleTable {
    expression: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// A task's schedule, as `opsfleet infra render` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The rendered rule's or schedule's name: `{fleet}-{name}`, where the name is the
    /// schedule's own or else the task's, cut to 64 characters ([`names::rule`]).
    pub name: String,
    /// `rate(...)` or `cron(...)`.
    pub expression: String,
    /// The IANA time zone a cron is read in. With one, the schedule is an EventBridge Scheduler
    /// schedule (which follows daylight saving time); without, an EventBridge rule (UTC).
    pub timezone: Option<String>,
}

/// The schedule group opsfleet's Scheduler schedules live in.
pub const SCHEDULE_GROUP: &str = "default";

impl Schedule {
    /// Reads a task's `schedule`, or says what is wrong with it.
    pub(super) fn from_raw(fleet: &str, task: &str, raw: &RawSchedule) -> Result<Schedule, String> {
        let (expression, timezone, name) = match raw {
            RawSchedule::Expression(expression) => (expression, None, None),
            RawSchedule::Table(table) => (&table.expression, table.timezone.as_ref(), table.name.as_ref()),
        };
        check_expression(expression)?;
        if let Some(zone) = timezone {
            check_timezone(zone)?;
        }
        if let Some(name) = name {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(format!("schedule name `{name}` must be letters, digits, `-`, `_` or `.`"));
            }
        }
        Ok(Schedule {
            name: names::rule(fleet, name.map_or(task, String::as_str)),
            expression: expression.clone(),
            timezone: timezone.cloned(),
        })
    }

    /// The pattern of the events this schedule sends: EventBridge's `Scheduled Event` naming
    /// the rule, or for a Scheduler schedule the same shape naming the schedule.
    pub fn pattern(&self) -> Value {
        match self.timezone {
            None => names::schedule_pattern(&self.name),
            Some(_) => json!({
                "source": ["aws.scheduler"],
                "detail-type": ["Scheduled Event"],
                "resources": [{ "suffix": format!(":schedule/{SCHEDULE_GROUP}/{}", self.name) }],
            }),
        }
    }

    /// The ARN of the rendered rule or schedule in an account and region.
    pub fn arn(&self, account: &str, region: &str) -> String {
        match self.timezone {
            None => format!("arn:aws:events:{region}:{account}:rule/{}", self.name),
            Some(_) => format!("arn:aws:scheduler:{region}:{account}:schedule/{SCHEDULE_GROUP}/{}", self.name),
        }
    }

    /// The event this schedule sends when it fires, as the router reads it.
    pub fn event(&self, account: &str, region: &str) -> Map<String, Value> {
        let source = if self.timezone.is_some() { "aws.scheduler" } else { "aws.events" };
        let event = json!({
            "version": "0",
            "id": "00000000-0000-0000-0000-000000000000",
            "detail-type": "Scheduled Event",
            "source": source,
            "account": account,
            "time": "2026-01-01T00:00:00Z",
            "region": region,
            "resources": [self.arn(account, region)],
            "detail": {},
        });
        match event {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// The distinct schedules of a config, in task order.
pub fn schedules(config: &Config) -> Vec<&Schedule> {
    let mut all: Vec<&Schedule> = Vec::new();
    for schedule in config.tasks.iter().filter_map(|t| t.schedule.as_ref()) {
        if !all.iter().any(|s| s.name == schedule.name) {
            all.push(schedule);
        }
    }
    all
}

/// Tasks sharing a schedule name must agree on what it is.
pub(super) fn check_shared(schedules: &[(String, Schedule)]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (index, (task, schedule)) in schedules.iter().enumerate() {
        let first = schedules[..index].iter().find(|(_, s)| s.name == schedule.name && s != schedule);
        if let Some((other, _)) = first {
            problems.push((
                task.clone(),
                format!(
                    "schedule `{}` is also task \"{other}\"'s, with another expression or time zone: \
                     tasks sharing a schedule give it the same ones",
                    schedule.name
                ),
            ));
        }
    }
    problems
}

/// The tasks whose pattern waits for a `Scheduled Event` that no schedule of the config sends:
/// they would never run. One problem each, naming the schedules the config does render.
pub fn unscheduled_patterns(config: &Config) -> Vec<Problem> {
    let schedules = schedules(config);
    let rendered: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    let mut problems = Vec::new();
    for (index, task) in config.tasks.iter().enumerate() {
        if task.schedule.is_some() || !waits_for_schedule(&task.pattern_json) {
            continue;
        }
        let accounts = strings_or(&task.pattern_json["account"], config.fleet.allowed_accounts.first(), "123456789012");
        let regions = strings_or(&task.pattern_json["region"], None, "us-east-1");
        let sent = schedules.iter().any(|schedule| {
            accounts
                .iter()
                .any(|account| regions.iter().any(|region| task.pattern.matches(&schedule.event(account, region))))
        });
        if !sent {
            let rendered = if rendered.is_empty() { "none".to_owned() } else { rendered.join(", ") };
            problems.push(Problem {
                line: Some(task.line),
                path: format!("tasks[{index}] \"{}\".pattern", task.name),
                message: format!(
                    "waits for a `Scheduled Event` no schedule of this config sends (it renders: {rendered}), and \
                     EventBridge sends a schedule's events only to its own targets: give the task a `schedule`, \
                     or share one with `schedule = {{ name = \"nightly\", expression = \"cron(0 2 * * ? *)\" }}`"
                ),
            });
        }
    }
    problems
}

/// Whether a pattern asks for `detail-type` `Scheduled Event`.
fn waits_for_schedule(pattern: &Value) -> bool {
    match &pattern["detail-type"] {
        Value::Array(values) => values.iter().any(|v| v == "Scheduled Event"),
        _ => false,
    }
}

/// The plain strings a pattern field lists, else the fallback: the places a schedule's event
/// is tried in.
fn strings_or(field: &Value, preferred: Option<&String>, fallback: &str) -> Vec<String> {
    let listed: Vec<String> = match field {
        Value::Array(values) => values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    if listed.is_empty() {
        vec![preferred.cloned().unwrap_or_else(|| fallback.to_owned())]
    } else {
        listed
    }
}

/// Checks the shape of an EventBridge schedule expression: `rate(N unit)` or a `cron(...)`
/// of six fields. EventBridge checks the fields' values when the schedule is created.
fn check_expression(expression: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{expression}` is not a schedule expression: {why}"));
    if let Some(rate) = expression.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
        let mut parts = rate.split(' ');
        let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return bad("a rate is `rate(N minutes|hours|days)`");
        };
        let Ok(n) = n.parse::<u32>() else { return bad("a rate's value is a whole number") };
        let singular = ["minute", "hour", "day"].contains(&unit);
        let plural = ["minutes", "hours", "days"].contains(&unit);
        return match (n, singular, plural) {
            (0, _, _) => bad("a rate is at least 1"),
            (1, true, _) | (2.., _, true) => Ok(()),
            (1, _, true) => bad("a rate of 1 takes a singular unit (`rate(1 day)`)"),
            (_, true, _) => bad("a rate over 1 takes a plural unit (`rate(2 days)`)"),
            _ => bad("a rate's unit is minutes, hours or days"),
        };
    }
    if let Some(cron) = expression.strip_prefix("cron(").and_then(|c| c.strip_suffix(')')) {
        return match cron.split(' ').filter(|f| !f.is_empty()).count() {
            6 => Ok(()),
            n => bad(&format!("a cron has six fields (minutes hours day-of-month month day-of-week year), not {n}")),
        };
    }
    bad("it is `rate(...)` or `cron(...)`")
}

/// Checks the shape of an IANA time zone name (`UTC`, `Europe/Paris`,
/// `America/Argentina/Buenos_Aires`); EventBridge Scheduler checks the name itself.
fn check_timezone(zone: &str) -> Result<(), String> {
    let part_ok = |part: &str| {
        part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-+".contains(&b))
    };
    if zone == "UTC" || (zone.contains('/') && zone.split('/').all(part_ok)) {
        Ok(())
    } else {
        Err(format!("`{zone}` is not an IANA time zone name such as `Europe/Paris` or `UTC`"))
    }
}

#[cfg(test)]
mod tests;
