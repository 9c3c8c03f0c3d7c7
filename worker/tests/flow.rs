//! The worker on the embedded backend: exactly-once effect, redelivery, poison jobs,
//! retries, completion checks, limits, `max_errors`, and graceful shutdown.

use opsfleet_backend::{setup::setup, EmbeddedBackend};
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::{Config, Job, Resource, ResourceType};
use opsfleet_worker::clock::Clock;
use opsfleet_worker::lease::{lock_key, Acquire, Leases};
use opsfleet_worker::ledger::{Ledger, Status};
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BASE: &str = r#"
[fleet]
name = "w"
partitions = 2

[limits.two]
max = 2

[worker]
lease_secs = 5
visibility_secs = 10
shutdown_grace_secs = 5
"#;

struct Fleet {
    backend: Arc<EmbeddedBackend>,
    config: Arc<Config>,
    ledger: Ledger,
}

impl Fleet {
    async fn new(tasks: &str) -> Self {
        Self::with(&format!("{BASE}{tasks}")).await
    }

    async fn with(text: &str) -> Self {
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        let backend = Arc::new(EmbeddedBackend::new());
        setup(backend.as_ref(), &config).await.expect("setup");
        let store = backend.store("w").await.expect("store");
        Fleet { backend, config: Arc::new(config), ledger: Ledger::new(store, Clock::new(), Duration::from_secs(3600)) }
    }

    fn job(&self, task: &str, event: &str, instance: &str) -> Job {
        let resource = Resource {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            kind: ResourceType::Instance,
            id: instance.into(),
        };
        let t = self.config.task(task).expect("task");
        let origin = JobOrigin {
            event_id: event,
            event_time: None,
            received_ms: Clock::new().now_ms(),
            task,
            action: &t.action,
            params: &t.params,
        };
        Job::new(origin, resource, self.config.fleet.partitions.get())
    }

    async fn send(&self, job: &Job, dedup: &str) {
        self.send_in_group(job, &job.id, dedup).await;
    }

    async fn send_in_group(&self, job: &Job, group: &str, dedup: &str) {
        let queue = self.backend.queue(&names::jobs_queue("w", job.partition)).await.expect("queue");
        let message = OutgoingMessage {
            body: job.to_json().expect("json"),
            group_id: Some(group.into()),
            dedup_id: Some(dedup.into()),
            ..Default::default()
        };
        assert!(queue.send_batch(&[message]).await.expect("send").is_empty());
    }

    /// Starts a worker; returns its shutdown token and handle.
    async fn start(&self, max_in_flight: Option<u32>) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        let mut config = self.config.as_ref().clone();
        if let Some(n) = max_in_flight {
            config.worker.max_in_flight = n.try_into().expect("non-zero");
        }
        let config = Arc::new(config);
        let hard_stop = CancellationToken::new();
        let worker = Worker::open(
            self.backend.as_ref(),
            Arc::clone(&config),
            ActionRegistry::builtin(),
            "test".into(),
            false,
            hard_stop.clone(),
        )
        .await
        .expect("worker");
        let consumer = Consumer::open(self.backend.as_ref(), Arc::new(worker), &config)
            .await
            .expect("consumer")
            .with_long_poll(Duration::from_millis(20));
        let shutdown = CancellationToken::new();
        (shutdown.clone(), tokio::spawn(consumer.run(shutdown, hard_stop)))
    }

    async fn wait_final(&self, jobs: &[Job], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut open = Vec::new();
            for job in jobs {
                if !self.ledger.job(&job.id).await.expect("ledger").is_some_and(|r| r.status.is_final()) {
                    open.push(job.id.clone());
                }
            }
            if open.is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "jobs not finished in time: {open:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a worker until every job is final, then stops it.
    async fn run_until_final(&self, jobs: &[Job], max_in_flight: Option<u32>, within: Duration) {
        let (stop, handle) = self.start(max_in_flight).await;
        self.wait_final(jobs, within).await;
        stop.cancel();
        handle.await.expect("worker");
    }

    async fn status(&self, job: &Job) -> Status {
        self.ledger.job(&job.id).await.expect("ledger").expect("record").status
    }

    fn dead_letters(&self, partition: u32) -> Vec<(String, String)> {
        let q = self.backend.embedded_queue(&names::jobs_dlq("w", partition)).expect("dlq");
        q.peek_bodies()
            .into_iter()
            .zip(q.peek_attributes())
            .map(|(b, a)| (b, a.get(names::REASON_ATTRIBUTE).cloned().unwrap_or_default()))
            .collect()
    }
}

