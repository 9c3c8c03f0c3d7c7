use super::*;

const DESIGN_EXAMPLE: &str = r#"
[fleet]
name = "opsfleet"
partitions = 4
allowed_accounts = ["123456789012"]
member_role = "arn:aws:iam::{account}:role/OpsFleetMember"
external_id = "opsfleet"

[limits.snapshot-copy]
max = 5
pool = "{params.destination_region}"

[[tasks]]
name = "snapshot-stopped-instance"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "ebs-snapshot"
params = { retain = 7 }

[[tasks]]
name = "nightly-volume-backup"
pattern = { "detail-type" = ["Scheduled Event"], resources = [{ suffix = "rule/nightly" }] }
targets = { type = "ec2:volume", tags = { Backup = "nightly" }, regions = ["us-east-1", "us-west-2"] }
action = "ebs-snapshot"
max_concurrency = 50
max_errors = 5
"#;

#[test]
fn design_example_loads() {
    let config = super::super::Config::parse(DESIGN_EXAMPLE, None).expect("the DESIGN.md example is valid");
    assert_eq!(config.fleet.partitions.get(), 4);
    assert_eq!(config.tasks.len(), 2);
    assert_eq!(config.tasks[1].max_errors, Some(5));
    assert_eq!(config.tasks[0].line, 13);
    match &config.tasks[1].targets {
        Targets::Discover(q) => {
            assert_eq!(q.kind, ResourceType::Volume);
            assert_eq!(q.tags.get("Backup").map(String::as_str), Some("nightly"));
        }
        other => panic!("expected discovery, got {other:?}"),
    }
    assert_eq!(config.limits["snapshot-copy"].max, 5);
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let text = DESIGN_EXAMPLE.replace("max_errors = 5", "max_errorz = 5");
    let err = super::super::Config::parse(&text, None).expect_err("the config is invalid");
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].message.contains("unknown field `max_errorz`"), "{err}");
    assert_eq!(err.problems[0].line, Some(26));
}

