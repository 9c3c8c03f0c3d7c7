//! End to end with a runbook: stop → snapshot → tag → start on one instance, on moto with EC2
//! behind the realism layer, its worker killed with SIGKILL while the snapshot step waits for
//! its snapshots. Another worker resumes at the recorded step: no finished step runs again
//! (one StopInstances, one CreateSnapshots), each volume has exactly one snapshot, the instance
//! ends running with the snapshot ids of the earlier step in its tag, and the job succeeds
//! with every step's outcome.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::job::step_job_id;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::{Clock, Planner};
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::ledger::{Ledger, Status};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::action_fleet::{set_up, SetUp};
use support::{opsfleet, python_client, root, ChildGuard};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "patch-window"
pattern = { source = ["ops.maintenance"], "detail-type" = ["Maintenance Window"] }
targets = "event"
steps = [
  { name = "stop", action = "instance-power", params = { operation = "stop", check_after_secs = 1 } },
  { name = "snapshot", action = "ebs-snapshot", params = { check_after_secs = 4 } },
  { name = "record", action = "tag", params = { add = { LastSnapshots = "{steps.snapshot.ids}" } } },
  { name = "start", action = "instance-power", params = { operation = "start", check_after_secs = 1 } },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runbook_killed_mid_run_resumes_at_its_recorded_step_and_runs_no_step_twice() {
    // AWS's eventual consistency and pending snapshots, without the random failures that
    // would make a retried call look like a step run again.
    let plan = Ec2Plan { server_errors: 0.0, no_capacity: 0.0, throttle: None, ..Ec2Plan::aws() };
    let SetUp { fleet, path, config, layer, ec2, .. } = set_up("e2e-runbook", CONFIG, plan).await;
    let run = ec2.run_instances().image_id("ami-03cf127a").min_count(1).max_count(1).send().await.expect("instance");
    let instance = run.instances()[0].instance_id().expect("id").to_owned();
    let data = ec2.create_volume().availability_zone("us-east-1a").size(4).send().await.expect("volume");
    let data = data.volume_id().expect("id").to_owned();
    ec2.attach_volume().volume_id(&data).instance_id(&instance).device("/dev/sdf").send().await.expect("attach");
    layer.settle().await;

    let log =
        |name: &str| std::fs::File::create(root().join("target/e2e").join(format!("{fleet}-{name}.log"))).expect("log");
    let spawn = |role: &str, name: &str| {
        ChildGuard(
            opsfleet(&[role, "--config", path.to_str().unwrap_or_default()])
                .env("AWS_ENDPOINT_URL", &layer.url)
                .stdout(log(&format!("{name}-out")))
                .stderr(log(name))
                .spawn()
                .expect(role),
        )
    };
    let _router = spawn("router", "router");
    let mut first = spawn("worker", "worker-a");
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-window"), "detail-type": "Maintenance Window",
        "source": "ops.maintenance", "account": "123456789012", "time": "2026-12-05T02:00:00Z",
        "region": "us-east-1", "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": {}
    });
    let file = root().join("target/e2e").join(format!("{fleet}-event.json"));
    std::fs::write(&file, event.to_string()).expect("event file");
    let sent = python_client(&["send-files", &format!("{fleet}-events"), file.to_str().unwrap_or_default()]).status();
    assert!(sent.expect("send").success());
    let plan = Planner::new(config).plan(&normalize(&event.to_string()).expect("event"), 0).expect("plan");
    let job = plan.jobs[0].id.clone();

    let backend = AwsBackend::from_env().await;
    let ledger = Ledger::new(backend.store(&fleet).await.expect("table"), Clock::new(), Duration::from_secs(3600));
    // Kill the worker once the ledger records the snapshot step under way (the stop finished).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let record = ledger.job(&job).await.expect("ledger");
        let state: Option<Value> = record
            .as_ref()
            .and_then(|r| r.attrs.get("state"))
            .and_then(|s| s.as_str())
            .and_then(|s| serde_json::from_str(s).ok());
        if state.as_ref().is_some_and(|s| s["at"] == 1 && s["started"] == true) {
            break;
        }
        assert!(record.as_ref().is_none_or(|r| !r.status.is_final()), "finished before the kill: {record:?}");
        assert!(Instant::now() < deadline, "the snapshot step never began: {record:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.0.kill().expect("kill -9");
    first.0.wait().expect("reap");
    let _second = spawn("worker", "worker-b");

    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        let record = ledger.job(&job).await.expect("ledger");
        if let Some(record) = record.as_ref().filter(|r| r.status.is_final()) {
            break record.clone();
        }
        assert!(Instant::now() < deadline, "the runbook did not finish: {record:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let summary = record.summary.clone().unwrap_or_default();
    for step in ["stop: ", "snapshot: ", "record: ", "start: "] {
        assert!(summary.contains(step), "every step's outcome is in the summary: {summary}");
    }

    let calls = layer.calls();
    assert_eq!(calls.get("StopInstances"), Some(&1), "the finished stop step never ran again: {calls:?}");
    assert_eq!(calls.get("CreateSnapshots"), Some(&1), "the snapshot step resumed at its check: {calls:?}");
    layer.settle().await;
    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:opsfleet:job")
                .values(step_job_id(&job, "snapshot"))
                .build(),
        )
        .send()
        .await
        .expect("snapshots");
    let mut volumes: Vec<&str> = snapshots.snapshots().iter().filter_map(|s| s.volume_id()).collect();
    volumes.sort_unstable();
    assert_eq!(volumes.len(), 2, "one snapshot per volume: {volumes:?}");
    volumes.dedup();
    assert_eq!(volumes.len(), 2, "one snapshot per volume: {volumes:?}");
    let described = ec2.describe_instances().instance_ids(&instance).send().await.expect("describe");
    let described = &described.reservations()[0].instances()[0];
    assert_eq!(described.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("running"));
    let tag = described.tags().iter().find(|t| t.key() == Some("LastSnapshots")).and_then(|t| t.value()).unwrap_or("");
    for snapshot in snapshots.snapshots() {
        assert!(tag.contains(snapshot.snapshot_id().unwrap_or("?")), "the tag step read the snapshot ids: {tag}");
    }
}
