//! The baseline: the raw throughput of one embedded FIFO queue with no router or worker logic,
//! measured on the very job messages the router makes of the load.

use anyhow::{bail, Context};
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::ports::{Backend, OutgoingMessage, QueueSpec, MAX_BATCH};
use opsfleet_protocol::Planner;
use std::time::{Duration, Instant};

use crate::events::LoadEvent;

/// The queue the baseline runs on (in a backend of its own).
const QUEUE: &str = "loadtest-baseline.fifo";

/// The job messages the router sends for `events` (group id = resource key, deduplication
/// id = job id), planned with the fleet's own planner. Fails when the planned job ids are
/// not the ones the load test expects, so a config or id mismatch shows at once instead of
/// as a run that never completes.
pub fn job_messages(planner: &Planner, events: &[LoadEvent]) -> anyhow::Result<Vec<OutgoingMessage>> {
    let mut messages = Vec::with_capacity(events.iter().map(|e| e.resource_keys.len()).sum());
    for event in events {
        let normalized =
            normalize(&event.body).with_context(|| format!("generated event {} is not an event", event.id))?;
        let plan = planner.plan(&normalized, 0).with_context(|| format!("cannot plan generated event {}", event.id))?;
        let planned: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
        let expected: Vec<String> = event.job_ids().collect();
        if planned != expected {
            bail!("event {} plans to {} jobs, not the {} expected ones", event.id, planned.len(), expected.len());
        }
        for job in plan.jobs {
            let body = job.to_json()?;
            messages.push(job.message(body));
        }
    }
    Ok(messages)
}

/// What the baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Messages sent and then received and deleted.
    pub messages: usize,
    /// Time to send them all, in batches of ten.
    pub send: Duration,
    /// Time to receive and delete them all, in batches of ten.
    pub drain: Duration,
}

impl Baseline {
    /// Messages per second through send, receive and delete together.
    pub fn messages_per_sec(&self) -> f64 {
        per_sec(self.messages, self.send + self.drain)
    }
}

/// Items per second over a duration (0 for an empty duration).
pub fn per_sec(count: usize, took: Duration) -> f64 {
    let secs = took.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Sends `messages` to a fresh embedded FIFO queue in batches of ten, then receives and
/// deletes them in batches of ten, one call at a time, timing both phases.
pub async fn measure(messages: &[OutgoingMessage]) -> anyhow::Result<Baseline> {
    let backend = EmbeddedBackend::new();
    let spec = QueueSpec {
        name: QUEUE.to_owned(),
        visibility: Duration::from_secs(60),
        retention: Duration::from_secs(4 * 86_400),
        dead_letter: None,
    };
    backend.ensure_queue(&spec).await?;
    let queue = backend.queue(QUEUE).await?;

    let started = Instant::now();
    for batch in messages.chunks(MAX_BATCH) {
        let failures = queue.send_batch(batch).await?;
        if let Some(f) = failures.first() {
            bail!("baseline send refused: {}: {}", f.code, f.message);
        }
    }
    let send = started.elapsed();

    let started = Instant::now();
    let mut drained = 0usize;
    while drained < messages.len() {
        let received = queue.receive(MAX_BATCH, Duration::ZERO, None).await?;
        if received.is_empty() {
            bail!("baseline queue ran dry after {drained} of {} messages", messages.len());
        }
        let receipts: Vec<String> = received.into_iter().map(|m| m.receipt).collect();
        let failures = queue.delete_batch(&receipts).await?;
        if let Some(f) = failures.first() {
            bail!("baseline delete failed: {}", f.message);
        }
        drained += receipts.len();
    }
    Ok(Baseline { messages: messages.len(), send, drain: started.elapsed() })
}
