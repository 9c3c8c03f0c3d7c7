//! The fault-injection suite: a router and three workers as real processes on the fast
//! emulators (fauxqs, DynamoDB Local), at default settings, each emulator behind a loopback
//! fault proxy that also serves what AWS does and the emulators do not (reads a second stale,
//! replies lost after writes applied, standard-queue messages delivered twice:
//! `FaultPlan::aws()`, on in every scenario), with `noop` actions that record every effect. Each scenario prints one line of
//! figures (kept in RELIABILITY.md) and asserts: no job lost, no effect twice, no process
//! crashed, dead letters only where expected, every job final in the ledger.
//!
//! Scenarios run one at a time (they share two cores with the emulators), except the long
//! wait behind a full limit, which mostly sleeps.

mod support;

use rand::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::fault_proxy::FaultPlan;
use support::process_fleet::{alarms, peak_overlap, stopped, ProcessFleet};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Default settings; shared locks (one per region), a limit of 3 with `max_concurrency`, and
/// a task whose jobs wait for completion checks.
const CONFIG: &str = r#"
[fleet]
name = "FLEET"
allowed_accounts = ["123456789012"]

[limits.shared]
max = 3

[[tasks]]
name = "by-region"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
params = { sleep_ms = 20, effects_dir = "EFFECTS" }
lock = "{region}"

[[tasks]]
name = "limited"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
params = { sleep_ms = 20, effects_dir = "EFFECTS" }
limit = "shared"
max_concurrency = 4

