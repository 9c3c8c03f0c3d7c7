//! End to end: `opsfleet worker` processes on the same queues and table, on the fast
//! emulators (fauxqs, DynamoDB Local). Jobs are sent straight to the partitions with a real
//! SQS client; the ledger is read back from DynamoDB.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job, Resource, ResourceType};
use opsfleet_worker::lease::{lock_key, Leases};
use opsfleet_worker::ledger::{Attempt, Ledger, Status};
use opsfleet_worker::ActionRegistry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{opsfleet_fast, unique_fleet, write_config, ChildGuard};

const CONFIG: &str = r#"
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

[[tasks]]
name = "quick"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 20 }

[[tasks]]
name = "limited"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 300 }
limit = "three"

[[tasks]]
name = "long"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 4000 }

[[tasks]]
name = "steady"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 500 }

[[tasks]]
name = "two-seconds"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 2000 }

[[tasks]]
name = "poison"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { fail_rate = 1.0 }

[[tasks]]
name = "slow"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { pending_checks = 2, check_after_ms = 1000 }
"#;

struct Fleet {
    name: String,
    path: PathBuf,
    config: Config,
    backend: AwsBackend,
    ledger: Ledger,
}

impl Fleet {
    async fn new(prefix: &str) -> Self {
        let name = unique_fleet(prefix);
        let path = write_config(&name, CONFIG);
        let setup = opsfleet_fast(&["setup", "--config", path.to_str().unwrap_or_default()]).output().expect("setup");
        assert!(setup.status.success(), "setup: {}", String::from_utf8_lossy(&setup.stderr));
        let text = std::fs::read_to_string(&path).expect("config");
        let config = Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config");
        let backend = support::fast_backend().await;
        let store = backend.store(&name).await.expect("table");
        Fleet { ledger: Ledger::new(store, Clock::new(), Duration::from_secs(3600)), name, path, config, backend }
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
        Job::new(origin, resource, 2)
    }

    /// Sends jobs to their partitions; `group` names each job's FIFO group.
    async fn send(&self, jobs: &[Job], group: impl Fn(&Job) -> String, dedup_suffix: &str) {
        for p in 0..2u32 {
            let queue = self.backend.queue(&format!("{}-jobs-{p}.fifo", self.name)).await.expect("partition");
            let messages: Vec<OutgoingMessage> = jobs
                .iter()
                .filter(|j| j.partition == p)
                .map(|j| OutgoingMessage {
                    body: j.to_json().expect("json"),
                    group_id: Some(group(j)),
                    dedup_id: Some(format!("{}{dedup_suffix}", j.id)),
                    ..Default::default()
                })
                .collect();
            for chunk in messages.chunks(10) {
                assert!(queue.send_batch(chunk).await.expect("send").is_empty());
            }
        }
    }

    fn worker(&self, label: &str) -> ChildGuard {
        let log = std::fs::File::create(support::root().join("target/e2e").join(format!("{}-{label}.log", self.name)))
            .expect("log");
        ChildGuard(
            opsfleet_fast(&["worker", "--config", self.path.to_str().unwrap_or_default()])
                .stderr(log)
                .spawn()
                .expect("worker"),
        )
    }

    async fn statuses(&self, jobs: &[Job]) -> Vec<Option<Status>> {
        let mut out = Vec::new();
        for job in jobs {
            out.push(self.ledger.job(&job.id).await.expect("ledger").map(|r| r.status));
        }
        out
    }

    async fn wait_final(&self, jobs: &[Job], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let statuses = self.statuses(jobs).await;
            let open = statuses.iter().filter(|s| !s.is_some_and(Status::is_final)).count();
            if open == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{open} of {} jobs not finished in {within:?}", jobs.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn attempts(&self, job: &Job) -> Vec<Attempt> {
        self.ledger.attempts(&job.id).await.expect("attempts")
    }

    async fn assert_succeeded_exactly_once(&self, jobs: &[Job]) {
        for job in jobs {
            let record = self.ledger.job(&job.id).await.expect("ledger").expect("record");
            assert_eq!(record.status, Status::Succeeded, "job {}", job.id);
            let wins = self.attempts(job).await.iter().filter(|a| a.outcome == "SUCCEEDED").count();
            assert_eq!(wins, 1, "job {} ran to SUCCEEDED {wins} times", job.id);
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_500_jobs_once_each_and_never_share_a_lock() {
    let fleet = Fleet::new("e2e-locks").await;
    let mut jobs = Vec::new();
    for event in 0..10 {
        for r in 0..50 {
            jobs.push(fleet.job("quick", &format!("ev-{event}"), &format!("i-{r:03}")));
        }
    }
    // Two FIFO groups per resource, so two jobs of one resource compete for its lock at once.
    let parity = |j: &Job| j.event_id.bytes().last().map_or(0, |b| b % 2);
    fleet.send(&jobs, |j| format!("{}-{}", j.resource.key(), parity(j)), "").await;
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
    let fleet = Fleet::new("e2e-limit").await;
    let jobs: Vec<Job> = (0..24).map(|r| fleet.job("limited", "ev", &format!("i-{r}"))).collect();
    fleet.send(&jobs, |j| j.resource.key(), "").await;
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
    let fleet = Fleet::new("e2e-kill").await;
    let jobs: Vec<Job> = (0..6).map(|r| fleet.job("long", "ev", &format!("i-{r}"))).collect();
    fleet.send(&jobs, |j| j.resource.key(), "").await;
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
    let fleet = Fleet::new("e2e-term").await;
    let jobs: Vec<Job> = (0..30).map(|r| fleet.job("steady", "ev", &format!("i-{r}"))).collect();
    fleet.send(&jobs, |j| j.resource.key(), "").await;
    let mut a = fleet.worker("a");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = fleet.statuses(&jobs).await.iter().filter(|s| **s == Some(Status::Succeeded)).count();
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
    let fleet = Fleet::new("e2e-scalein").await;
    // Two-second jobs, 16 at a time per worker: 120 of them take both workers several rounds.
    let jobs: Vec<Job> = (0..120).map(|r| fleet.job("two-seconds", "ev", &format!("i-{r}"))).collect();
    fleet.send(&jobs, |j| j.resource.key(), "").await;
    let mut a = fleet.worker("a");
    let _b = fleet.worker("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = fleet.statuses(&jobs).await.iter().filter(|s| **s != Some(Status::Succeeded)).count();
    assert!(left > 0, "the scale-in comes while work is left");
    sigterm_exits_0_within_the_grace(&mut a.0).await;
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_redelivery_and_completion_checks() {
    let fleet = Fleet::new("e2e-misc").await;
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
    fleet.send(&all, |j| j.resource.key(), "").await;
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
    fleet.send(&good[..1], |j| j.resource.key(), "-again").await;
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