#[test]
fn every_semantic_problem_is_reported_with_its_place() {
    let text = r#"
[fleet]
name = "f"
allowed_accounts = ["12345"]

[[tasks]]
name = "a"
pattern = { source = "aws.ec2" }
targets = "event"
action = "noop"
lock = "{nope}"

[[tasks]]
name = "a"
pattern = '''{"detail": {"x": [null]}}'''
targets = { type = "ec2:volume", regions = ["mars"] }
action = "noop"
limit = "missing"
"#;
    let err = super::super::Config::parse(text, None).expect_err("the config is invalid");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    let expect = [
        "fleet.allowed_accounts: `12345` is not a 12-digit account id",
        "line 6: tasks[0] \"a\".pattern: at `source`: a pattern value must be an array",
        "line 6: tasks[0] \"a\".lock: unknown placeholder `{nope}`",
        "line 13: tasks[1] \"a\".name: another task has the same name",
        "line 13: tasks[1] \"a\".targets.regions: `mars` is not a region name",
        "line 13: tasks[1] \"a\".limit: no [limits.missing] is configured",
    ];
    for e in expect {
        assert!(lines.iter().any(|l| l.contains(e)), "missing `{e}` in {lines:#?}");
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

#[test]
fn bad_targets_keyword_is_named() {
    let text = DESIGN_EXAMPLE.replace("targets = \"event\"", "targets = \"events\"");
    let err = super::super::Config::parse(&text, None).expect_err("the config is invalid").to_string();
    assert!(err.contains("targets must be \"event\""), "{err}");
}

struct Catalog;

impl ActionCatalog for Catalog {
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String> {
        match action {
            "ebs-snapshot" => {
                if params.get("bogus").is_some() {
                    return Err("unknown param `bogus`".into());
                }
                let templates = params
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| vec![("description".to_owned(), d.to_owned())])
                    .unwrap_or_default();
                Ok(ActionInfo { targets: vec![ResourceType::Instance], limit: None, templates })
            }
            "copy" => Ok(ActionInfo {
                targets: vec![ResourceType::Snapshot],
                limit: Some(LimitDefault {
                    name: "snapshot-copy".into(),
                    max: 20,
                    pool: "{params.destination_region}".into(),
                }),
                templates: vec![],
            }),
            other => Err(format!("unknown action `{other}`")),
        }
    }
}

#[test]
fn catalog_checks_actions_params_and_target_types() {
    let text = DESIGN_EXAMPLE.replace("params = { retain = 7 }", "params = { bogus = 1 }");
    let err = super::super::Config::parse(&text, Some(&Catalog)).expect_err("the config is invalid").to_string();
    assert!(err.contains("tasks[0] \"snapshot-stopped-instance\".action: unknown param `bogus`"), "{err}");
    assert!(
        err.contains("tasks[1] \"nightly-volume-backup\".targets: action `ebs-snapshot` does not act on ec2:volume"),
        "{err}"
    );
}

#[test]
fn action_limits_get_defaults_and_pool_params_are_required() {
    let text = r#"
[fleet]
name = "f"
[[tasks]]
name = "c"
pattern = { source = ["x"] }
targets = "event"
action = "copy"
"#;
    let err = super::super::Config::parse(text, Some(&Catalog)).expect_err("the config is invalid").to_string();
    assert!(err.contains("limit `snapshot-copy` pools by `params.destination_region`"), "{err}");
    let ok = text.replace("action = \"copy\"", "action = \"copy\"\nparams = { destination_region = \"eu-west-1\" }");
    let config = super::super::Config::parse(&ok, Some(&Catalog)).expect("the config is valid");
    assert_eq!(config.tasks[0].limit.as_deref(), Some("snapshot-copy"));
    assert_eq!(config.limits["snapshot-copy"].max, 20);
}

const EXAMPLE_FLEET: &str = include_str!("../../../../examples/fleet.toml");

/// The `noop` action as the demo uses it: any resource, params `sleep_ms` (integer),
/// `fail_rate` (a number in 0..=1) and `pending_checks` (integer) only.
struct NoopOnly;

impl ActionCatalog for NoopOnly {
    fn check(&self, action: &str, params: &Value) -> Result<ActionInfo, String> {
        if action != "noop" {
            return Err(format!("the example fleet uses only `noop`, not `{action}`"));
        }
        for (key, value) in params.as_object().into_iter().flatten() {
            let ok = match key.as_str() {
                "sleep_ms" | "pending_checks" => value.is_u64(),
                "fail_rate" => value.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)),
                _ => false,
            };
            if !ok {
                return Err(format!("bad noop param `{key}` = {value}"));
            }
        }
        Ok(ActionInfo { targets: ResourceType::ALL.to_vec(), limit: None, templates: vec![] })
    }
}

/// An event of `examples/events/` and what it plans to with `examples/fleet.toml`.
struct ExampleEvent {
    file: &'static str,
    body: &'static str,
    /// The tasks that match, in config order; `None` when the account is not allowed.
    matched: Option<&'static [&'static str]>,
    /// How many jobs the event's own resources expand to.
    jobs: usize,
    /// How many discoveries the matched tasks ask for.
    discoveries: usize,
}

macro_rules! example_event {
    ($file:literal, $matched:expr, $jobs:literal, $discoveries:literal) => {
        ExampleEvent {
            file: $file,
            body: include_str!(concat!("../../../../examples/events/", $file)),
            matched: $matched,
            jobs: $jobs,
            discoveries: $discoveries,
        }
    };
}

const ALARMED: Option<&[&str]> = Some(&["recover-alarmed-resource"]);

fn example_events() -> Vec<ExampleEvent> {
    vec![
        example_event!("alarm-composite.json", ALARMED, 0, 0),
        example_event!("alarm-cpu-high.json", ALARMED, 1, 0),
        example_event!("alarm-io-pressure-metric-math.json", ALARMED, 2, 0),
        example_event!("ebs-snapshot-completed.json", Some(&["copy-completed-snapshot"]), 1, 0),
        example_event!("ebs-volume-created.json", Some(&["tag-new-volume"]), 1, 0),
        example_event!("ec2-instance-running.json", Some(&[]), 0, 0),
        example_event!("ec2-instance-stopped.json", Some(&["snapshot-stopped-instance"]), 1, 0),
        example_event!("other-account-instance-stopped.json", None, 0, 0),
        example_event!("scheduled-nightly.json", Some(&["nightly-volume-backup"]), 0, 1),
        example_event!("sns-classic-alarm-cpu-high.json", ALARMED, 1, 0),
        example_event!("sns-classic-alarm-network-eu-west-1.json", ALARMED, 1, 0),
        example_event!("sns-ec2-instance-stopped-us-west-2.json", Some(&["snapshot-stopped-instance"]), 1, 0),
        example_event!("tag-change-backup.json", Some(&["backup-tag-changed"]), 1, 0),
    ]
}

