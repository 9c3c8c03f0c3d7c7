//! Dead-lettering: what the worker cannot or must not run again goes to a DLQ with its reason.
//!
//! Every dead-lettering is kept. A FIFO DLQ drops a message whose deduplication id it saw in
//! the last five minutes, so the id names the dead-lettering itself, never only its content:
//! a message the worker cannot run is deduplicated by its own SQS message id (a redelivery of
//! the same message is the same dead letter; a redriven copy is a new message, and a new dead
//! letter), and a job that ended `FAILED` or `CANCELLED` by the job and the fence of the attempt
//! that ended it. The ledger records that a finished job's dead letter went out, so a
//! redelivered copy of it is acknowledged instead of dead-lettered twice.

use super::*;
use crate::ledger::JobRecord;
use crate::telemetry::MessageDeadLettered;
use opsfleet_protocol::ports::OutgoingMessage;

impl Worker {
    /// Dead-letters a message the worker cannot run (not a job, or its task or action is
    /// unknown here) to its partition's DLQ.
    pub(super) async fn dead_letter_message(
        &self,
        partition: u32,
        message: &ReceivedMessage,
        reason: &str,
    ) -> Disposition {
        let queue = Arc::clone(&self.dead_letters[partition as usize % self.dead_letters.len()]);
        let seed = format!("message/{}", message.message_id);
        self.dead_letter_to(queue.as_ref(), &message.body, reason, &seed, message.sent_ms).await
    }

    /// Dead-letters a job that ended `status` (failed or cancelled) under `fence`, and records
    /// in the ledger that its dead letter went out.
    pub(super) async fn dead_letter_job(&self, job: &Job, reason: &str, fence: i64, status: Status) -> Disposition {
        let queue = Arc::clone(&self.dead_letters[job.partition as usize % self.dead_letters.len()]);
        let body = serde_json::to_string(job).unwrap_or_default();
        let seed = format!("job/{}/{fence}/{}", job.id, status.as_str());
        let disposition = self.dead_letter_to(queue.as_ref(), &body, reason, &seed, job.received_ms).await;
        if disposition == Disposition::Delete {
            if let Err(e) = self.ledger.dead_lettered(&job.id, fence).await {
                WorkerCallFailed { what: "dead-letter", error: &e.to_string() }.emit();
            }
        }
        disposition
    }

    /// Makes sure a job that failed for good or was cancelled is in its DLQ: its first
    /// dead-lettering may not have gone through.
    pub(super) async fn dead_letter_finished(&self, job: &Job, record: &JobRecord) -> Disposition {
        if record.dead_lettered {
            return Disposition::Delete;
        }
        let reason = record.error.clone().unwrap_or_else(|| record.status.as_str().to_lowercase());
        self.dead_letter_job(job, &reason, record.fence, record.status).await
    }

    /// Sends a body to a DLQ with its reason; `seed` names this dead-lettering (its FIFO
    /// deduplication id is a digest of it).
    pub(super) async fn dead_letter_to(
        &self,
        queue: &dyn Queue,
        body: &str,
        reason: &str,
        seed: &str,
        first_seen_ms: u64,
    ) -> Disposition {
        let mut message = OutgoingMessage { body: body.to_owned(), ..Default::default() };
        message.attributes.insert(names::REASON_ATTRIBUTE.to_owned(), reason.chars().take(1000).collect());
        message.attributes.insert(names::FIRST_SEEN_ATTRIBUTE.to_owned(), first_seen_ms.to_string());
        if queue.name().ends_with(".fifo") {
            // One group per resource, so that one dead letter never hides the others from
            // `opsfleet dlq list`; bodies that are not jobs share one group.
            let group = Job::from_json(body).map(|j| j.resource.key()).unwrap_or_else(|_| "not-a-job".to_owned());
            message.dedup_id = Some(opsfleet_protocol::job::job_id(seed, "dead-letter", queue.name()));
            message.group_id = Some(group);
        }
        match queue.send_one(message).await {
            Ok(()) => {
                MessageDeadLettered { queue: queue.name(), reason }.emit();
                Disposition::Delete
            }
            Err(e) => {
                WorkerCallFailed { what: "dead-letter", error: &e.to_string() }.emit();
                Disposition::Retry(jitter(Duration::from_secs(5)))
            }
        }
    }
}
