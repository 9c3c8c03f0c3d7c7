//! End to end: `opsfleet worker` processes on the same queues and table, on the fast
//! emulators (fauxqs, DynamoDB Local). Jobs are sent straight to the partitions with a real
//! SQS client; the ledger is read back from DynamoDB.

mod support;

use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Job;
use opsfleet_worker::lease::{lock_key, Leases};
use opsfleet_worker::ledger::Status;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::opsfleet_fast;
use support::process_fleet::{peak_overlap, ProcessFleet};

/// The fleet every test here runs: `FLEET` is the fleet's name.
fn config() -> String {
    let head = r#"
[fleet]
name = "FLEET"
partitions = 2

[limits.three]
max = 3

[worker]
lease_secs = 3
visibility_secs = 4
shutdown_grace_secs = 5
max_in_flight = 16

"#;
    format!(
        "{head}{}",
        tasks(&[
            noop_task("quick", "sleep_ms = 20"),
            noop_task("limited", "sleep_ms = 300").with(r#"limit = "three""#),
            noop_task("long", "sleep_ms = 4000"),
            noop_task("steady", "sleep_ms = 500"),
            noop_task("two-seconds", "sleep_ms = 2000"),
            noop_task("poison", "fail_rate = 1.0"),
            noop_task("slow", "pending_checks = 2, check_after_ms = 1000"),
        ])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_500_jobs_once_each_and_never_share_a_lock() {
    let fleet = ProcessFleet::new("e2e-locks", &config()).await;
    let mut jobs = Vec::new();
    for event in 0..10 {
        for r in 0..50 {
            jobs.push(fleet.job("quick", &format!("ev-{event}"), &format!("i-{r:03}")));
        }
    }
    // Two FIFO groups per resource, so two jobs of one resource compete for its lock at once.
    let parity = |j: &Job| j.event_id.bytes().last().map_or(0, |b| b % 2);
    fleet.send_jobs(&jobs, |j| format!("{}-{}", j.resource.key(), parity(j)), "").await;
    let _a = fleet.worker("a");
    let _b = fleet.worker("b");
    fleet.wait_final(&jobs, Duration::from_secs(300)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
    let mut per_lock: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut owners = std::collections::BTreeSet::new();
    for job in &jobs {
        for a in fleet.attempts(job).await {
            owners.insert(a.owner.split('/').next().unwrap_or_default().to_owned());
            per_lock.entry(job.resource.key()).or_default().push((a.locked_ms, a.released_ms));
        }
    }
    assert_eq!(owners.len(), 2, "both workers ran jobs: {owners:?}");
    for (key, intervals) in &per_lock {
        assert_eq!(peak_overlap(intervals), 1, "two holders of {key} overlapped: {intervals:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_three_never_has_more_than_three_holders() {
    let fleet = ProcessFleet::new("e2e-limit", &config()).await;
    let jobs: Vec<Job> = (0..24).map(|r| fleet.job("limited", "ev", &format!("i-{r}"))).collect();
    fleet.send_jobs(&jobs, |j| j.resource.key(), "").await;
    let _a = fleet.worker("a");
    let _b = fleet.worker("b");
    fleet.wait_final(&jobs, Duration::from_secs(180)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
    let mut intervals = Vec::new();
    for job in &jobs {
        for a in fleet.attempts(job).await {
            intervals.push((a.started_ms, a.released_ms));
        }
    }
    let peak = peak_overlap(&intervals);
    assert!(peak <= 3, "{peak} holders of a limit of 3");
    assert_eq!(peak, 3, "the limit is used up to its maximum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_other_worker_finishes_everything_after_the_lease() {
    let fleet = ProcessFleet::new("e2e-kill", &config()).await;
    let jobs: Vec<Job> = (0..6).map(|r| fleet.job("long", "ev", &format!("i-{r}"))).collect();
    fleet.send_jobs(&jobs, |j| j.resource.key(), "").await;
    let mut a = fleet.worker("a");
    // A first attempt is written to the ledger only with its outcome: the locks say what a runs.
    let table = fleet.backend.store(&opsfleet_protocol::names::table(&fleet.name)).await.expect("table");
    let leases = Leases::new(table);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut started = 0;
        for job in &jobs {
            let holder = leases.holder(&lock_key(&job.resource.key())).await.expect("lock");
            started += usize::from(holder.is_some());
        }
        if started >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "worker a started nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.0.kill().expect("kill -9");
    a.0.wait().expect("reap");
    let _b = fleet.worker("b");
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
    let mut taken_over = 0;
    for job in &jobs {
        let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
        if record.attempts > 1 {
            taken_over += 1;
            assert!(record.fence > 1, "a takeover carries a newer fence");
        }
    }
    assert!(taken_over >= 2, "the killed worker's jobs were taken over ({taken_over})");
    for job in &jobs {
        let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
        let attempts = fleet.attempts(job).await;
        if record.attempts > 1 {
            assert!(
                attempts.iter().any(|a| a.outcome == "LAPSED"),
                "the killed worker's attempt is in the audit trail as lapsed: {attempts:?}"
            );
        }
    }
}

/// Sends SIGTERM to a worker and waits for it: it exits 0 within the 5 s grace (and a margin).
async fn sigterm_exits_0_within_the_grace(worker: &mut std::process::Child) {
    let asked = Instant::now();
    support::terminate(worker);
    let status = loop {
        if let Some(status) = worker.try_wait().expect("wait") {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(asked.elapsed() < Duration::from_secs(5 + 3), "exited {:?} after SIGTERM, grace is 5 s", asked.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_within_the_grace_and_loses_nothing() {
    let fleet = ProcessFleet::new("e2e-term", &config()).await;
    let jobs: Vec<Job> = (0..30).map(|r| fleet.job("steady", "ev", &format!("i-{r}"))).collect();
    fleet.send_jobs(&jobs, |j| j.resource.key(), "").await;
    let mut a = fleet.worker("a");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = fleet.statuses(&jobs).await.values().filter(|s| **s == Some(Status::Succeeded)).count();
        if done >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "worker a finished nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm_exits_0_within_the_grace(&mut a.0).await;
    let _b = fleet.worker("b");
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
}

/// Scale-in: one of two busy workers gets SIGTERM; it exits within the grace and the other
/// finishes what it handed back, each job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_stops_one_worker_within_the_grace_and_the_other_finishes_its_jobs() {
    let fleet = ProcessFleet::new("e2e-scalein", &config()).await;
    // Two-second jobs, 16 at a time per worker: 120 of them take both workers several rounds.
    let jobs: Vec<Job> = (0..120).map(|r| fleet.job("two-seconds", "ev", &format!("i-{r}"))).collect();
    fleet.send_jobs(&jobs, |j| j.resource.key(), "").await;
    let mut a = fleet.worker("a");
    let _b = fleet.worker("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = fleet.statuses(&jobs).await.values().filter(|s| **s != Some(Status::Succeeded)).count();
    assert!(left > 0, "the scale-in comes while work is left");
    sigterm_exits_0_within_the_grace(&mut a.0).await;
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_redelivery_and_completion_checks() {
    let fleet = ProcessFleet::new("e2e-misc", &config()).await;
    let poison = fleet.job("poison", "ev", "i-0");
    let partition = poison.partition;
    let good: Vec<Job> = (1..40)
        .map(|r| fleet.job("quick", "ev", &format!("i-{r}")))
        .filter(|j| j.partition == partition)
        .take(3)
        .collect();
    let slow = fleet.job("slow", "ev", "i-100");
    let mut all = vec![poison.clone(), slow.clone()];
    all.extend(good.iter().cloned());
    fleet.send_jobs(&all, |j| j.resource.key(), "").await;
    let queue = fleet.backend.queue(&format!("{}-jobs-{partition}.fifo", fleet.name)).await.expect("queue");
    let garbage = OutgoingMessage {
        body: "{garbage".into(),
        group_id: Some("g".into()),
        dedup_id: Some("g".into()),
        ..Default::default()
    };
    assert!(queue.send_batch(&[garbage]).await.expect("send").is_empty());
    let _a = fleet.worker("a");
    let _b = fleet.worker("b");
    fleet.wait_final(&all, Duration::from_secs(120)).await;

    // (e) The poison job failed for good and is in the DLQ; its partition kept flowing.
    assert_eq!(fleet.ledger.job(&poison.id).await.expect("ledger").expect("record").status, Status::Failed);
    fleet.assert_succeeded_exactly_once(&good).await;
    let dlq = fleet.backend.queue(&format!("{}-jobs-{partition}-dlq.fifo", fleet.name)).await.expect("dlq");
    // Hand each dead letter back at once, so none blocks a later one of its FIFO group.
    let mut dead: Vec<opsfleet_protocol::ports::ReceivedMessage> = Vec::new();
    for _ in 0..20 {
        for m in dlq.receive(10, Duration::from_secs(1), None).await.expect("receive") {
            dlq.change_visibility(&m.receipt, Duration::ZERO).await.expect("hand back");
            if !dead.iter().any(|d| d.message_id == m.message_id) {
                dead.push(m);
            }
        }
        if dead.len() >= 2 {
            break;
        }
    }
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| (m.body.clone(), m.attributes.get("opsfleet-reason").cloned().unwrap_or_default()))
        .collect();
    assert!(reasons.iter().any(|(b, r)| b.contains(&poison.id) && r == "noop: fail_rate = 1"), "{reasons:?}");
    assert!(reasons.iter().any(|(b, r)| b == "{garbage" && r.starts_with("not a job")), "{reasons:?}");

    // `opsfleet dlq redrive` reopens the failed job and sends it back: it runs again (and fails
    // again, into the DLQ once more, not swallowed by deduplication); the garbage stays.
    let redrive =
        opsfleet_fast(&["dlq", "redrive", "--config", fleet.path.to_str().unwrap_or_default(), "--queue", "jobs"])
            .output()
            .expect("dlq redrive");
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    assert_eq!(String::from_utf8_lossy(&redrive.stdout).lines().count(), 1, "only the job is redriven");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = fleet.ledger.job(&poison.id).await.expect("ledger").expect("record");
        if record.attempts == 2 && record.status == Status::Failed {
            break;
        }
        assert!(Instant::now() < deadline, "the redriven job did not run again: {record:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut again = Vec::new();
    for _ in 0..20 {
        for m in dlq.receive(10, Duration::from_secs(1), None).await.expect("receive") {
            dlq.change_visibility(&m.receipt, Duration::ZERO).await.expect("hand back");
            again.push(m);
        }
        if again.iter().any(|m| m.body.contains(&poison.id)) && again.iter().any(|m| m.body == "{garbage") {
            break;
        }
    }
    assert!(again.iter().any(|m| m.body.contains(&poison.id)), "the job failed into the DLQ again");
    assert!(again.iter().any(|m| m.body == "{garbage"), "the garbage stayed in the DLQ");

    // (g) The pending job completed through the checks queue.
    let record = fleet.ledger.job(&slow.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 2));

    // (f) A finished job delivered again is acknowledged without running.
    fleet.send_jobs(&good[..1], |j| j.resource.key(), "-again").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let depth = queue.depth().await.expect("depth");
        if depth.visible + depth.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the redelivered job stayed queued: {depth:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let record = fleet.ledger.job(&good[0].id).await.expect("ledger").expect("record");
    assert_eq!(record.attempts, 1, "not run again");
    assert_eq!(fleet.attempts(&good[0]).await.len(), 1);
}
