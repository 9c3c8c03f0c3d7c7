//! Dead letters: what the fleet will not run again goes to a dead-letter queue with its reason,
//! when it was first seen and where it came from. One type, one rule for the reason's length,
//! one builder of the outgoing message and one reader of a received one, for the router, the
//! worker, the CLI and the load test alike.
//!
//! Every dead-lettering is kept. A FIFO DLQ drops a message whose deduplication id it saw in
//! the last five minutes, so on a FIFO queue the id is a digest of a *seed* that names the
//! dead-lettering itself, never only its content (see [`DeadLetter::message`]).

use crate::job::{job_id, Job};
use crate::ports::{OutgoingMessage, ReceivedMessage};
use std::collections::BTreeMap;

/// The message attribute that carries the reason a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "opsfleet-reason";

/// The message attribute of a dead letter that says when the fleet first saw the message
/// (Unix ms); the dead letter's own send time says when it was dead-lettered.
pub const FIRST_SEEN_ATTRIBUTE: &str = "opsfleet-first-seen";

/// The message attribute naming the queue a dead letter came from.
pub const SOURCE_ATTRIBUTE: &str = "opsfleet-source-queue";

/// The longest reason kept, in bytes (cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 1000;

/// SQS takes at most ten attributes per message.
const MAX_ATTRIBUTES: usize = 10;

/// The message group of dead letters whose body is not a job.
const NOT_A_JOB_GROUP: &str = "not-a-job";

/// A message the fleet will not run again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message body, as it was.
    pub body: String,
    /// Why it was dead-lettered, at most [`MAX_REASON_BYTES`].
    pub reason: String,
    /// When the fleet first saw the message, Unix ms.
    pub first_seen_ms: u64,
    /// The queue it came from.
    pub source: String,
    /// The message's own attributes, kept as far as SQS's ten allow.
    pub attributes: BTreeMap<String, String>,
}

impl DeadLetter {
    /// A dead letter of `body` from `source`, with its reason cut to [`MAX_REASON_BYTES`].
    pub fn new(body: impl Into<String>, reason: &str, first_seen_ms: u64, source: impl Into<String>) -> Self {
        DeadLetter {
            body: body.into(),
            reason: bounded_reason(reason).to_owned(),
            first_seen_ms,
            source: source.into(),
            attributes: BTreeMap::new(),
        }
    }

    /// The dead letter of a received message: its first-seen time is the one it already
    /// carries (a message dead-lettered before and redriven), else when it was first sent.
    pub fn of_received(message: &ReceivedMessage, reason: &str, source: impl Into<String>, now_ms: u64) -> Self {
        let first_seen = message
            .attributes
            .get(FIRST_SEEN_ATTRIBUTE)
            .and_then(|v| v.parse().ok())
            .unwrap_or(if message.sent_ms > 0 { message.sent_ms } else { now_ms });
        let mut letter = DeadLetter::new(message.body.clone(), reason, first_seen, source);
        letter.attributes = theirs(&message.attributes);
        letter
    }

    /// The dead letter of a job that ended for good (failed or cancelled) with `reason`.
    pub fn of_job(job: &Job, reason: &str, source: impl Into<String>) -> Self {
        let body = serde_json::to_string(job).unwrap_or_default();
        DeadLetter::new(body, reason, job.received_ms, source)
    }

    /// The outgoing message to `queue`. On a FIFO queue it goes in its resource's group (one
    /// group per resource, so one dead letter never hides the others from `opsfleet dlq list`;
    /// bodies that are not jobs share a group), deduplicated by a digest of `seed`, which must
    /// name this dead-lettering: the message id of a message that cannot run, or the job, fence
    /// and status of a job that ended.
    pub fn message(&self, queue: &str, seed: &str) -> OutgoingMessage {
        let mut attributes: BTreeMap<String, String> =
            self.attributes.iter().take(MAX_ATTRIBUTES - 3).map(|(k, v)| (k.clone(), v.clone())).collect();
        attributes.insert(REASON_ATTRIBUTE.to_owned(), self.reason.clone());
        attributes.insert(FIRST_SEEN_ATTRIBUTE.to_owned(), self.first_seen_ms.to_string());
        attributes.insert(SOURCE_ATTRIBUTE.to_owned(), self.source.clone());
        let mut message = OutgoingMessage { body: self.body.clone(), attributes, ..Default::default() };
        if queue.ends_with(".fifo") {
            let group = Job::from_json(&self.body).map(|j| j.resource.key()).unwrap_or_else(|_| NOT_A_JOB_GROUP.into());
            message.dedup_id = Some(job_id(seed, "dead-letter", queue));
            message.group_id = Some(group);
        }
        message
    }

    /// Reads a dead letter received from a DLQ. A message without the fleet's attributes (one
    /// SQS moved there itself, past `maxReceiveCount`) reads with no reason, as first seen when
    /// it was sent, from an unknown source.
    pub fn read(message: &ReceivedMessage) -> Self {
        let attribute = |name: &str| message.attributes.get(name).cloned();
        DeadLetter {
            body: message.body.clone(),
            reason: attribute(REASON_ATTRIBUTE).unwrap_or_default(),
            first_seen_ms: attribute(FIRST_SEEN_ATTRIBUTE).and_then(|v| v.parse().ok()).unwrap_or(message.sent_ms),
            source: attribute(SOURCE_ATTRIBUTE).unwrap_or_default(),
            attributes: theirs(&message.attributes),
        }
    }