const NOOP: &str = r#"
[[tasks]]
name = "quick"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 10 }
"#;

#[tokio::test]
async fn a_job_succeeds_once_and_its_redelivery_is_acknowledged_without_running() {
    let fleet = Fleet::new(NOOP).await;
    let job = fleet.job("quick", "e1", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    fleet.send(&job, "second").await;
    let queue = fleet.backend.embedded_queue(&names::jobs_queue("w", job.partition)).expect("queue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !queue.peek_bodies().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the redelivered job was not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 1));
    let attempts = fleet.ledger.attempts(&job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "SUCCEEDED");
    assert_eq!(fleet.ledger.run(&job.run_id()).await.expect("run").succeeded, 1);
}

#[tokio::test]
async fn a_poison_job_fails_into_the_dlq_without_blocking_its_partition() {
    let fleet = Fleet::new(&format!(
        "{NOOP}{}",
        r#"
[[tasks]]
name = "poison"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_rate = 1.0 }
"#
    ))
    .await;
    let poison = fleet.job("poison", "e1", "i-1");
    let partition = poison.partition;
    let good: Vec<Job> = (0..40)
        .map(|i| fleet.job("quick", "e1", &format!("i-{i}")))
        .filter(|j| j.partition == partition)
        .take(3)
        .collect();
    fleet.send(&poison, "p").await;
    for job in &good {
        fleet.send(job, &job.id).await;
    }
    let queue = fleet.backend.queue(&names::jobs_queue("w", partition)).await.expect("queue");
    queue
        .send_batch(&[OutgoingMessage {
            body: "garbage".into(),
            group_id: Some("g".into()),
            dedup_id: Some("g".into()),
            ..Default::default()
        }])
        .await
        .expect("send");
    let (stop, handle) = fleet.start(None).await;
    let mut all = good.clone();
    all.push(poison.clone());
    fleet.wait_final(&all, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    handle.await.expect("worker");
    assert_eq!(fleet.status(&poison).await, Status::Failed);
    for job in &good {
        assert_eq!(fleet.status(job).await, Status::Succeeded);
    }
    let dead = fleet.dead_letters(partition);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|(body, reason)| body.contains(&poison.id) && reason == "noop: fail_rate = 1"), "{dead:?}");
    assert!(dead.iter().any(|(body, reason)| body == "garbage" && reason.starts_with("not a job")), "{dead:?}");
    assert_eq!(fleet.ledger.run(&poison.run_id()).await.expect("run").failed, 1);
}

#[tokio::test]
async fn retryable_failures_retry_within_the_budget_and_fail_beyond_it() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "flaky"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_attempts = 1 }
retries = 1

[[tasks]]
name = "broken"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_attempts = 5 }
retries = 1
"#,
    )
    .await;
    let flaky = fleet.job("flaky", "e", "i-1");
    let broken = fleet.job("broken", "e", "i-2");
    fleet.send(&flaky, "f").await;
    fleet.send(&broken, "b").await;
    fleet.run_until_final(&[flaky.clone(), broken.clone()], None, Duration::from_secs(20)).await;
    let outcomes =
        |attempts: Vec<opsfleet_worker::ledger::Attempt>| attempts.into_iter().map(|a| a.outcome).collect::<Vec<_>>();
    assert_eq!(fleet.status(&flaky).await, Status::Succeeded);
    assert_eq!(outcomes(fleet.ledger.attempts(&flaky.id).await.expect("a")), ["RETRY", "SUCCEEDED"]);
    assert_eq!(fleet.status(&broken).await, Status::Failed);
    assert_eq!(outcomes(fleet.ledger.attempts(&broken.id).await.expect("a")), ["RETRY", "FAILED"]);
    let record = fleet.ledger.job(&broken.id).await.expect("ledger").expect("record");
    assert!(record.error.as_deref().is_some_and(|e| e.contains("over retries = 1")), "{record:?}");
}

#[tokio::test]
async fn a_pending_job_completes_through_the_checks_queue_holding_its_lock() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "slow"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { pending_checks = 2, check_after_ms = 1000 }
"#,
    )
    .await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "s").await;
    let (stop, handle) = fleet.start(None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.status(&job).await, Status::Pending);
    let store = fleet.backend.store("w").await.expect("store");
    let lock = store
        .get(&opsfleet_protocol::ports::Key::new(format!("lock#{}", job.resource.key()), "lease"))
        .await
        .expect("get")
        .expect("lock item");
    assert!(lock.str("owner").is_some(), "the lock is held while the job waits");
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 2));
}