[[tasks]]
name = "pending"
pattern = { "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"
params = { pending_checks = 2, check_after_ms = 3000, effects_dir = "EFFECTS" }
"#;

const DRAIN: Duration = Duration::from_secs(900);

async fn fleet(prefix: &str, workers: usize) -> ProcessFleet {
    let mut fleet = ProcessFleet::new(prefix, CONFIG).await;
    fleet.start("router", None);
    for _ in 0..workers {
        fleet.start("worker", None);
    }
    fleet
}

/// Asserts that the lock of each region had one holder at a time and the limit at most three,
/// from the effects' own times.
fn assert_locks_and_limits_held(fleet: &ProcessFleet) {
    let mut per_region: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut limited = Vec::new();
    for effect in fleet.effects() {
        let interval = (effect["began_ms"].as_u64().unwrap_or(0), effect["ended_ms"].as_u64().unwrap_or(0));
        let resource = effect["resource"].as_str().unwrap_or_default();
        let region = resource.split('/').nth(1).unwrap_or_default().to_owned();
        match effect["task"].as_str() {
            Some("by-region") => per_region.entry(region).or_default().push(interval),
            Some("limited") => limited.push(interval),
            _ => {}
        }
    }
    for (region, intervals) in &per_region {
        assert_eq!(peak_overlap(intervals), 1, "two holders of the {region} lock at once");
    }
    assert!(peak_overlap(&limited) <= 3, "more than 3 holders of a limit of 3: {}", peak_overlap(&limited));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_random_workers_every_few_seconds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet("fault-kill", 3).await;
    let since = Instant::now();
    let jobs = fleet.send(&alarms("kill", 100, 5)).await;
    assert_eq!(jobs.len(), 1000);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let workers = fleet.live_workers();
        let victim = workers[rand::thread_rng().gen_range(0..workers.len())];
        fleet.kill(victim);
        fleet.start("worker", None);
    }
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let kills = fleet.kills;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good("kill -9", &format!("{kills} workers killed with SIGKILL and restarted"));
    assert_locks_and_limits_held(&fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_errors_throttling_and_resets_on_the_wire() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The faults start before the processes do: start-up meets them too.
    let mut fleet = ProcessFleet::new("fault-wire", CONFIG).await;
    let plan = FaultPlan {
        latency: 0.10,
        server_error: 0.03,
        throttle: 0.03,
        reset_before: 0.02,
        reset_after: 0.02,
        ..FaultPlan::aws()
    };
    fleet.sqs.set(plan.clone());
    fleet.dynamodb.set(plan);
    fleet.start("router", None);
    for _ in 0..3 {
        fleet.start("worker", None);
    }
    let since = Instant::now();
    let jobs = fleet.send(&alarms("wire", 60, 5)).await;
    tokio::time::sleep(Duration::from_secs(45)).await;
    fleet.sqs.set(FaultPlan::aws());
    fleet.dynamodb.set(FaultPlan::aws());
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let faults = format!("{:?} on SQS and {:?} on DynamoDB in 45 s", fleet.sqs.injected(), fleet.dynamodb.injected());
    assert!(fleet.sqs.total() > 0 && fleet.dynamodb.total() > 0, "{faults}");
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good("faults on the wire", &faults);
    assert_locks_and_limits_held(&fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_emulators_unreachable_for_ten_seconds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet("fault-down", 3).await;
    let since = Instant::now();
    let jobs = fleet.send(&alarms("down", 40, 5)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = FaultPlan { down: true, ..FaultPlan::aws() };
    fleet.sqs.set(down.clone());
    fleet.dynamodb.set(down);
    tokio::time::sleep(Duration::from_secs(10)).await;
    fleet.sqs.set(FaultPlan::aws());
    fleet.dynamodb.set(FaultPlan::aws());
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let refused = fleet.sqs.total() + fleet.dynamodb.total();
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good("both emulators unreachable", &format!("10 s down, {refused} connections refused"));
    assert_locks_and_limits_held(&fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_every_worker_while_checks_are_pending_then_new_workers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet("fault-term", 3).await;
    let since = Instant::now();
    let mut events: Vec<String> =
        (0..30).map(|i| stopped(&format!("term-{i}"), "us-east-1", &format!("i-{i:08x}"))).collect();
    events.extend(alarms("term", 20, 5));
    let jobs = fleet.send(&events).await;
    let pending: Vec<_> = jobs.iter().filter(|j| j.task == "pending").cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let statuses = fleet.statuses(&pending).await;
        let waiting = statuses.values().filter(|s| **s == Some(opsfleet_worker::ledger::Status::Pending)).count();
        if waiting >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never went pending: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let workers = fleet.live_workers();
    let took = fleet.terminate(&workers).await;
    assert!(took < Duration::from_secs(25 + 5), "the workers took {took:?} to stop, over the 25 s grace");
    for _ in 0..3 {
        fleet.start("worker", None);
    }
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good(
        "SIGTERM while checks pend",
        &format!("3 workers stopped in {:.1} s, 3 new ones", took.as_secs_f64()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_whose_clocks_disagree_by_more_than_a_lease() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = ProcessFleet::new("fault-skew", CONFIG).await;
    fleet.start("router", None);
    // Test-only: each worker's wall clock is shifted by two minutes, twice the 60 s lease.
    for offset in [-120_000, 0, 120_000] {
        fleet.start("worker", Some(offset));
    }
    let since = Instant::now();
    let jobs = fleet.send(&alarms("skew", 40, 5)).await;
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good("skewed clocks", "wall clocks at -120 s, 0, +120 s");
    assert_locks_and_limits_held(&fleet);
}

/// A limit of one held for ten minutes by a job that waits for its completion checks, and
/// jobs queued behind it. Default settings, except that three receives would dead-letter a job
/// that waited by going back to its queue.
const WAIT_CONFIG: &str = r#"
[fleet]
name = "FLEET"

[limits.one]
max = 1

[worker]
max_receive_count = 3

[[tasks]]
name = "hold"
pattern = { "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"
params = { pending_checks = 10, check_after_ms = 60000, effects_dir = "EFFECTS" }
limit = "one"

[[tasks]]
name = "behind"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
params = { effects_dir = "EFFECTS" }
limit = "one"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_ten_minutes_behind_a_full_limit_without_spending_receives() {
    let mut fleet = ProcessFleet::new("fault-wait", WAIT_CONFIG).await;
    fleet.start("router", None);
    for _ in 0..3 {
        fleet.start("worker", None);
    }
    let since = Instant::now();
    let holder = fleet.send(&[stopped("wait-hold", "us-east-1", "i-0000000a")]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.record(&holder[0]).await.map(|r| r.status) != Some(opsfleet_worker::ledger::Status::Pending) {
        assert!(Instant::now() < deadline, "the holder never went pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let behind = fleet.send(&alarms("wait", 1, 5)).await;
    let mut jobs = holder.clone();
    jobs.extend(behind.iter().cloned());
    let drained = fleet.drain(&jobs, since, Duration::from_secs(900)).await;
    for job in &behind {
        let record = fleet.record(job).await.expect("record");
        assert_eq!(record.attempts, 1, "a waiting job went back to its queue: {record:?}");
    }
    let held = fleet.record(&holder[0]).await.expect("record");
    let held_ms = held.attrs.get("finished_ms").and_then(|v| v.as_i64()).unwrap_or(0)
        - held.attrs.get("started_ms").and_then(|v| v.as_i64()).unwrap_or(0);
    assert!(held_ms >= 600_000, "the limit was held for {held_ms} ms");
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good(
        "waiting behind a full limit",
        &format!("{} jobs waited {:.0} s at max_receive_count = 3", behind.len(), held_ms as f64 / 1000.0),
    );
}

/// The old config of a rolling deploy: it lacks the task the router already routes.
const BEFORE_DEPLOY: &str = r#"
[fleet]
name = "FLEET"

[[tasks]]
name = "by-region"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
params = { sleep_ms = 20, effects_dir = "EFFECTS" }
lock = "{region}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_during_a_deploy_keeps_every_dead_letter_and_runs_after_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = ProcessFleet::new("fault-deploy", CONFIG).await;
    let old = fleet.config_version("before", BEFORE_DEPLOY);
    fleet.start("router", None);
    let old_worker = fleet.start_with("worker", None, &old);
    let since = Instant::now();
    let jobs = fleet.send(&alarms("deploy", 2, 3)).await;
    let limited: Vec<_> = jobs.iter().filter(|j| j.task == "limited").cloned().collect();
    // The old worker runs what it knows and dead-letters the rest, twice: once when routed,
    // once more after a redrive within the five minutes of FIFO deduplication.
    for round in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let dead = loop {
            let dead = fleet.dead_letters().await;
            if dead >= limited.len() {
                break dead;
            }
            assert!(Instant::now() < deadline, "round {round}: {dead} of {} dead-lettered", limited.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(dead, limited.len(), "round {round}: every dead-lettering is kept");
        if round == 1 {
            let redriven = fleet.command(&["dlq", "redrive", "--queue", "jobs"], None);
            assert_eq!(redriven.lines().count(), limited.len(), "{redriven}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // The new worker replaces the old one; a redrive runs them.
    fleet.terminate(&[old_worker]).await;
    fleet.start("worker", None);
    let redriven = fleet.command(&["dlq", "redrive", "--queue", "jobs"], None);
    assert_eq!(redriven.lines().count(), limited.len(), "{redriven}");
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good(
        "redrive during a deploy",
        &format!("{} jobs dead-lettered twice by an old worker, then redriven", limited.len()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_invalid_ids_go_to_the_events_dlq_with_their_reasons() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet("fault-ids", 1).await;
    let bad = [
        stopped("ids-space", "us-east-1", "i-0123 4567"),
        stopped("ids-long", "us-east-1", &format!("i-{}", "0".repeat(300))),
        stopped("ids-path", "us-east-1", "i-1/../../lock#x"),
        stopped("ids-region", "us east 1", "i-01234567"),
        support::process_fleet::alarm("ids-type", "us-east-1", &["vol-01234567".to_owned()]),
    ];
    let since = Instant::now();
    let mut events: Vec<String> = bad.to_vec();
    events.extend(alarms("ids-good", 4, 5));
    let jobs = fleet.send(&events).await;
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    // A standard queue may deliver an event twice, and each delivery of a bad one is
    // dead-lettered: every bad event is there, and nothing else.
    let dead = fleet.dead_letters_of("events").await;
    let bodies: std::collections::BTreeSet<&String> = dead.iter().map(|(body, _)| body).collect();
    assert_eq!(bodies.len(), bad.len(), "{dead:?}");
    for (body, reason) in &dead {
        assert!(!reason.is_empty() && reason.len() < 400, "a one-line reason: {reason}");
        assert!(bad.contains(body), "only the bad events: {body}");
    }
    let report = fleet.finish(&jobs, drained).await;
    println!("{}", report.line("forged and invalid ids", &format!("{} bad events among {}", bad.len(), events.len())));
    report.assert_clean("forged and invalid ids");
    assert_eq!(report.dead_letters, dead.len(), "{report:?}");
}

/// Jobs that wait for two completion checks of five seconds each, and a load beside them.
/// Checks are claimed for the task's timeout and a lease (here 20 s + 10 s).
const CHECKS_CONFIG: &str = r#"
[fleet]
name = "FLEET"

[worker]
lease_secs = 10

[[tasks]]
name = "by-region"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
params = { sleep_ms = 20, effects_dir = "EFFECTS" }
lock = "{region}"

[[tasks]]
name = "pending"
pattern = { "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"
params = { pending_checks = 4, check_after_ms = 2000, check_sleep_ms = 5000, effects_dir = "EFFECTS" }
timeout_secs = 20
"#;

/// Waits until at least `n` of `jobs` are pending.
async fn until_pending(fleet: &ProcessFleet, jobs: &[opsfleet_protocol::Job], n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let statuses = fleet.statuses(jobs).await;
        let waiting = statuses.values().filter(|s| **s == Some(opsfleet_worker::ledger::Status::Pending)).count();
        if waiting >= n {
            return waiting;
        }
        assert!(Instant::now() < deadline, "jobs never went pending: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_dead_lettered_after_their_workers_died_mid_check_are_redriven_during_load() {
    use opsfleet_protocol::ports::{Backend, OutgoingMessage};
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = ProcessFleet::new("fault-checks", CHECKS_CONFIG).await;
    fleet.start("router", None);
    for _ in 0..3 {
        fleet.start("worker", None);
    }
    let since = Instant::now();
    let events: Vec<String> =
        (0..20).map(|i| stopped(&format!("chk-{i}"), "us-east-1", &format!("i-{i:08x}"))).collect();
    let mut jobs = fleet.send(&events).await;
    let pending = until_pending(&fleet, &jobs, 20).await;
    // Every job is pending, for four checks of 2 s wait and 5 s run each, so the jobs the
    // workers started over a few seconds are pending together: kill -9 every worker mid-check.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for worker in fleet.live_workers() {
        fleet.kill(worker);
    }
    // SQS would move them to the checks DLQ after their receives ran out: do it at once.
    let checks = fleet.backend.queue(&format!("{}-checks", fleet.name)).await.expect("checks");
    let dlq = fleet.backend.queue(&format!("{}-checks-dlq", fleet.name)).await.expect("checks dlq");
    let mut moved = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while moved < pending {
        assert!(Instant::now() < deadline, "{moved} of {pending} checks came back");
        for m in checks.receive(10, Duration::from_secs(2), None).await.expect("receive") {
            dlq.send_one(OutgoingMessage { body: m.body.clone(), ..Default::default() }).await.expect("dead-letter");
            checks.delete_batch(std::slice::from_ref(&m.receipt)).await.expect("delete");
            moved += 1;
        }
    }
    // New workers, a load beside them, and the operator redrives the checks.
    for _ in 0..3 {
        fleet.start("worker", None);
    }
    jobs.extend(fleet.send(&alarms("chk-load", 40, 5)).await);
    // A worker killed between sending a job's next check and deleting the one it ran leaves
    // two checks of that job: every check dead-lettered comes back, duplicates included.
    let redriven = fleet.command(&["dlq", "redrive", "--queue", "checks"], None);
    assert_eq!(redriven.lines().count(), moved, "{redriven}");
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good(
        "checks DLQ redrive",
        &format!("{pending} checks dead-lettered after their workers died mid-check, redriven during load"),
    );
}

/// The next release renames the `pending` task.
fn renamed() -> String {
    let renamed = CONFIG.replace("name = \"pending\"", "name = \"pending-renamed\"");
    assert_ne!(renamed, CONFIG, "the task is renamed");
    renamed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_renames_a_task_with_checks_pending_then_rolls_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet("fault-rename", 3).await;
    let renamed = fleet.config_version("renamed", &renamed());
    let since = Instant::now();
    let mut events: Vec<String> =
        (0..20).map(|i| stopped(&format!("ren-{i}"), "us-east-1", &format!("i-{i:08x}"))).collect();
    events.extend(alarms("ren", 10, 5));
    let jobs = fleet.send(&events).await;
    let pending: Vec<_> = jobs.iter().filter(|j| j.task == "pending").cloned().collect();
    until_pending(&fleet, &pending, 10).await;
    // Every job of the task must have begun under the first release: a job message the renamed
    // release meets before its job began names a task it does not know, and goes to its DLQ
    // without a record (the rename's other case, not this test's).
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.statuses(&pending).await.values().any(Option::is_none) {
        assert!(Instant::now() < deadline, "jobs never began: {:?}", fleet.statuses(&pending).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The release that renamed the task replaces every worker: the checks of the jobs still
    // pending find no task, and each job fails in the ledger and goes to its DLQ.
    let workers = fleet.live_workers();
    fleet.terminate(&workers).await;
    for _ in 0..2 {
        fleet.start_with("worker", None, &renamed);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let failed = loop {
        let statuses = fleet.statuses(&pending).await;
        if statuses.values().all(|s| s.is_some_and(opsfleet_worker::ledger::Status::is_final)) {
            break statuses.values().filter(|s| **s == Some(opsfleet_worker::ledger::Status::Failed)).count();
        }
        assert!(Instant::now() < deadline, "pending jobs never ended under the renamed task: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(failed > 0, "some checks met the renamed task");
    let mut dead = Vec::new();
    for queue in ["events", "checks", "0", "1", "2", "3"] {
        dead.extend(fleet.dead_letters_of(queue).await.into_iter().map(|(body, reason)| (queue, body, reason)));
    }
    assert_eq!(dead.len(), failed, "every failed job is in its DLQ once: {dead:#?}");
    // The rollback: workers of the first release again, and a redrive runs them.
    let workers = fleet.live_workers();
    fleet.terminate(&workers).await;
    for _ in 0..2 {
        fleet.start("worker", None);
    }
    let redriven = fleet.command(&["dlq", "redrive", "--queue", "jobs"], None);
    assert_eq!(redriven.lines().count(), failed, "{redriven}");
    let drained = fleet.drain(&jobs, since, DRAIN).await;
    let report = fleet.finish(&jobs, drained).await;
    report.assert_all_good(
        "a deploy renames a task with checks pending",
        &format!("{failed} pending jobs failed under the rename, redriven after the rollback"),
    );
}
