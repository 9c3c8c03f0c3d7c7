//! What the worker tests share: a fleet on the embedded backend, jobs, a worker to run them.

#![allow(dead_code)]

pub mod dynamodb;
pub mod ec2;
pub mod faulty;
pub mod rds;

use opsfleet_backend::realism::{Realism, RealisticBackend};
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::config::fixture::instance_job;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job};
use opsfleet_worker::ledger::{Ledger, Status};
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const BASE: &str = r#"
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

pub struct Fleet {
    pub backend: Arc<EmbeddedBackend>,
    /// What workers run on: the embedded backend, or a layer of AWS's semantics around it.
    pub layer: Arc<dyn Backend>,
    pub config: Arc<Config>,
    pub ledger: Ledger,
}

impl Fleet {
    pub async fn new(tasks: &str) -> Self {
        Self::with(&format!("{BASE}{tasks}")).await
    }

    pub async fn with(text: &str) -> Self {
        let config = Config::parse(text, Some(&ActionRegistry::builtin())).expect("config");
        let backend = Arc::new(EmbeddedBackend::new());
        setup(backend.as_ref(), &config).await.expect("setup");
        let store = backend.store("w").await.expect("store");
        let ledger = Ledger::new(store, Clock::new(), Duration::from_secs(3600));
        Fleet { layer: backend.clone(), backend, config: Arc::new(config), ledger }
    }

    /// A fleet whose workers, and whose ledger, see the embedded backend as AWS serves it
    /// (stale eventually consistent reads, lost replies, second deliveries). The ledger's
    /// clock advances with tokio's, as the workers' do.
    pub async fn realistic(text: &str, realism: Realism) -> (Self, Arc<RealisticBackend>) {
        let mut fleet = Self::with(&format!("{BASE}{text}")).await;
        let layer = Arc::new(RealisticBackend::new(fleet.backend.clone(), realism));
        let store = layer.store("w").await.expect("store");
        fleet.ledger = Ledger::new(store, Clock::starting_at(Clock::new().now_ms()), Duration::from_secs(3600));
        fleet.layer = layer.clone();
        (fleet, layer)
    }

    pub fn job(&self, task: &str, event: &str, instance: &str) -> Job {
        instance_job(&self.config, task, event, instance)
    }

    pub async fn send(&self, job: &Job, dedup: &str) {
        self.send_in_group(job, &job.id, dedup).await;
    }

    pub async fn send_in_group(&self, job: &Job, group: &str, dedup: &str) {
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
    pub async fn start(
        &self,
        max_in_flight: Option<u32>,
    ) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        self.start_on(Arc::clone(&self.layer), max_in_flight, "test").await
    }

    /// Starts a worker with its own id on a backend (the fleet's, or a layer around it) whose
    /// audit clock advances with tokio's; returns its shutdown token and handle.
    pub async fn start_on(
        &self,
        backend: Arc<dyn Backend>,
        max_in_flight: Option<u32>,
        id: &str,
    ) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        self.start_with(backend, max_in_flight, id, None).await
    }

    /// As [`Fleet::start_on`], with AWS clients for the actions.
    pub async fn start_with(
        &self,
        backend: Arc<dyn Backend>,
        max_in_flight: Option<u32>,
        id: &str,
        aws: Option<Arc<opsfleet_backend::aws::AwsAccounts>>,
    ) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        let mut config = self.config.as_ref().clone();
        if let Some(n) = max_in_flight {
            config.worker.max_in_flight = n.try_into().expect("non-zero");
        }
        self.run_worker(backend, Arc::new(config), id, aws).await
    }

    /// Starts a worker with a config of its own (another release's).
    pub async fn start_configured(
        &self,
        backend: Arc<dyn Backend>,
        config: Arc<Config>,
    ) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        self.run_worker(backend, config, "next-release", None).await
    }

    async fn run_worker(
        &self,
        backend: Arc<dyn Backend>,
        config: Arc<Config>,
        id: &str,
        aws: Option<Arc<opsfleet_backend::aws::AwsAccounts>>,
    ) -> (CancellationToken, tokio::task::JoinHandle<ConsumeSummary>) {
        let hard_stop = CancellationToken::new();
        let worker = Worker::open(
            backend.as_ref(),
            Arc::clone(&config),
            ActionRegistry::builtin(),
            id.into(),
            false,
            hard_stop.clone(),
        )
        .await
        .expect("worker")
        .with_clock(Clock::starting_at(Clock::new().now_ms()));
        let worker = match aws {
            Some(aws) => worker.with_aws(aws),
            None => worker,
        };
        let consumer = Consumer::open(backend.as_ref(), Arc::new(worker), &config)
            .await
            .expect("consumer")
            .with_long_poll(Duration::from_millis(20));
        let shutdown = CancellationToken::new();
        (shutdown.clone(), tokio::spawn(consumer.run(shutdown, hard_stop)))
    }

    pub async fn wait_final(&self, jobs: &[Job], within: Duration) {
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
    pub async fn run_until_final(&self, jobs: &[Job], max_in_flight: Option<u32>, within: Duration) {
        let (stop, handle) = self.start(max_in_flight).await;
        self.wait_final(jobs, within).await;
        stop.cancel();
        handle.await.expect("worker");
    }

    pub async fn status(&self, job: &Job) -> Status {
        self.ledger.job(&job.id).await.expect("ledger").expect("record").status
    }

    pub fn dead_letters(&self, partition: u32) -> Vec<(String, String)> {
        let q = self.backend.embedded_queue(&names::jobs_dlq("w", partition)).expect("dlq");
        q.peek_bodies()
            .into_iter()
            .zip(q.peek_attributes())
            .map(|(b, a)| (b, a.get(opsfleet_protocol::dead_letter::REASON_ATTRIBUTE).cloned().unwrap_or_default()))
            .collect()
    }
}

pub const NOOP: &str = r#"
[[tasks]]
name = "quick"
pattern = { source = ["x"] }
targets = "event"
action = "noop"
params = { sleep_ms = 10 }
"#;

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

/// A fleet with a 3 s lease whose job goes pending for one check after 500 ms: the job is sent,
/// run until it is pending, and the worker stopped; the check is left in its queue.
pub async fn pending_then_stopped() -> (Fleet, Job) {
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