#[test]
fn example_fleet_loads_with_noop_only() {
    let config = super::super::Config::parse(EXAMPLE_FLEET, Some(&NoopOnly)).expect("examples/fleet.toml is valid");
    assert_eq!(config.fleet.name, "opsfleet-demo");
    assert_eq!(config.fleet.partitions.get(), 4);
    assert_eq!(config.fleet.allowed_accounts, ["123456789012"]);
    assert!(config.tasks.iter().all(|t| t.action == "noop"));
    let discovery: Vec<&Targets> = config.tasks.iter().map(|t| &t.targets).filter(|t| **t != Targets::Event).collect();
    match discovery[..] {
        [Targets::Discover(q)] => {
            assert_eq!(q.kind, ResourceType::Volume);
            assert_eq!(q.tags.get("Backup").map(String::as_str), Some("nightly"));
            assert_eq!(q.regions, ["us-east-1"]);
        }
        _ => panic!("expected exactly one discovery task, got {discovery:?}"),
    }
}

#[test]
fn example_events_plan_with_the_example_fleet() {
    use crate::plan::{PlanError, Planner};
    let config = super::super::Config::parse(EXAMPLE_FLEET, Some(&NoopOnly)).expect("examples/fleet.toml is valid");
    let planner = Planner::new(config);
    for example in example_events() {
        let file = example.file;
        let event = crate::event::normalize(example.body).unwrap_or_else(|e| panic!("{file}: {e}"));
        let result = planner.plan(&event, 1_715_800_000_000);
        let Some(matched) = example.matched else {
            match result {
                Err(PlanError::AccountNotAllowed { account }) => {
                    assert_eq!(account, "210987654321", "{file}")
                }
                other => panic!("{file}: expected the account to be rejected, got {other:?}"),
            }
            continue;
        };
        let plan = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(plan.matched, matched, "{file}: matched tasks");
        assert_eq!(plan.jobs.len(), example.jobs, "{file}: jobs");
        assert_eq!(plan.discoveries.len(), example.discoveries, "{file}: discoveries");
        for job in &plan.jobs {
            assert_eq!(job.action, "noop", "{file}");
            assert_eq!(job.resource.account, "123456789012", "{file}");
            assert!(job.partition < 4, "{file}");
            job.to_json().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}

#[test]
fn every_example_event_is_checked() {
    let mut listed: Vec<&str> = example_events().iter().map(|e| e.file).collect();
    listed.sort_unstable();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/events is readable")
        .map(|entry| entry.expect("entry is readable").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort_unstable();
    assert_eq!(listed, on_disk, "an example event without an expectation, or the other way round");
}

#[test]
fn action_param_templates_are_checked_and_their_event_fields_kept() {
    let text = r#"
[fleet]
name = "f"

[[tasks]]
name = "good"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "ebs-snapshot"
params = { description = "{task} {date} {event.detail.state} {event.detail.instance-id}" }
delay_secs = 30

[[tasks]]
name = "bad"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "ebs-snapshot"
params = { description = "{when}" }
"#;
    let err = Config::parse(text, Some(&Catalog)).expect_err("an unknown placeholder");
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].path, "tasks[1] \"bad\".params.description");
    assert!(err.problems[0].message.contains("unknown placeholder `{when}`"), "{err}");
    let config = Config::parse(&text.replace("{when}", "{datetime}"), Some(&Catalog)).expect("config");
    let good = config.task("good").expect("task");
    assert_eq!(good.event_fields, ["detail.instance-id", "detail.state"]);
    assert_eq!(good.delay, std::time::Duration::from_secs(30));
}
