//! A fleet of real `opsfleet` processes (a router and workers) on the fast emulators, each
//! behind a fault proxy, for the fault-injection suite: events in with a real client, and at
//! the end what every fleet must show: no job lost, no effect twice, no process crashed, no
//! dead letter that was not expected, every job final in the ledger.

use super::fault_proxy::{FaultPlan, FaultProxy};
use super::{fast_backend, fast_endpoints, opsfleet, root, unique_fleet, write_config, ChildGuard};
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job, Planner};
use opsfleet_worker::ledger::{Attempt, Ledger, Status};
use opsfleet_worker::ActionRegistry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// One process of the fleet.
pub struct Proc {
    /// What it is (`router`, `worker-2`, …).
    pub label: String,
    child: Option<ChildGuard>,
    log: PathBuf,
    /// How it ended, when it did and was not killed on purpose.
    pub exits: Vec<ExitStatus>,
}

/// A fleet of processes and what it needs to be checked.
pub struct ProcessFleet {
    /// The fleet's name.
    pub name: String,
    /// Its config file.
    pub path: PathBuf,
    /// Where the noop actions record their effects.
    pub effects: PathBuf,
    planner: Planner,
    /// A client straight to the emulators (no faults).
    pub backend: AwsBackend,
    /// Its ledger.
    pub ledger: Ledger,
    /// The proxy in front of SQS.
    pub sqs: FaultProxy,
    /// The proxy in front of DynamoDB.
    pub dynamodb: FaultProxy,
    /// EC2 (and STS, SNS) as AWS serves it, in front of moto.
    pub ec2: opsfleet_testkit::Ec2Realism,
    /// Every process started.
    pub procs: Vec<Proc>,
    /// Processes killed on purpose.
    pub kills: usize,
}

/// What a run came to.
#[derive(Debug, Default)]
pub struct Report {
    /// Jobs the events expand to.
    pub jobs: usize,
    /// Jobs not final in the ledger at the end.
    pub lost: usize,
    /// Jobs whose effect happened more than once.
    pub doubled: usize,
    /// Jobs not `SUCCEEDED`.
    pub not_succeeded: usize,
    /// Processes that exited on their own with a failure, or logged a panic.
    pub crashes: usize,
    /// Messages in the fleet's DLQs.
    pub dead_letters: usize,
    /// From the first event sent to the last job final.
    pub drained_in: Duration,
    /// What AWS's semantics came to on the wire: eventually consistent reads served stale,
    /// standard-queue messages delivered twice, and writes applied whose reply was lost.
    pub aws: (u64, u64, u64),
    /// Whether the proxies served AWS's semantics at the end (stale reads, second deliveries).
    pub aws_on: bool,
}

