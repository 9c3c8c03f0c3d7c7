//! Approvals with router and worker processes on fauxqs and DynamoDB Local (behind proxies
//! serving AWS's semantics) and SNS on moto: a run of a task with `approve` sends no job to
//! work until it is decided; its notice, published once to the topic, names what will be done
//! to which resources; `opsfleet approve` lets it go ahead and `opsfleet deny` cancels its jobs,
//! each recording the caller's identity; a run nobody approves in time is cancelled with the
//! reason, and its jobs, redriven from the DLQ, run.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::step_job_id;
use opsfleet_protocol::ports::Backend;
use opsfleet_worker::ledger::Status;
use std::time::Duration;
use support::process_fleet::{instances_event, ProcessFleet};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "change"
pattern = { source = ["ops.change"] }
targets = "event"
action = "noop"
params = { sleep_ms = 50, effects_dir = "EFFECTS" }
approve = { topic_arn = "arn:aws:sns:us-east-1:123456789012:FLEET-approvals", timeout_mins = 30 }

[[tasks]]
name = "expiring"
pattern = { source = ["ops.expiring"] }
targets = "event"
action = "noop"
params = { sleep_ms = 50, effects_dir = "EFFECTS" }
approve = { topic_arn = "arn:aws:sns:us-east-1:123456789012:FLEET-approvals", timeout_mins = 1 }

[[tasks]]
name = "staged"
pattern = { source = ["ops.staged"] }
targets = "event"
steps = [
  { name = "before", action = "noop", params = { effects_dir = "EFFECTS" } },
  { name = "go", action = "approve", params = { topic_arn = "arn:aws:sns:us-east-1:123456789012:FLEET-approvals", timeout_mins = 30 } },
  { name = "after", action = "noop", params = { effects_dir = "EFFECTS" } },
]
"#;

/// An SNS topic on moto for the fleet's notices, with a moto SQS queue subscribed to read them.
async fn topic(fleet: &str) -> (aws_sdk_sqs::Client, String) {
    let config = AwsBackend::sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let topic = sns.create_topic().name(format!("{fleet}-approvals")).send().await.expect("topic");
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = sqs.create_queue().queue_name(format!("{fleet}-notices")).send().await.expect("queue");
    let url = queue.queue_url().expect("url").to_owned();
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{fleet}-notices");
    let sub = sns.subscribe().topic_arn(topic.topic_arn().expect("arn")).protocol("sqs").endpoint(arn);
    sub.attributes("RawMessageDelivery", "true").send().await.expect("subscribe");
    (sqs, url)
}

