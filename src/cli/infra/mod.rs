//! `opsfleet infra render`: the CloudFormation templates of a config, so the infrastructure
//! follows the config instead of drifting from it.
//!
//! - `opsfleet-core.yaml`: the queues, the table, the EventBridge rules and schedules, the alarm
//!   topics' subscriptions, the events queue's and the event bus's policies and the fleet's
//!   role, named exactly as the fleet and `opsfleet setup` name them;
//! - `opsfleet-service.yaml`: ECS Fargate services for the router and the workers, the workers
//!   scaled on the job backlog, and the CloudWatch alarms;
//! - `member-role.yaml`: the role in member accounts and the rules forwarding their events to
//!   the fleet's bus (one stack per account, or a StackSet).

mod alarms;
mod core;
mod member;
mod service;
mod yaml;

use anyhow::Context;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

pub use self::core::{core_template, rules};
pub use member::member_template;
pub use service::service_template;

/// Where the metrics and the health check are served inside a container.
pub const METRICS_PORT: u16 = 9090;

/// Writes the templates of the config at `config_path` into `out`, and lists them.
pub fn render(config_path: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_path)?;
    super::deployable::check(&config, config_path)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let templates = [
        ("opsfleet-core.yaml", core_template(&config)),
        ("opsfleet-service.yaml", service_template(&config)),
        ("member-role.yaml", member_template(&config)),
    ];
    for (name, template) in templates {
        let path = out.join(name);
        std::fs::write(&path, yaml::to_yaml(&template)).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A CloudFormation logical id from a name: its letters and digits, each part capitalised
/// (`jobs-0-dlq.fifo` → `Jobs0DlqFifo`).
pub fn logical_id(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// `{"Ref": name}`.
fn reference(name: &str) -> Value {
    serde_json::json!({ "Ref": name })
}

/// `{"Fn::GetAtt": [resource, attribute]}`.
fn get_att(resource: &str, attribute: &str) -> Value {
    serde_json::json!({ "Fn::GetAtt": [resource, attribute] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_ids_are_alphanumeric_and_keep_the_name_readable() {
        assert_eq!(logical_id("jobs-0-dlq.fifo"), "Jobs0DlqFifo");
        assert_eq!(logical_id("events"), "Events");
        assert_eq!(logical_id("nightly_backup"), "NightlyBackup");
    }
}
