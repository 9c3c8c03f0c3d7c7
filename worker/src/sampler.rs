//! One process of the fleet samples its queues: whichever worker holds the `queue-sampler`
//! lease reads every queue's depth (`GetQueueAttributes`) every [`EVERY`] and exports
//! `opsfleet_queue_messages{queue,state}` and `opsfleet_backlog_per_worker` (visible job
//! messages ÷ live workers, the figure autoscaling targets). The others export neither, so a
//! fleet of N workers costs one sampler's calls, not N, and no two processes export the same
//! series. Gauges idle for a minute leave the exporter, so a process that stops sampling stops
//! showing old depths.

use crate::lease::{lock_key, Acquire, Lease, Leases, Watch};
use crate::presence;
use crate::telemetry::{backlog_per_worker, queue_messages, refresh_gauges, WorkerCallFailed};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often depths are sampled (and this process's other gauges refreshed).
pub const EVERY: Duration = Duration::from_secs(15);

/// The sampler's lease: a sampler that stops heartbeating is replaced within it.
const LEASE: Duration = Duration::from_secs(60);

/// The fleet's queues and what sampling them needs.
pub(crate) struct Sampler {
    leases: Leases,
    store: Arc<dyn Store>,
    partitions: Vec<Arc<dyn Queue>>,
    others: Vec<Arc<dyn Queue>>,
    owner: String,
}

impl Sampler {
    /// Opens every queue of the fleet.
    pub(crate) async fn open(
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
        Ok(Sampler { leases: Leases::new(Arc::clone(&store)), store, partitions, others, owner })
    }

    /// Samples while it holds the lease, and keeps this process's gauges fresh, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken, in_flight: impl Fn() -> usize) {
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
        let mut visible_jobs = 0;
        for (queue, partition) in
            self.partitions.iter().map(|q| (q, true)).chain(self.others.iter().map(|q| (q, false)))
        {
            match queue.depth().await {
                Ok(depth) => {
                    queue_messages(queue.name(), depth.visible, depth.in_flight, depth.delayed);
                    if partition {
                        visible_jobs += depth.visible;
                    }
                }
                Err(e) => WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit(),
            }
        }
        match presence::live(self.store.as_ref()).await {
            Ok(live) => backlog_per_worker(visible_jobs as f64 / f64::from(live.workers.max(1))),
            Err(e) => WorkerCallFailed { what: "sampler", error: &e.to_string() }.emit(),
        }
    }
}