impl ProcessFleet {
    /// Sets up a fleet of a config (`FLEET` is replaced by the fleet's name, `EFFECTS` by its
    /// effects folder) with proxies in front of both emulators.
    pub async fn new(prefix: &str, template: &str) -> Self {
        let name = unique_fleet(prefix);
        let effects = root().join("target").join("e2e").join(format!("{name}-effects"));
        std::fs::create_dir_all(&effects).expect("effects folder");
        let path = write_config(&name, &template.replace("EFFECTS", &effects.display().to_string()));
        let (sqs_url, dynamodb_url) = fast_endpoints();
        let setup = opsfleet(&["setup", "--config", path.to_str().unwrap_or_default()])
            .env("AWS_ENDPOINT_URL_SQS", &sqs_url)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb_url)
            .output()
            .expect("setup");
        assert!(setup.status.success(), "setup: {}", String::from_utf8_lossy(&setup.stderr));
        let text = std::fs::read_to_string(&path).expect("config");
        let config = Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config");
        let backend = fast_backend().await;
        let ledger = Ledger::new(backend.store(&name).await.expect("table"), Clock::new(), Duration::from_secs(86_400));
        // AWS's own semantics are on from the start, in every scenario.
        let (sqs, dynamodb) = (FaultProxy::start(&sqs_url).await, FaultProxy::start(&dynamodb_url).await);
        sqs.set(FaultPlan::aws());
        dynamodb.set(FaultPlan::aws());
        let moto = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh: it starts the emulators");
        let ec2 =
            opsfleet_testkit::Ec2Realism::start(&moto, opsfleet_testkit::Ec2Plan::aws()).await.expect("EC2 layer");
        ProcessFleet {
            ec2,
            planner: Planner::new(config),
            sqs,
            dynamodb,
            name,
            path,
            effects,
            backend,
            ledger,
            procs: Vec::new(),
            kills: 0,
        }
    }

    /// Starts a process (`router` or `worker`) behind the proxies; `clock_offset_ms` skews a
    /// worker's wall clock (a test-only setting).
    pub fn start(&mut self, command: &str, clock_offset_ms: Option<i64>) -> usize {
        let path = self.path.clone();
        self.start_with(command, clock_offset_ms, &path)
    }

    /// Writes another version of the fleet's config (as a deploy would), returning its path.
    pub fn config_version(&self, version: &str, template: &str) -> PathBuf {
        let path = root().join("target").join("e2e").join(format!("{}-{version}.toml", self.name));
        let text = template.replace("FLEET", &self.name).replace("EFFECTS", &self.effects.display().to_string());
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Runs a one-off command (`dlq redrive …`) against the emulators, with the fleet's config
    /// or `config`; returns its standard output.
    pub fn command(&self, args: &[&str], config: Option<&PathBuf>) -> String {
        let config = config.unwrap_or(&self.path).to_str().unwrap_or_default().to_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        let (sqs, dynamodb) = fast_endpoints();
        let out = opsfleet(&all)
            .env("AWS_ENDPOINT_URL_SQS", sqs)
            .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)
            .output()
            .expect("run opsfleet");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a process with a config of its own (another version of the fleet's).
    pub fn start_with(&mut self, command: &str, clock_offset_ms: Option<i64>, path: &std::path::Path) -> usize {
        let label = format!("{command}-{}", self.procs.len());
        let log = root().join("target").join("e2e").join(format!("{}-{label}.log", self.name));
        let file = std::fs::File::create(&log).expect("log");
        let mut cmd = opsfleet(&[command, "--config", path.to_str().unwrap_or_default()]);
        cmd.env("AWS_ENDPOINT_URL_SQS", &self.sqs.url)
            .env("AWS_ENDPOINT_URL_DYNAMODB", &self.dynamodb.url)
            .env("AWS_ENDPOINT_URL", &self.ec2.url)
            .env("RUST_LOG", "warn,opsfleet_worker=info")
            .stderr(file);
        if let Some(offset) = clock_offset_ms {
            cmd.env("OPSFLEET_TEST_CLOCK_OFFSET_MS", offset.to_string());
        }
        let child = cmd.spawn().expect("start process");
        self.procs.push(Proc { label, child: Some(ChildGuard(child)), log, exits: Vec::new() });
        self.procs.len() - 1
    }

    /// The indexes of the processes that run and are workers.
    pub fn live_workers(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| self.procs[i].label.starts_with("worker") && self.procs[i].child.is_some())
            .collect()
    }

    /// `kill -9` of a process.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut guard) = self.procs[index].child.take() {
            let _ = guard.0.kill();
            let _ = guard.0.wait();
            self.kills += 1;
        }
    }

    /// SIGTERM to processes; waits for each to exit and returns how long the slowest took.
    pub async fn terminate(&mut self, indexes: &[usize]) -> Duration {
        let asked = Instant::now();
        for &i in indexes {
            if let Some(guard) = &mut self.procs[i].child {
                super::terminate(&mut guard.0);
            }
        }
        for &i in indexes {
            let Some(mut guard) = self.procs[i].child.take() else { continue };
            let status = loop {
                if let Some(status) = guard.0.try_wait().expect("wait") {
                    break status;
                }
                assert!(
                    asked.elapsed() < Duration::from_secs(60),
                    "{} did not exit after SIGTERM",
                    self.procs[i].label
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            self.procs[i].exits.push(status);
        }
        asked.elapsed()
    }

    /// Sends events (JSON bodies) to the events queue with a real client; returns the jobs
    /// they expand to (as `opsfleet plan` would print them).
    pub async fn send(&self, events: &[String]) -> Vec<Job> {
        let queue = self.backend.queue(&format!("{}-events", self.name)).await.expect("events queue");
        let mut jobs = Vec::new();
        for chunk in events.chunks(10) {
            let batch: Vec<OutgoingMessage> =
                chunk.iter().map(|body| OutgoingMessage { body: body.clone(), ..Default::default() }).collect();
            assert!(queue.send_batch(&batch).await.expect("send events").is_empty());
        }
        for body in events {
            if let Ok(event) = normalize(body) {
                if let Ok(plan) = self.planner.plan(&event, 0) {
                    jobs.extend(plan.jobs);
                }
            }
        }
        jobs
    }

    /// The job of a task for an instance, as the router would make it (for jobs sent straight
    /// to the partitions).
    pub fn job(&self, task: &str, event: &str, instance: &str) -> Job {
        opsfleet_protocol::config::fixture::instance_job(self.planner.config(), task, event, instance)
    }

    /// Sends jobs straight to their partitions, past the router; `group` names each job's FIFO
    /// group and `dedup_suffix` follows the job id in its deduplication id.
    pub async fn send_jobs(&self, jobs: &[Job], group: impl Fn(&Job) -> String, dedup_suffix: &str) {
        for p in 0..self.planner.config().fleet.partitions.get() {
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

    /// A worker of its own, straight on the emulators (no proxy), that the test stops itself.
    pub fn worker(&self, label: &str) -> ChildGuard {
        let log = root().join("target/e2e").join(format!("{}-{label}.log", self.name));
        let log = std::fs::File::create(log).expect("log");
        let path = self.path.to_str().unwrap_or_default();
        ChildGuard(super::opsfleet_fast(&["worker", "--config", path]).stderr(log).spawn().expect("worker"))
    }

    /// Waits until every job is final; fails the test past `within`.
    pub async fn wait_final(&self, jobs: &[Job], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let open = self.open_jobs(jobs).await;
            if open == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{open} of {} jobs not finished in {within:?}", jobs.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The attempts of a job, from its audit trail.
    pub async fn attempts(&self, job: &Job) -> Vec<Attempt> {
        self.ledger.attempts(&job.id).await.expect("attempts")
    }

    /// Asserts every job succeeded, and that exactly one attempt of each did.
    pub async fn assert_succeeded_exactly_once(&self, jobs: &[Job]) {
        for job in jobs {
            let record = self.ledger.job(&job.id).await.expect("ledger").expect("record");
            assert_eq!(record.status, Status::Succeeded, "job {}", job.id);
            let wins = self.attempts(job).await.iter().filter(|a| a.outcome == "SUCCEEDED").count();
            assert_eq!(wins, 1, "job {} ran to SUCCEEDED {wins} times", job.id);
        }
    }

    /// A job's ledger record.
    pub async fn record(&self, job: &Job) -> Option<opsfleet_worker::ledger::JobRecord> {
        self.ledger.job(&job.id).await.expect("ledger")
    }

    /// The jobs not final in the ledger.
    pub async fn open_jobs(&self, jobs: &[Job]) -> usize {
        let mut open = 0;
        for job in jobs {
            let final_ = match self.ledger.job(&job.id).await {
                Ok(record) => record.is_some_and(|r| r.status.is_final()),
                Err(_) => false,
            };
            open += usize::from(!final_);
        }
        open
    }

    /// Waits until every job is final (or `within` passes); returns how long it took.
    pub async fn drain(&self, jobs: &[Job], since: Instant, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.open_jobs(jobs).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        since.elapsed()
    }

    /// The jobs' statuses, by job id.
    pub async fn statuses(&self, jobs: &[Job]) -> BTreeMap<String, Option<Status>> {
        let mut out = BTreeMap::new();
        for job in jobs {
            out.insert(job.id.clone(), self.ledger.job(&job.id).await.ok().flatten().map(|r| r.status));
        }
        out
    }

    /// The bodies and reasons of the messages in a DLQ, left in place (`events`, `checks`, or
    /// a partition's number).
    pub async fn dead_letters_of(&self, queue: &str) -> Vec<(String, String)> {
        let name = match queue.parse::<u32>() {
            Ok(p) => format!("{}-jobs-{p}-dlq.fifo", self.name),
            Err(_) => format!("{}-{queue}-dlq", self.name),
        };
        let dlq = self.backend.queue(&name).await.expect("dlq");
        let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
        for _ in 0..5 {
            for m in dlq.receive(10, Duration::from_secs(1), Some(Duration::from_secs(1))).await.expect("receive") {
                let reason = m.attributes.get("opsfleet-reason").cloned().unwrap_or_default();
                seen.insert(m.message_id.clone(), (m.body.clone(), reason));
                dlq.change_visibility(&m.receipt, Duration::ZERO).await.expect("hand back");
            }
        }
        seen.into_values().collect()
    }

    /// Every effect recorded, as (job, resource, began, ended, pid).
    pub fn effects(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.effects).into_iter().flatten().flatten() {
            // `<job>.starts` counts the action's starts and `<job>.checks` its checks, not its
            // effects.
            if entry.path().extension().is_some_and(|e| e == "starts" || e == "checks") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()));
        }
        out
    }

    /// Messages in the fleet's dead-letter queues (events, checks, every partition).
    pub async fn dead_letters(&self) -> usize {
        let mut names = vec![format!("{}-events-dlq", self.name), format!("{}-checks-dlq", self.name)];
        for p in 0..self.planner.config().fleet.partitions.get() {
            names.push(format!("{}-jobs-{p}-dlq.fifo", self.name));
        }
        let mut total = 0;
        for name in names {
            let queue = self.backend.queue(&name).await.expect("dlq");
            let depth = queue.depth().await.expect("depth");
            total += (depth.visible + depth.in_flight + depth.delayed) as usize;
        }
        total
    }

    /// Stops every process still running (SIGTERM) and reports.
    pub async fn finish(&mut self, jobs: &[Job], drained_in: Duration) -> Report {
        let running: Vec<usize> = (0..self.procs.len()).filter(|&i| self.procs[i].child.is_some()).collect();
        self.terminate(&running).await;
        let mut report = Report { jobs: jobs.len(), drained_in, ..Report::default() };
        let statuses = self.statuses(jobs).await;
        report.lost = statuses.values().filter(|s| !s.is_some_and(Status::is_final)).count();
        report.not_succeeded = statuses.values().filter(|s| **s != Some(Status::Succeeded)).count();
        let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
        for effect in self.effects() {
            *per_job.entry(effect["job"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        report.doubled = per_job.values().filter(|n| **n > 1).count();
        for proc in &self.procs {
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            let failed = proc.exits.iter().any(|s| !s.success());
            if failed || log.contains("panicked") {
                report.crashes += 1;
            }
        }
        report.dead_letters = self.dead_letters().await;
        let lost_replies = self.dynamodb.injected().get("reset_after").copied().unwrap_or(0);
        report.aws = (self.dynamodb.aws_semantics().0, self.sqs.aws_semantics().1, lost_replies);
        report.aws_on = self.dynamodb.plan().stale_reads.is_some() && self.sqs.plan().duplicates > 0.0;
        report
    }
}

impl Report {
    /// One line for the log and `RELIABILITY.md`.
    pub fn line(&self, scenario: &str, faults: &str) -> String {
        format!(
            "{scenario}: {} jobs, {faults} (with {} stale reads, {} second deliveries, {} lost replies), drained in {:.1} s; lost {}, effects twice {}, crashes {}, dead letters {}, not succeeded {}",
            self.jobs,
            self.aws.0,
            self.aws.1,
            self.aws.2,
            self.drained_in.as_secs_f64(),
            self.lost,
            self.doubled,
            self.crashes,
            self.dead_letters,
            self.not_succeeded
        )
    }

    /// Prints the scenario's line, and asserts it clean with no dead letter left.
    pub fn assert_all_good(&self, scenario: &str, faults: &str) {
        println!("{}", self.line(scenario, faults));
        self.assert_clean(scenario);
        assert_eq!(self.dead_letters, 0, "{scenario}: {self:?}");
    }

    /// Asserts what every scenario must show.
    pub fn assert_clean(&self, scenario: &str) {
        assert_eq!(self.lost, 0, "{scenario}: jobs lost: {self:?}");
        assert_eq!(self.doubled, 0, "{scenario}: effects run twice: {self:?}");
        assert_eq!(self.crashes, 0, "{scenario}: processes crashed: {self:?}");
        assert_eq!(self.not_succeeded, 0, "{scenario}: jobs not succeeded: {self:?}");
        assert!(self.aws_on, "{scenario}: AWS's semantics were off: {self:?}");
    }
}

/// A CloudWatch alarm event on `instances` in `region`.
pub fn alarm(id: &str, region: &str, instances: &[String]) -> String {
    let metrics: Vec<Value> = instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            serde_json::json!({"id": format!("m{i}"), "metricStat": {"metric": {"namespace": "AWS/EC2",
                "name": "CPUUtilization", "dimensions": {"InstanceId": instance}}}})
        })
        .collect();
    serde_json::json!({
        "version": "0", "id": id, "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
        "account": "123456789012", "time": "2026-11-25T00:00:00Z", "region": region,
        "resources": [format!("arn:aws:cloudwatch:{region}:123456789012:alarm:{id}")],
        "detail": { "alarmName": id, "state": {"value": "ALARM"}, "configuration": { "metrics": metrics } }
    })
    .to_string()
}

/// An event of `source` naming `count` instances (`i-<id>0000`, …) in us-east-1.
pub fn instances_event(id: &str, source: &str, count: usize) -> String {
    let resources: Vec<String> =
        (0..count).map(|i| format!("arn:aws:ec2:us-east-1:123456789012:instance/i-{id}{i:04}")).collect();
    serde_json::json!({ "version": "0", "id": id, "detail-type": "Ops", "source": source, "account": "123456789012",
            "time": "2026-12-05T10:00:00Z", "region": "us-east-1", "resources": resources, "detail": {} })
    .to_string()
}

/// An EC2 state-change event (stopped) of one instance.
pub fn stopped(id: &str, region: &str, instance: &str) -> String {
    serde_json::json!({
        "version": "0", "id": id, "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-11-25T00:00:00Z", "region": region,
        "resources": [format!("arn:aws:ec2:{region}:123456789012:instance/{instance}")],
        "detail": { "instance-id": instance, "state": "stopped" }
    })
    .to_string()
}

/// `events` alarm events over four regions, `per_event` instances each, numbered from `base`.
pub fn alarms(prefix: &str, events: usize, per_event: usize) -> Vec<String> {
    const REGIONS: [&str; 4] = ["us-east-1", "us-west-2", "eu-west-1", "ap-south-1"];
    (0..events)
        .map(|e| {
            let instances: Vec<String> = (0..per_event).map(|k| format!("i-{:08x}{k}", e)).collect();
            alarm(&format!("{prefix}-{e}"), REGIONS[e % REGIONS.len()], &instances)
        })
        .collect()
}

/// The largest number of intervals that overlap at one instant.
pub fn peak_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}
