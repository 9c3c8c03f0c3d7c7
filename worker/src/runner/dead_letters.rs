//! The worker's dead letters: what it cannot or must not run again goes to its partition's DLQ
//! (or the checks DLQ) with its reason, built by [`opsfleet_protocol::dead_letter`].
//!
//! A message the worker cannot run is deduplicated by its own SQS message id (a redelivery of
//! the same message is the same dead letter; a redriven copy is a new message, and a new dead
//! letter), and a job that ended `FAILED` or `CANCELLED` by the job and the fence of the attempt
//! that ended it. The ledger records that a finished job's dead letter went out, so a
//! redelivered copy of it is acknowledged instead of dead-lettered twice.

use super::{jitter, Disposition};
use crate::ledger::{JobRecord, Ledger, Status};
use crate::telemetry::{MessageDeadLettered, WorkerCallFailed};
use opsfleet_protocol::ports::{Backend, Queue, QueueError, ReceivedMessage};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{names, Config, DeadLetter, Job};
use std::sync::Arc;
use std::time::Duration;

/// The dead-letter queues of a fleet's job partitions and checks queue.
pub(super) struct DeadLetters {
    fleet: String,
    jobs: Vec<Arc<dyn Queue>>,
    checks: Arc<dyn Queue>,
    ledger: Ledger,
    clock: Clock,
}

impl DeadLetters {
    /// Opens the fleet's dead-letter queues.
    pub(super) async fn open(
        backend: &dyn Backend,
        config: &Config,
        ledger: Ledger,
        clock: Clock,
    ) -> Result<Self, QueueError> {
        let fleet = config.fleet.name.clone();
        let mut jobs = Vec::new();
        for p in 0..config.fleet.partitions.get() {
            jobs.push(backend.queue(&names::jobs_dlq(&fleet, p)).await?);
        }
        let checks = backend.queue(&names::checks_dlq(&fleet)).await?;
        Ok(DeadLetters { fleet, jobs, checks, ledger, clock })
    }

    /// The same dead letters with another wall clock.
    pub(super) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
        self.ledger = self.ledger.clone().with_clock(clock);
    }

    fn partition(&self, partition: u32) -> &dyn Queue {
        self.jobs[partition as usize % self.jobs.len()].as_ref()
    }

    /// Dead-letters a message of a job partition the worker cannot run (not a job, or its task
    /// or action is unknown here).
    pub(super) async fn message(&self, partition: u32, message: &ReceivedMessage, reason: &str) -> Disposition {
        let source = names::jobs_queue(&self.fleet, partition);
        self.received(self.partition(partition), source, message, reason).await
    }

    /// Dead-letters a message of the checks queue that is not a check.
    pub(super) async fn check_message(&self, message: &ReceivedMessage, reason: &str) -> Disposition {
        self.received(self.checks.as_ref(), names::checks_queue(&self.fleet), message, reason).await
    }

    /// Dead-letters a received message, deduplicated by its own message id.
    async fn received(&self, dlq: &dyn Queue, source: String, message: &ReceivedMessage, reason: &str) -> Disposition {
        let letter = DeadLetter::of_received(message, reason, source, self.clock.now_ms());
        send(dlq, &letter, &format!("message/{}", message.message_id)).await
    }

    /// Dead-letters a job that ended `status` (failed or cancelled) under `fence`, and records
    /// in the ledger that its dead letter went out.
    pub(super) async fn job(&self, job: &Job, reason: &str, fence: i64, status: Status) -> Disposition {
        let letter = DeadLetter::of_job(job, reason, names::jobs_queue(&self.fleet, job.partition));
        let seed = format!("job/{}/{fence}/{}", job.id, status.as_str());
        let disposition = send(self.partition(job.partition), &letter, &seed).await;
        if disposition == Disposition::Delete {
            if let Err(e) = self.ledger.dead_lettered(&job.id, fence).await {
                WorkerCallFailed { what: "dead-letter", error: &e.to_string() }.emit();
            }
        }
        disposition
    }

    /// Makes sure a job that failed for good or was cancelled is in its DLQ: its first
    /// dead-lettering may not have gone through.
    pub(super) async fn finished(&self, job: &Job, record: &JobRecord) -> Disposition {
        if record.dead_lettered {
            return Disposition::Delete;
        }
        let reason = record.error.clone().unwrap_or_else(|| record.status.as_str().to_lowercase());
        self.job(job, &reason, record.fence, record.status).await
    }
}

/// Sends a dead letter to a DLQ; `seed` names this dead-lettering.
async fn send(queue: &dyn Queue, letter: &DeadLetter, seed: &str) -> Disposition {
    match queue.send_one(letter.message(queue.name(), seed)).await {
        Ok(()) => {
            MessageDeadLettered { queue: queue.name(), reason: &letter.reason }.emit();
            Disposition::Delete
        }
        Err(e) => {
            WorkerCallFailed { what: "dead-letter", error: &e.to_string() }.emit();
            Disposition::Retry(jitter(Duration::from_secs(5)))
        }
    }
}
