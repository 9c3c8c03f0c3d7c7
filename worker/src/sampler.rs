//! One process of the fleet samples its queues: whichever router or worker holds the
//! `queue-sampler` lease reads every queue's depth (`GetQueueAttributes`) every [`EVERY`] and
//! exports `opsfleet_queue_messages{queue,state}`, `opsfleet_jobs_backlog` (the job messages
//! of every partition, visible or in flight: the autoscaling signal) and
//! `opsfleet_backlog_per_worker` (visible job messages ÷ live workers, for dashboards), and
//! `opsfleet_task_halted{task}` (the halts in force on each task: alarms in ALARM, by hand). With
//! `OPSFLEET_EMF_NAMESPACE` set it also writes the backlog to stdout as a CloudWatch embedded
//! metric, which CloudWatch Logs turns into the metric ECS scales on.
//!
//! Routers compete for the lease too, so the signal does not depend on the workers it scales:
//! a fleet scaled to zero workers still reports its backlog, and wakes. The others export
//! none of it, so a fleet of N processes costs one sampler's calls, not N, and no two
//! processes export the same series. Gauges idle for a minute leave the exporter, so a process
//! that stops sampling stops showing old depths.

use crate::lease::{lock_key, Acquire, Lease, Leases, Watch};
use crate::presence;
use crate::telemetry::{
    backlog_per_worker, jobs_backlog, queue_messages, refresh_gauges, task_halted, WorkerCallFailed,
};
use opsfleet_protocol::halt::Halts;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often depths are sampled (and this process's other gauges refreshed).
pub const EVERY: Duration = Duration::from_secs(15);

/// The sampler's lease: a sampler that stops heartbeating is replaced within it.
const LEASE: Duration = Duration::from_secs(60);

/// The environment variable naming the CloudWatch namespace the backlog is written to as an
/// embedded metric (unset: not written).
pub const EMF_NAMESPACE_ENV: &str = "OPSFLEET_EMF_NAMESPACE";

/// The fleet's queues and what sampling them needs.
pub struct Sampler {
    fleet: String,
    emf_namespace: Option<String>,
    leases: Leases,
    store: Arc<dyn Store>,
    partitions: Vec<Arc<dyn Queue>>,
    others: Vec<Arc<dyn Queue>>,
    owner: String,
    /// The fleet's tasks, each with a halt gauge.
    tasks: Vec<String>,
}

impl Sampler {
    /// Opens every queue of the fleet.
    pub async fn open(
        backend: &dyn Backend,
        store: Arc<dyn Store>,
        config: &opsfleet_protocol::Config,
        owner: String,
    ) -> Result<Self, QueueError> {
        let fleet = &config.fleet.name;
        let mut partitions = Vec::new();
        let mut others = Vec::new();
        for p in 0..config.fleet.partitions.get() {
            partitions.push(backend.queue(&names::jobs_queue(fleet, p)).await?);
            others.push(backend.queue(&names::jobs_dlq(fleet, p)).await?);
        }
        for name in
            [names::events_queue(fleet), names::events_dlq(fleet), names::checks_queue(fleet), names::checks_dlq(fleet)]
        {
            others.push(backend.queue(&name).await?);
        }
        Ok(Sampler {
            fleet: fleet.clone(),
            emf_namespace: std::env::var(EMF_NAMESPACE_ENV).ok().filter(|n| !n.is_empty()),
            leases: Leases::new(Arc::clone(&store)),
            store,
            partitions,
            others,
            owner,
            tasks: config.tasks.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// Samples while it holds the lease, and keeps this process's gauges fresh, until `stop`.
    pub async fn run(self, stop: CancellationToken, in_flight: impl Fn() -> usize) {
        let key = lock_key("queue-sampler");
        let mut watch = Watch::default();
        let mut held: Option<Lease> = None;
        loop {
            refresh_gauges(in_flight());
            held = match held {
                Some(lease) => match self.leases.heartbeat(&lease, LEASE, false).await {
                    Ok(true) => Some(lease),
                    Ok(false) => None,
                    Err(e) => {
                        WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit();
                        Some(lease)
                    }
                },
                None => match self.leases.acquire(&key, &self.owner, "queue-sampler", LEASE, &mut watch).await {
                    Ok(Acquire::Acquired(lease)) => Some(lease),
                    Ok(Acquire::Held(_)) => None,
                    Err(e) => {
                        WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit();
                        None
                    }
                },
            };
            if held.is_some() {
                self.sample().await;
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => break,
            }
        }
        if let Some(lease) = held {
            let _ = self.leases.release(&lease).await;
        }
    }

    async fn sample(&self) {
        let (mut visible_jobs, mut backlog, mut complete) = (0, 0, true);
        for (queue, partition) in
            self.partitions.iter().map(|q| (q, true)).chain(self.others.iter().map(|q| (q, false)))
        {
            match queue.depth().await {
                Ok(depth) => {
                    queue_messages(queue.name(), depth.visible, depth.in_flight, depth.delayed);
                    if partition {
                        visible_jobs += depth.visible;
                        backlog += depth.visible + depth.in_flight;
                    }
                }
                Err(e) => {
                    complete &= !partition;
                    WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit();
                }
            }
        }
        // A partition not read leaves the backlog unsaid rather than short: scaling in on a
        // figure that misses a partition would stop workers that have jobs waiting.
        if complete {
            jobs_backlog(backlog);
            if let Some(namespace) = &self.emf_namespace {
                println!("{}", emf_line(namespace, &self.fleet, backlog, now_ms()));
            }
        }
        match Halts::new(Arc::clone(&self.store)).all().await {
            Ok(halts) => {
                for task in &self.tasks {
                    task_halted(task, halts.iter().filter(|h| &h.task == task).count());
                }
            }
            Err(e) => WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit(),
        }
        match presence::live(self.store.as_ref()).await {
            Ok(live) => backlog_per_worker(visible_jobs as f64 / f64::from(live.workers.max(1))),
            Err(e) => WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit(),
        }
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The backlog as one CloudWatch embedded-metric-format log line: metric `JobsBacklog`
/// (count) in `namespace`, dimension `Fleet`.
pub fn emf_line(namespace: &str, fleet: &str, backlog: u64, timestamp_ms: u64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Fleet"]],
                "Metrics": [{ "Name": EMF_METRIC, "Unit": "Count" }],
            }],
        },
        "Fleet": fleet,
        EMF_METRIC: backlog,
    })
    .to_string()
}

/// The name of the backlog's CloudWatch metric.
pub const EMF_METRIC: &str = "JobsBacklog";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_one_embedded_metric_line_cloudwatch_can_extract() {
        let line = emf_line("opsfleet", "ops", 1234, 1_780_000_000_000);
        assert!(!line.contains('\n'));
        let doc: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(doc["_aws"]["Timestamp"], 1_780_000_000_000_u64);
        assert_eq!(directive["Namespace"], "opsfleet");
        // Every dimension and metric the directive names is a member of the root object.
        for dimension in directive["Dimensions"][0].as_array().expect("dimensions") {
            assert_eq!(doc[dimension.as_str().expect("name")], "ops");
        }
        let metric = directive["Metrics"][0]["Name"].as_str().expect("metric");
        assert_eq!(doc[metric], 1234);
    }
}