#[tokio::test]
async fn a_limit_bounds_concurrent_holders() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "limited"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 150 }
limit = "two"
"#,
    )
    .await;
    let jobs: Vec<Job> = (0..8).map(|i| fleet.job("limited", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, None, Duration::from_secs(30)).await;
    let mut intervals = Vec::new();
    for job in &jobs {
        for a in fleet.ledger.attempts(&job.id).await.expect("attempts") {
            intervals.push((a.started_ms, a.released_ms));
        }
    }
    assert_eq!(intervals.len(), 8);
    let peak = peak_overlap(&intervals);
    assert!(peak <= 2, "{peak} holders at once: {intervals:?}");
    assert_eq!(peak, 2, "the limit is used up to its maximum");
}

/// The largest number of intervals that overlap at one instant.
fn peak_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[tokio::test]
async fn a_run_past_max_errors_cancels_its_remaining_jobs() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "doomed"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_rate = 1.0 }
max_errors = 1
"#,
    )
    .await;
    let jobs: Vec<Job> = (0..6).map(|i| fleet.job("doomed", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, Some(1), Duration::from_secs(20)).await;
    let run = fleet.ledger.run(&jobs[0].run_id()).await.expect("run");
    assert_eq!(run.failed, 2, "{run:?}");
    assert_eq!(run.cancelled, 4, "{run:?}");
    assert_eq!(run.cancelled_because.as_deref(), Some("run failed 2 jobs, over max_errors = 1"));
    let mut cancelled = 0;
    for job in &jobs {
        if fleet.status(job).await == Status::Cancelled {
            cancelled += 1;
            let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
            assert_eq!(record.error.as_deref(), Some("cancelled: run failed 2 jobs, over max_errors = 1"));
        }
    }
    assert_eq!(cancelled, 4);
}

#[tokio::test]
async fn shutdown_lets_running_jobs_finish_and_leaves_the_rest_queued() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "steady"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 400 }
"#,
    )
    .await;
    let jobs: Vec<Job> = (0..10).map(|i| fleet.job("steady", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    let (stop, handle) = fleet.start(Some(2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let summary =
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("within the grace").expect("worker");
    assert_eq!(summary.interrupted, 0);
    let mut done = 0;
    for job in &jobs {
        if let Some(r) = fleet.ledger.job(&job.id).await.expect("ledger") {
            assert_eq!(r.status, Status::Succeeded, "a started job finished");
            done += 1;
        }
    }
    assert_eq!(done, summary.handled, "{summary:?}");
    assert!((1..10).contains(&done), "{done} done");
    let mut queued = 0;
    for p in 0..2 {
        queued += fleet.backend.embedded_queue(&names::jobs_queue("w", p)).expect("q").peek_bodies().len();
    }
    assert_eq!(queued, 10 - done, "the rest stay queued, nothing lost");
    // A second worker finishes them.
    fleet.run_until_final(&jobs, None, Duration::from_secs(20)).await;
}

#[test]
fn metrics_count_finished_jobs_durations_in_flight_and_lock_results() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let fleet = Fleet::new(NOOP).await;
            let job = fleet.job("quick", "e1", "i-1");
            fleet.send(&job, "m").await;
            fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
        });
    });
    let text = handle.render();
    for line in [
        "opsfleet_jobs_finished_total{action=\"noop\",outcome=\"succeeded\"} 1",
        "opsfleet_lock_acquisitions_total{result=\"acquired\"} 1",
        "opsfleet_job_duration_seconds_count{action=\"noop\"} 1",
        "opsfleet_event_to_start_seconds_count 1",
        "opsfleet_jobs_in_flight 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
}

#[test]
fn a_check_due_past_the_15_minute_delay_is_chained_until_it_is_due() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let waited = metrics::with_local_recorder(&recorder, || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        runtime.block_on(async {
            let fleet = Fleet::new(
                r#"
[[tasks]]
name = "glacial"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { pending_checks = 1, check_after_ms = 2400000 }
"#,
            )
            .await;
            let job = fleet.job("glacial", "e", "i-1");
            fleet.send(&job, "g").await;
            let started = tokio::time::Instant::now();
            let (stop, handle) = fleet.start(None).await;
            fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(3 * 3600)).await;
            let waited = started.elapsed();
            stop.cancel();
            handle.await.expect("worker");
            assert_eq!(fleet.status(&job).await, Status::Succeeded);
            waited
        })
    });
    assert!(waited >= Duration::from_secs(40 * 60), "completed after {waited:?}, before the 40 minutes were up");
    let text = handle.render();
    let line = "opsfleet_checks_total{result=\"early\"} 2";
    assert!(
        text.lines().any(|l| l == line),
        "a 40-minute wait is three delays of at most 15 minutes: missing `{line}` in\n{text}"
    );
}

