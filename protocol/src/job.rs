//! Jobs out: one job per (event, task, resource), with a deterministic id and a stable
//! partition.

use crate::resource::Resource;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The version of the job JSON this build writes and reads.
pub const JOB_VERSION: u32 = 1;

/// The largest job message SQS takes.
pub const MAX_JOB_BYTES: usize = 256 * 1024;

/// One action on one resource, as it travels on a job queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job JSON version ([`JOB_VERSION`]).
    pub v: u32,
    /// The deterministic job id: see [`job_id`].
    pub id: String,
    /// The id of the event the job came from.
    pub event_id: String,
    /// The event's own time, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// When the router received the event, in Unix milliseconds.
    pub received_ms: u64,
    /// The task that matched.
    pub task: String,
    /// The action to run.
    pub action: String,
    /// The action's params.
    pub params: Value,
    /// The resource to act on.
    pub resource: Resource,
    /// The partition the job is queued on.
    pub partition: u32,
    /// The event's fields the task's templates read (`{event.detail.state}`), by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub event_fields: BTreeMap<String, String>,
    /// How many jobs the job's run has (set for a task whose `max_errors` is a percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_size: Option<u32>,
}

/// Why a job cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job's JSON is over SQS's message size limit.
    #[error("job {id} for {resource} is {bytes} bytes, over the {MAX_JOB_BYTES}-byte message limit")]
    TooLarge {
        /// The job id.
        id: String,
        /// The resource key.
        resource: String,
        /// The serialized size.
        bytes: usize,
    },
    /// A message body is not a job of a version this build reads.
    #[error("not a job: {0}")]
    Invalid(String),
}

/// Where a job comes from: its event and task.
#[derive(Debug, Clone, Copy)]
pub struct JobOrigin<'a> {
    /// The event id.
    pub event_id: &'a str,
    /// The event's own time.
    pub event_time: Option<&'a str>,
    /// When the router received the event, in Unix milliseconds.
    pub received_ms: u64,
    /// The task name.
    pub task: &'a str,
    /// The task's action.
    pub action: &'a str,
    /// The task's params.
    pub params: &'a Value,
}

impl Job {
    /// The job of `origin` for one resource, with its deterministic id and its partition among
    /// `partitions`.
    pub fn new(origin: JobOrigin<'_>, resource: Resource, partitions: u32) -> Self {
        let key = resource.key();
        Job {
            v: JOB_VERSION,
            id: job_id(origin.event_id, origin.task, &key),
            event_id: origin.event_id.to_owned(),
            event_time: origin.event_time.map(str::to_owned),
            received_ms: origin.received_ms,
            task: origin.task.to_owned(),
            action: origin.action.to_owned(),
            params: origin.params.clone(),
            partition: partition_of(&key, partitions),
            resource,
            event_fields: BTreeMap::new(),
            run_size: None,
        }
    }

    /// The job as JSON, rejected when over [`MAX_JOB_BYTES`].
    pub fn to_json(&self) -> Result<String, JobError> {
        let text = serde_json::to_string(self).map_err(|e| JobError::Invalid(e.to_string()))?;
        if text.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge { id: self.id.clone(), resource: self.resource.key(), bytes: text.len() });
        }
        Ok(text)
    }

    /// The message that carries the job (its JSON, from [`Job::to_json`]) on its partition's
    /// FIFO queue: group id = resource key (per-resource order), deduplication id = job id.
    pub fn message(&self, body: String) -> crate::ports::OutgoingMessage {
        crate::ports::OutgoingMessage {
            body,
            group_id: Some(self.resource.key()),
            dedup_id: Some(self.id.clone()),
            ..Default::default()
        }
    }

    /// Reads a job from a message body.
    pub fn from_json(text: &str) -> Result<Self, JobError> {
        let job: Job = serde_json::from_str(text).map_err(|e| JobError::Invalid(e.to_string()))?;
        if job.v != JOB_VERSION {
            return Err(JobError::Invalid(format!("job version {} is not {JOB_VERSION}", job.v)));
        }
        Ok(job)
    }

    /// The id of the run this job belongs to: one run per (event, task).
    pub fn run_id(&self) -> String {
        run_id(&self.event_id, &self.task)
    }
}

