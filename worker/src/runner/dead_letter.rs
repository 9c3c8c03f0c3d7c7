//! Dead-lettering: what the worker cannot or must not run again goes to a DLQ with its reason.

use super::*;
use crate::ledger::JobRecord;

impl Worker {
    /// Dead-letters a job body to its partition's DLQ. The fence of the attempt that failed
    /// goes into the FIFO deduplication id: a repeat of the same failure is deduplicated, a new
    /// failure after a redrive is not.
    pub(super) async fn dead_letter(&self, partition: u32, body: &str, reason: &str, fence: i64) -> Disposition {
        let queue = Arc::clone(&self.dead_letters[partition as usize % self.dead_letters.len()]);
        self.dead_letter_to(queue.as_ref(), body, reason, fence).await
    }

    /// Makes sure a job that failed for good is in its DLQ (its first dead-lettering may not
    /// have gone through; a repeat within five minutes is deduplicated by the fence).
    pub(super) async fn dead_letter_failed(&self, job: &Job, record: JobRecord) -> Disposition {
        let reason = record.error.unwrap_or_else(|| "failed".to_owned());
        let body = serde_json::to_string(job).unwrap_or_default();
        self.dead_letter(job.partition, &body, &reason, record.fence).await
    }

    pub(super) async fn dead_letter_to(&self, queue: &dyn Queue, body: &str, reason: &str, fence: i64) -> Disposition {
        let mut message = OutgoingMessage { body: body.to_owned(), ..Default::default() };
        message.attributes.insert(names::REASON_ATTRIBUTE.to_owned(), reason.chars().take(1000).collect());
        if queue.name().ends_with(".fifo") {
            let digest = opsfleet_protocol::job::job_id(body, &format!("{fence}/{reason}"), queue.name());
            // One group per resource, so that one dead letter never hides the others from
            // `opsfleet dlq list`; bodies that are not jobs share one group.
            let group = Job::from_json(body).map(|j| j.resource.key()).unwrap_or_else(|_| "not-a-job".to_owned());
            message.group_id = Some(group);
            message.dedup_id = Some(digest);
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