    /// The message that sends this dead letter back to `queue`, its live queue. A job goes back
    /// in its resource's group under a new deduplication id (`stamp` names the redrive), so FIFO
    /// deduplication does not swallow it; `None` when the live queue is FIFO and the body is
    /// not a job (nothing could run it there).
    pub fn redrive_message(&self, queue: &str, stamp: u128) -> Option<OutgoingMessage> {
        let mut attributes = self.attributes.clone();
        attributes.insert(FIRST_SEEN_ATTRIBUTE.to_owned(), self.first_seen_ms.to_string());
        if !queue.ends_with(".fifo") {
            return Some(OutgoingMessage { body: self.body.clone(), attributes, ..Default::default() });
        }
        let job = Job::from_json(&self.body).ok()?;
        let mut message = job.message(self.body.clone());
        message.dedup_id = Some(format!("{}-redrive-{stamp}", job.id));
        message.attributes = attributes;
        Some(message)
    }
}

/// A message's own attributes: all but those the fleet writes on dead letters.
fn theirs(attributes: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), REASON_ATTRIBUTE | FIRST_SEEN_ATTRIBUTE | SOURCE_ATTRIBUTE))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A reason cut to at most [`MAX_REASON_BYTES`] at a character boundary.
pub fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobOrigin;
    use crate::resource::{Resource, ResourceType};

    fn job() -> Job {
        let params = serde_json::json!({});
        let origin = JobOrigin {
            event_id: "e-1",
            event_time: None,
            received_ms: 42,
            task: "t",
            action: "noop",
            params: &params,
        };
        let resource = Resource {
            account: "111122223333".into(),
            region: "us-east-1".into(),
            kind: ResourceType::Instance,
            id: "i-1".into(),
        };
        Job::new(origin, resource, 4)
    }

    fn received(body: &str, attributes: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            message_id: "m-1".into(),
            receipt: "r".into(),
            body: body.into(),
            receive_count: 1,
            sent_ms: 7,
            group_id: None,
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded_reason("short"), "short");
        assert_eq!(DeadLetter::new("b", &long, 0, "q").reason, cut);
    }

    #[test]
    fn a_dead_letter_round_trips_through_its_message() {
        let job = job();
        let letter = DeadLetter::of_job(&job, "it broke", "ops-jobs-1.fifo");
        let out = letter.message("ops-jobs-1-dlq.fifo", "job/x/3/FAILED");
        assert_eq!(out.group_id.as_deref(), Some(job.resource.key().as_str()));
        assert!(out.dedup_id.is_some());
        let attrs: Vec<(&str, &str)> = out.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let read = DeadLetter::read(&received(&out.body, &attrs));
        assert_eq!(read, letter);
    }

    #[test]
    fn the_seed_names_the_dead_lettering() {
        let letter = DeadLetter::new("not a job", "bad", 1, "q");
        let a = letter.message("d.fifo", "message/1");
        let b = letter.message("d.fifo", "message/2");
        assert_ne!(a.dedup_id, b.dedup_id);
        assert_eq!(a.group_id.as_deref(), Some(NOT_A_JOB_GROUP));
        assert_eq!(letter.message("d", "message/1").dedup_id, None);
    }

    #[test]
    fn received_messages_keep_their_first_seen_time_and_attributes_within_ten() {
        let mut attrs: Vec<(String, String)> = (0..12).map(|i| (format!("a{i:02}"), "v".to_owned())).collect();
        attrs.push((FIRST_SEEN_ATTRIBUTE.to_owned(), "5".to_owned()));
        let refs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let letter = DeadLetter::of_received(&received("{}", &refs), "bad", "ops-events", 99);
        assert_eq!(letter.first_seen_ms, 5);
        let out = letter.message("ops-events-dlq", "message/m-1");
        assert_eq!(out.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(out.attributes[SOURCE_ATTRIBUTE], "ops-events");
        assert_eq!(DeadLetter::of_received(&received("{}", &[]), "bad", "q", 99).first_seen_ms, 7);
    }

    #[test]
    fn redriving_a_job_gives_it_a_new_deduplication_id_in_its_group() {
        let job = job();
        let letter = DeadLetter::of_job(&job, "it broke", "ops-jobs-1.fifo");
        let back = letter.redrive_message("ops-jobs-1.fifo", 1234).expect("a job");
        assert_eq!(back.group_id.as_deref(), Some(job.resource.key().as_str()));
        assert_eq!(back.dedup_id.as_deref(), Some(format!("{}-redrive-1234", job.id).as_str()));
        assert!(!back.attributes.contains_key(REASON_ATTRIBUTE));
        assert!(DeadLetter::new("x", "r", 0, "q").redrive_message("ops-jobs-1.fifo", 1).is_none());
        assert!(DeadLetter::new("x", "r", 0, "q").redrive_message("ops-events", 1).is_some());
    }
}
