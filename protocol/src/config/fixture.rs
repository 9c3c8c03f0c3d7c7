//! Config stanzas for tests and load tests: the task every fleet test uses (a `noop` on the
//! resources an event of source `x` names), written once.

use crate::job::JobOrigin;
use crate::{Clock, Config, Job, Resource, ResourceType};
use std::fmt;

/// The account the fixtures' resources live in.
pub const ACCOUNT: &str = "123456789012";

/// A `[[tasks]]` stanza of a fleet config.
#[derive(Debug, Clone)]
pub struct TaskStanza {
    name: String,
    action: String,
    params: String,
    lines: Vec<String>,
}

/// A task running `noop` with `params` (the inside of an inline table, `sleep_ms = 20`) on the
/// resources that events of source `x` name.
pub fn noop_task(name: &str, params: &str) -> TaskStanza {
    TaskStanza { name: name.to_owned(), action: "noop".to_owned(), params: params.to_owned(), lines: Vec::new() }
}

impl TaskStanza {
    /// The same task with another line (`limit = "two"`, `retries = 1`).
    pub fn with(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

impl fmt::Display for TaskStanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n[[tasks]]")?;
        writeln!(f, "name = \"{}\"", self.name)?;
        writeln!(f, "pattern = {{ source = [\"x\"] }}")?;
        writeln!(f, "targets = \"event\"")?;
        writeln!(f, "action = \"{}\"", self.action)?;
        if !self.params.is_empty() {
            writeln!(f, "params = {{ {} }}", self.params)?;
        }
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Task stanzas one after the other.
pub fn tasks(stanzas: &[TaskStanza]) -> String {
    stanzas.iter().map(ToString::to_string).collect()
}

/// The job of `task` for instance `instance` (in [`ACCOUNT`], `us-east-1`) from event `event`,
/// received now, as the router would make it.
///
/// # Panics
///
/// When the config has no such task (a test's own mistake).
pub fn instance_job(config: &Config, task: &str, event: &str, instance: &str) -> Job {
    let resource = Resource {
        account: ACCOUNT.into(),
        region: "us-east-1".into(),
        kind: ResourceType::Instance,
        id: instance.into(),
    };
    let Some(t) = config.task(task) else { panic!("no task {task} in the config") };
    let origin = JobOrigin {
        event_id: event,
        event_time: None,
        received_ms: Clock::new().now_ms(),
        task,
        action: &t.action,
        params: &t.params,
    };
    Job::new(origin, resource, config.fleet.partitions.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_is_a_task_the_config_reads() {
        let text = format!(
            "[fleet]\nname = \"f\"\n[limits.two]\nmax = 2\n{}",
            tasks(&[noop_task("a", "sleep_ms = 5").with("limit = \"two\""), noop_task("b", "")])
        );
        let config = crate::Config::parse(&text, None).expect("config");
        let a = config.task("a").expect("a");
        assert_eq!((a.action.as_str(), a.params["sleep_ms"].as_u64()), ("noop", Some(5)));
        assert_eq!(a.limit.as_deref(), Some("two"));
        assert!(config.task("b").is_some());
    }
}
