//! What `validate` and `infra render` refuse beyond the config's own rules: a config that
//! loads but whose deployment AWS would refuse, or whose tasks could never run once deployed.

use super::infra::{core_template, member_template, rules, service_template};
use opsfleet_protocol::config::unscheduled_patterns;
use opsfleet_protocol::Config;
use serde_json::Value;
use std::path::Path;

/// CloudFormation's limit on the resources of one template.
pub const MAX_TEMPLATE_RESOURCES: usize = 500;

/// EventBridge's default limit on the rules of one event bus.
pub const MAX_RULES_PER_BUS: usize = 300;

/// SQS's limit on a queue policy, in bytes.
pub const MAX_QUEUE_POLICY_BYTES: usize = 8_192;

/// The longest an SQS queue ARN's prefix may be (`arn:aws-us-gov:sqs:ap-southeast-2:` and an
/// account): the events queue policy's ARNs are counted at that length.
const QUEUE_ARN_PREFIX: &str = "arn:aws-us-gov:sqs:ap-southeast-2:123456789012:";

/// Refuses a config whose deployment AWS would refuse (policies, rules, resources, a queue
/// policy past their limits) or whose patterns wait for a schedule it does not render, naming
/// each problem with its figures or its place in the file.
pub fn check(config: &Config, path: &Path) -> anyhow::Result<()> {
    super::catalog::check_policy_sizes(config)?;
    let mut problems: Vec<String> =
        unscheduled_patterns(config).iter().map(|p| format!("{}:{p}", path.display())).collect();
    problems.extend(limits(config).into_iter().map(|p| format!("{}: {p}", path.display())));
    problems.extend(receives_short_of_retries(config).into_iter().map(|p| format!("{}:{p}", path.display())));
    if !problems.is_empty() {
        anyhow::bail!("invalid config:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// The AWS limits the rendered templates would exceed, each with its figures.
pub fn limits(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let bus_rules = rules(config).iter().filter(|r| r.schedule.as_ref().is_none_or(|s| s.timezone.is_none())).count();
    if bus_rules > MAX_RULES_PER_BUS {
        problems.push(format!(
            "{bus_rules} EventBridge rules (one per distinct pattern and per UTC schedule), over the {MAX_RULES_PER_BUS} \
             an event bus holds by default: share patterns or schedules between tasks"
        ));
    }
    let core = core_template(config);
    for (name, template) in [
        ("opsfleet-core.yaml", &core),
        ("opsfleet-service.yaml", &service_template(config)),
        ("member-role.yaml", &member_template(config)),
    ] {
        let count = template["Resources"].as_object().map_or(0, serde_json::Map::len);
        if count > MAX_TEMPLATE_RESOURCES {
            problems.push(format!(
                "{name} would hold {count} resources, over CloudFormation's {MAX_TEMPLATE_RESOURCES}: fewer partitions or rules"
            ));
        }
    }
    if let Some(policy) = core["Resources"].get("EventsQueuePolicy") {
        let bytes = queue_policy_bytes(&policy["Properties"]["PolicyDocument"], &config.fleet.name);
        if bytes > MAX_QUEUE_POLICY_BYTES {
            problems.push(format!(
                "the events queue's policy would be {bytes} bytes, over SQS's {MAX_QUEUE_POLICY_BYTES}: fewer alarm_topics"
            ));
        }
    }
    problems
}

/// Tasks whose retries SQS would cut short: a job is received once per attempt, and at
/// `max_receive_count` receives SQS moves it to the DLQ itself, before the worker records its
/// failure.
pub fn receives_short_of_retries(config: &Config) -> Vec<String> {
    let receives = config.worker.max_receive_count;
    config
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, task)| task.retries >= receives)
        .map(|(index, task)| {
            format!(
                "line {}: tasks[{index}] \"{}\".retries: {} retries take {} receives, and worker.max_receive_count is {receives}: \
                 SQS would dead-letter the job before its last attempt; raise max_receive_count above {}",
                task.line,
                task.name,
                task.retries,
                task.retries + 1,
                task.retries
            )
        })
        .collect()
}

/// The size SQS counts of the events queue's policy, its CloudFormation references counted at
/// the longest ARN they may become.
fn queue_policy_bytes(policy: &Value, fleet: &str) -> usize {
    let text = policy.to_string();
    let longest_queue = format!("\"{QUEUE_ARN_PREFIX}{}\"", opsfleet_protocol::names::events_dlq(fleet));
    let mut resolved = text.clone();
    for reference in ["{\"Fn::GetAtt\":[\"EventsQueue\",\"Arn\"]}", "{\"Fn::GetAtt\":[\"EventsDlqQueue\",\"Arn\"]}"] {
        resolved = resolved.replace(reference, &longest_queue);
    }
    resolved.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsfleet_worker::ActionRegistry;

    fn config(fleet: &str, tasks: usize, task: impl Fn(usize) -> String) -> Config {
        let mut text = format!("[fleet]\n{fleet}\n");
        for n in 0..tasks {
            text.push_str(&task(n));
        }
        Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config")
    }

    #[test]
    fn rules_past_a_bus_and_resources_past_a_template_are_refused_with_their_number() {
        let distinct = |n: usize| {
            format!("\n[[tasks]]\nname = \"t{n}\"\npattern = {{ source = [\"s{n}\"] }}\ntargets = \"event\"\naction = \"noop\"\n")
        };
        assert!(limits(&config("name = \"ops\"", 300, distinct)).is_empty());
        let problems = limits(&config("name = \"ops\"", 301, distinct));
        assert!(problems.iter().any(|p| p.starts_with("301 EventBridge rules")), "{problems:?}");
        let problems = limits(&config("name = \"ops\"\npartitions = 100", 300, distinct));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("opsfleet-core.yaml would hold ") && p.contains("over CloudFormation's 500")),
            "{problems:?}"
        );
    }

    #[test]
    fn retries_sqs_would_cut_short_are_refused_with_their_place() {
        let task = |retries: u32| {
            move |n: usize| {
                format!("\n[[tasks]]\nname = \"t{n}\"\npattern = {{ source = [\"x\"] }}\ntargets = \"event\"\naction = \"noop\"\nretries = {retries}\n")
            }
        };
        let fleet = "name = \"ops\"\n[worker]\nmax_receive_count = 4";
        assert!(receives_short_of_retries(&config(fleet, 1, task(3))).is_empty());
        let problems = receives_short_of_retries(&config(fleet, 1, task(4)));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "line 6: tasks[0] \"t0\".retries: 4 retries take 5 receives, and worker.max_receive_count is 4"
            ),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn an_events_queue_policy_past_sqs_size_is_refused_with_its_bytes() {
        let noop = |n: usize| {
            format!("\n[[tasks]]\nname = \"t{n}\"\npattern = {{ source = [\"x\"] }}\ntargets = \"event\"\naction = \"noop\"\n")
        };
        let topics = |count: usize| {
            let arns: Vec<String> =
                (0..count).map(|n| format!("\"arn:aws:sns:us-east-1:123456789012:alarms-of-team-{n:04}\"")).collect();
            format!("name = \"ops\"\nalarm_topics = [{}]", arns.join(", "))
        };
        assert!(limits(&config(&topics(20), 1, noop)).is_empty());
        let problems = limits(&config(&topics(200), 1, noop));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("the events queue's policy would be ") && p.contains("over SQS's 8192")),
            "{problems:?}"
        );
    }
}