/// Waits until `run`'s approval stands at `decision` (read from the table), then returns what
/// `opsfleet approvals` lists.
async fn listed(fleet: &ProcessFleet, run: &str, decision: &str) -> String {
    let store = fleet.backend.store(&fleet.name).await.expect("table");
    let approvals = opsfleet_protocol::approval::Approvals::new(store);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let now = opsfleet_protocol::Clock::new().now_ms();
        let found = approvals.get(run, true).await.expect("approval");
        if found.is_some_and(|a| a.decision_at(now).as_str() == decision) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "run {run} never stood at {decision}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = fleet.command(&["approvals"], None);
    assert!(out.lines().any(|l| l.starts_with(run) && l.contains(decision)), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_for_its_approval_and_approve_or_deny_decide_it_with_the_callers_identity() {
    let mut fleet = ProcessFleet::new("e2e-approve", CONFIG).await;
    let (sqs, notices) = topic(&fleet.name).await;
    fleet.start("router", None);
    fleet.start("worker", None);
    let jobs = fleet.send(&[instances_event("ok", "ops.change", 3)]).await;
    let run = jobs[0].run_id();
    let out = listed(&fleet, &run, "WAITING").await;
    assert!(out.contains("it will run noop with params"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fleet.effects().is_empty(), "no job ran before the run was approved");

    // The notice: once, naming the run, its resources and how to decide.
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let got = sqs.receive_message().queue_url(&notices).wait_time_seconds(1).send().await.expect("receive");
        bodies.extend(got.messages().iter().filter_map(|m| m.body().map(str::to_owned)));
        if !bodies.is_empty() {
            break;
        }
    }
    assert_eq!(bodies.len(), 1, "one notice: {bodies:?}");
    assert!(bodies[0].contains(&format!("opsfleet approve {run}")), "{}", bodies[0]);
    for job in &jobs {
        assert!(bodies[0].contains(&job.resource.key()), "the notice names {}: {}", job.resource.key(), bodies[0]);
    }

    let out = fleet.command(&["approve", &run], None);
    assert!(out.contains(&format!("run {run} approved by arn:aws:")), "{out}");
    fleet.wait_final(&jobs, Duration::from_secs(60)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
    let audit = fleet.command(&["audit", "--event", "ok"], None);
    assert!(audit.contains("approval: APPROVED by arn:aws:"), "{audit}");

    let denied = fleet.send(&[instances_event("no", "ops.change", 2)]).await;
    let run = denied[0].run_id();
    listed(&fleet, &run, "WAITING").await;
    let out = fleet.command(&["deny", &run], None);
    assert!(out.contains(&format!("run {run} denied by arn:aws:")), "{out}");
    fleet.wait_final(&denied, Duration::from_secs(60)).await;
    for job in &denied {
        let record = fleet.record(job).await.expect("record");
        assert_eq!(record.status, Status::Cancelled);
        assert!(record.error.as_deref().unwrap_or_default().contains("approval denied by arn:aws:"), "{record:?}");
    }
    assert_eq!(fleet.effects().len(), jobs.len(), "the denied run's jobs never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_nobody_approves_in_time_is_cancelled_and_its_redriven_jobs_run() {
    let mut fleet = ProcessFleet::new("e2e-expire", CONFIG).await;
    let _notices = topic(&fleet.name).await;
    fleet.start("router", None);
    fleet.start("worker", None);
    let jobs = fleet.send(&[instances_event("late", "ops.expiring", 2)]).await;
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    for job in &jobs {
        let record = fleet.record(job).await.expect("record");
        assert_eq!(record.status, Status::Cancelled);
        assert!(record.error.as_deref().unwrap_or_default().contains("approval timed out"), "{record:?}");
    }
    assert!(fleet.effects().is_empty());
    listed(&fleet, &jobs[0].run_id(), "TIMED_OUT").await;

    let redriven = fleet.command(&["dlq", "redrive", "--queue", "jobs"], None);
    assert_eq!(redriven.lines().filter(|l| l.starts_with("redriven:")).count(), jobs.len(), "{redriven}");
    for _ in 0..120 {
        let statuses = fleet.statuses(&jobs).await;
        if statuses.values().all(|s| *s == Some(Status::Succeeded)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fleet.assert_succeeded_exactly_once(&jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runbooks_approval_step_holds_the_steps_after_it_until_approved() {
    let mut fleet = ProcessFleet::new("e2e-step-approve", CONFIG).await;
    let _notices = topic(&fleet.name).await;
    fleet.start("router", None);
    fleet.start("worker", None);
    let jobs = fleet.send(&[instances_event("staged", "ops.staged", 2)]).await;
    let gate = format!("{}.go", jobs[0].run_id());
    listed(&fleet, &gate, "WAITING").await;
    let ran = |step: &str| {
        let ids: Vec<String> = jobs.iter().map(|j| step_job_id(&j.id, step)).collect();
        fleet.effects().iter().filter(|e| ids.iter().any(|id| e["job"] == id.as_str())).count()
    };
    // Both resources reach the approval step: the step before it ran, the one after did not.
    for _ in 0..100 {
        if ran("before") == jobs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((ran("before"), ran("after")), (jobs.len(), 0));
    for job in &jobs {
        assert_eq!(fleet.record(job).await.map(|r| r.status), Some(Status::Pending), "it waits holding no worker");
    }
    let out = fleet.command(&["approve", &gate], None);
    assert!(out.contains("approved by arn:aws:"), "{out}");
    fleet.wait_final(&jobs, Duration::from_secs(60)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
    assert_eq!(ran("after"), jobs.len());
    let summary = fleet.record(&jobs[0]).await.and_then(|r| r.summary).unwrap_or_default();
    assert!(summary.contains("go: approved"), "{summary}");
}