/// The deterministic id of the job of `task` for the resource `resource_key` of event
/// `event_id`: the first 128 bits of SHA-256 over the three, in hex. Redelivering the event
/// yields the same ids, which FIFO deduplication and the ledger rely on.
pub fn job_id(event_id: &str, task: &str, resource_key: &str) -> String {
    digest(&[event_id, task, resource_key], 16)
}

/// The id a runbook's step `step` of job `job_id` runs under: its actions mark what they make
/// with it, so two steps of one job never take each other's work for their own.
pub fn step_job_id(job_id: &str, step: &str) -> String {
    digest(&[job_id, step], 16)
}

/// The id of the run of `task` for event `event_id`.
pub fn run_id(event_id: &str, task: &str) -> String {
    digest(&[event_id, task], 12)
}

/// The first `bytes` of SHA-256 over length-prefixed parts, in hex: parts cannot run into
/// each other (`ab`+`c` differs from `a`+`bc`).
pub(crate) fn digest(parts: &[&str], bytes: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize()[..bytes])
}

/// The partition of a resource: XXH3-64 of its key modulo the partition count. XXH3 is
/// specified and stable across platforms and versions, so a resource keeps its partition.
pub fn partition_of(resource_key: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(resource_key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceType;
    use proptest::prelude::*;

    const PINNED_XXH3: u64 = 10_349_427_914_385_957_808;

    fn job(params: Value) -> Job {
        let resource = Resource {
            account: "123456789012".into(),
            region: "us-east-1".into(),
            kind: ResourceType::Instance,
            id: "i-1".into(),
        };
        Job {
            v: JOB_VERSION,
            id: job_id("e", "t", &resource.key()),
            event_id: "e".into(),
            event_time: None,
            received_ms: 1,
            task: "t".into(),
            action: "noop".into(),
            params,
            resource,
            partition: 0,
            event_fields: BTreeMap::new(),
            run_size: None,
        }
    }

    #[test]
    fn round_trips_and_checks_version() {
        let j = job(serde_json::json!({"a": 1}));
        let text = j.to_json().unwrap();
        assert_eq!(Job::from_json(&text).unwrap(), j);
        let old = text.replace("\"v\":1", "\"v\":9");
        assert!(Job::from_json(&old).unwrap_err().to_string().contains("version 9"));
    }

    #[test]
    fn oversized_jobs_are_rejected() {
        let big = "x".repeat(MAX_JOB_BYTES);
        let err = job(serde_json::json!({ "blob": big })).to_json().unwrap_err();
        assert!(err.to_string().contains("over the 262144-byte message limit"), "{err}");
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(job_id("e1", "t", "k"), job_id("e1", "t", "k"));
        assert_ne!(job_id("e1", "t", "k"), job_id("e2", "t", "k"));
        assert_ne!(job_id("ab", "c", "k"), job_id("a", "bc", "k"));
        assert_eq!(job_id("e1", "t", "k").len(), 32);
    }

    #[test]
    fn partition_is_pinned() {
        // A change of hash would move every resource to another partition while jobs are queued.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"opsfleet"), PINNED_XXH3);
    }

    proptest! {
        /// Every key lands in range, on the same partition every time.
        #[test]
        fn partition_in_range_and_stable(key in ".{0,64}", n in 1u32..64) {
            let p = partition_of(&key, n);
            prop_assert!(p < n);
            prop_assert_eq!(p, partition_of(&key, n));
        }
    }

    #[test]
    fn partitions_spread_evenly() {
        let n = 8u32;
        let mut counts = vec![0u32; n as usize];
        for i in 0..8000 {
            counts[partition_of(&format!("123456789012/us-east-1/ec2:instance/i-{i:017x}"), n) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven partition count {c}");
        }
    }
}
