//! `examples/fleet.toml` checked by the real action registry, and what each of
//! `examples/events/` plans to with it.

use opsfleet_protocol::config::Targets;
use opsfleet_protocol::{Config, PlanError, Planner, ResourceType};
use opsfleet_worker::actions::ActionRegistry;

const EXAMPLE_FLEET: &str = include_str!("../../examples/fleet.toml");

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
            body: include_str!(concat!("../../examples/events/", $file)),
            matched: $matched,
            jobs: $jobs,
            discoveries: $discoveries,
        }
    };
}

const ALARMED: Option<&[&str]> = Some(&["reboot-alarmed-instance", "page-on-alarm"]);

fn example_events() -> Vec<ExampleEvent> {
    vec![
        // A composite alarm names no instance: both tasks match, nothing to act on.
        example_event!("alarm-composite.json", ALARMED, 0, 0),
        // One instance: a reboot and a page.
        example_event!("alarm-cpu-high.json", ALARMED, 2, 0),
        // A `scale-up-` alarm: the instance is resized as well as rebooted and paged on.
        example_event!(
            "alarm-cpu-sustained-scale-up.json",
            Some(&["reboot-alarmed-instance", "page-on-alarm", "scale-up-busy-instance"]),
            3,
            0
        ),
        // An instance and a volume: the reboot acts on the instance only, the page on both.
        example_event!("alarm-io-pressure-metric-math.json", ALARMED, 3, 0),
        // A `restart-app-` alarm: the application is restarted as well as the instance paged on.
        example_event!(
            "alarm-restart-app.json",
            Some(&["reboot-alarmed-instance", "page-on-alarm", "restart-unhealthy-app"]),
            3,
            0
        ),
        // A table's alarm: its capacity is raised and the page names it; no instance to reboot.
        example_event!(
            "alarm-dynamodb-write-throttles.json",
            Some(&["reboot-alarmed-instance", "page-on-alarm", "scale-throttled-table"]),
            2,
            0
        ),
        example_event!("ebs-snapshot-completed.json", Some(&["copy-completed-snapshot"]), 1, 0),
        // The copy it made, finished in the destination region: copied no further.
        example_event!("ebs-snapshot-copied-eu-west-1.json", Some(&[]), 0, 0),
        example_event!("ebs-volume-created.json", Some(&["tag-new-volume"]), 1, 0),
        example_event!("ec2-ami-available.json", Some(&["copy-new-image"]), 1, 0),
        example_event!("ec2-instance-running.json", Some(&[]), 0, 0),
        example_event!("ec2-instance-stopped.json", Some(&["snapshot-stopped-instance"]), 1, 0),
        example_event!("other-account-instance-stopped.json", None, 0, 0),
        example_event!(
            "scheduled-nightly.json",
            Some(&["nightly-volume-backup", "nightly-image", "retire-nightly-images", "nightly-table-backup"]),
            0,
            4
        ),
        // The quarter-hourly schedule: the office-hours task finds its instances later.
        example_event!("scheduled-every-15-minutes.json", Some(&["office-hours-instances"]), 0, 1),
        // The weekly patch window: the runbook task finds its instances later.
        example_event!("scheduled-patch-window.json", Some(&["weekly-patch-window"]), 0, 1),
        example_event!("sns-classic-alarm-cpu-high.json", ALARMED, 2, 0),
        example_event!("sns-classic-alarm-network-eu-west-1.json", ALARMED, 2, 0),
        example_event!("sns-ec2-instance-stopped-us-west-2.json", Some(&["snapshot-stopped-instance"]), 1, 0),
        example_event!("tag-change-backup.json", Some(&["backup-tag-changed"]), 1, 0),
        // An RDS instance stopped: a snapshot of it, named by the event's ARN.
        example_event!("rds-instance-stopped.json", Some(&["snapshot-stopped-database"]), 1, 0),
    ]
}

fn example_config() -> Config {
    Config::parse(EXAMPLE_FLEET, Some(&ActionRegistry::builtin())).expect("examples/fleet.toml is valid")
}

#[test]
fn the_example_fleet_loads_with_the_builtin_actions() {
    let config = example_config();
    assert_eq!(config.fleet.name, "opsfleet-demo");
    assert_eq!(config.fleet.partitions.get(), 4);
    assert_eq!(config.fleet.allowed_accounts, ["123456789012"]);
    let copy = config.tasks.iter().find(|t| t.action == "snapshot-copy").expect("a copy task");
    assert_eq!(copy.limit.as_deref(), Some("snapshot-copy"), "the copy takes a slot of its limit");
    let runbook = config.task("weekly-patch-window").expect("the runbook");
    assert_eq!(runbook.action, "runbook");
    assert!(runbook.ramp_up && runbook.max_targets_percent == Some(50));
    assert_eq!(runbook.halt_on_alarms, ["api-5xx-rate"]);
    let discovery: Vec<&Targets> = config.tasks.iter().map(|t| &t.targets).filter(|t| **t != Targets::Event).collect();
    match discovery[..] {
        [Targets::Discover(volumes), Targets::Discover(instances), Targets::Discover(images), Targets::Discover(tables), Targets::Discover(scheduled), Targets::Discover(patched)] =>
        {
            assert_eq!(patched.tags.get("Patch").map(String::as_str), Some("weekly"));
            assert_eq!(scheduled.kind, ResourceType::Instance);
            assert_eq!(scheduled.tags.get("Schedule").map(String::as_str), Some("*"), "any value of the tag");
            assert_eq!(tables.kind, ResourceType::DynamoTable);
            assert_eq!(tables.tags.get("Backup").map(String::as_str), Some("nightly"));
            assert_eq!(images.kind, ResourceType::Image);
            assert_eq!(images.tags.get("opsfleet:task").map(String::as_str), Some("nightly-image"));
            assert_eq!(volumes.kind, ResourceType::Volume);
            assert_eq!(volumes.tags.get("Backup").map(String::as_str), Some("nightly"));
            assert_eq!(volumes.regions, ["us-east-1", "us-west-2"]);
            assert_eq!(instances.kind, ResourceType::Instance);
            assert_eq!(instances.state, ["running"]);
        }
        _ => panic!("expected six discovery tasks, got {discovery:?}"),
    }
}

#[test]
fn every_example_event_plans_as_expected() {
    let config = example_config();
    let actions: Vec<(String, String)> = config.tasks.iter().map(|t| (t.name.clone(), t.action.clone())).collect();
    let planner = Planner::new(config);
    for example in example_events() {
        let file = example.file;
        let event = opsfleet_protocol::event::normalize(example.body).unwrap_or_else(|e| panic!("{file}: {e}"));
        let result = planner.plan(&event, 1_715_800_000_000);
        let Some(matched) = example.matched else {
            match result {
                Err(PlanError::AccountNotAllowed { account }) => assert_eq!(account, "210987654321", "{file}"),
                other => panic!("{file}: expected the account to be rejected, got {other:?}"),
            }
            continue;
        };
        let plan = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(plan.matched, matched, "{file}: matched tasks");
        assert_eq!(plan.jobs.len(), example.jobs, "{file}: jobs");
        assert_eq!(plan.discoveries.len(), example.discoveries, "{file}: discoveries");
        for job in &plan.jobs {
            let action = actions.iter().find(|(name, _)| *name == job.task).map(|(_, a)| a.as_str());
            assert_eq!(Some(job.action.as_str()), action, "{file}: the job runs its task's action");
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