#[tokio::test]
async fn a_pending_job_whose_checks_stopped_starts_again_after_its_lease_lapses() {
    let (fleet, job) = pending_then_stopped().await;
    // The check is lost (say it went to the checks DLQ), and the job is delivered again.
    let checks = fleet.backend.queue(&names::checks_queue("w")).await.expect("checks");
    let lost = checks.receive(10, Duration::from_secs(2), None).await.expect("receive");
    assert_eq!(lost.len(), 1);
    checks.delete_batch(&[lost[0].receipt.clone()]).await.expect("delete");
    fleet.send(&job, "again").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!(record.status, Status::Succeeded);
    assert!(record.fence >= 2, "the new holder took over with a newer fence: {record:?}");
    assert_eq!(record.attempts, 2);
}

#[tokio::test]
async fn a_failed_check_is_checked_again_and_the_job_completes() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "bumpy"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { pending_checks = 1, fail_checks = 1, check_after_ms = 500 }
retries = 2
"#,
    )
    .await;
    let job = fleet.job("bumpy", "e", "i-1");
    fleet.send(&job, "b").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!(
        (record.status, record.checks, record.failures, record.fence),
        (Status::Succeeded, 2, 1, 1),
        "{record:?}"
    );
}

#[tokio::test]
async fn a_check_that_comes_after_its_leases_lapsed_starts_the_job_again() {
    let (fleet, job) = pending_then_stopped().await;
    // No worker runs the check until the leases (check_after + lease = 3.5 s) have lapsed,
    // and another job of the resource takes the lock meanwhile.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let leases = Leases::new(fleet.backend.store("w").await.expect("store"), Clock::new());
    let key = lock_key(&job.resource.key());
    let Acquire::Acquired(other) = leases.acquire(&key, "another-job", Duration::from_secs(5)).await.expect("acquire")
    else {
        panic!("the lapsed lock is free to take");
    };
    assert!(leases.release(&other).await.expect("release"));
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts, record.fence), (Status::Succeeded, 2, 3), "{record:?}");
}

#[tokio::test]
async fn jobs_of_one_resource_in_one_batch_run_in_order() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "first"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 300 }

[[tasks]]
name = "second"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
"#,
    )
    .await;
    let a = fleet.job("first", "e", "i-1");
    let b = fleet.job("second", "e", "i-1");
    let group = a.resource.key();
    fleet.send_in_group(&a, &group, "a").await;
    fleet.send_in_group(&b, &group, "b").await;
    fleet.run_until_final(&[a.clone(), b.clone()], None, Duration::from_secs(20)).await;
    let first = &fleet.ledger.attempts(&a.id).await.expect("attempts")[0];
    let second = &fleet.ledger.attempts(&b.id).await.expect("attempts")[0];
    assert!(second.started_ms >= first.released_ms, "second started before first finished: {first:?} {second:?}");
}

#[tokio::test]
async fn a_job_that_failed_for_good_runs_again_once_reopened() {
    let fleet = Fleet::new(
        r#"
[[tasks]]
name = "once"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_attempts = 1 }
retries = 0
"#,
    )
    .await;
    let job = fleet.job("once", "e", "i-1");
    fleet.send(&job, "first").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
    assert_eq!(fleet.status(&job).await, Status::Failed);
    assert!(!fleet.ledger.reopen("no-such-job").await.expect("reopen"), "only failed jobs reopen");
    assert!(fleet.ledger.reopen(&job.id).await.expect("reopen"));
    fleet.send(&job, "redriven").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 2));
}

/// A fleet with a 3 s lease whose job goes pending for one check after 500 ms: the job is sent,
/// run until it is pending, and the worker stopped; the check is left in its queue.
async fn pending_then_stopped() -> (Fleet, Job) {
    let fleet = Fleet::with(&format!(
        "{}{}",
        BASE.replace("lease_secs = 5", "lease_secs = 3"),
        r#"
[[tasks]]
name = "slow"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { pending_checks = 1, check_after_ms = 500 }
"#
    ))
    .await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = fleet.ledger.job(&job.id).await.expect("ledger");
        if seen.as_ref().map(|r| r.status) == Some(Status::Pending) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never went pending: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    (fleet, job)
}
