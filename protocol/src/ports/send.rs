//! Sending messages in batches, retrying entries the queue did not accept: how the router sends
//! jobs and dead letters, the CLI and the load test events, and a redrive what it sends back.

use super::{OutgoingMessage, Queue, QueueError, MAX_BATCH};
use crate::job::MAX_JOB_BYTES;
use std::time::Duration;

/// Attempts per batch before the event is left for redelivery.
const ATTEMPTS: u32 = 5;

/// Why jobs could not all be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The queue refused an entry as invalid: retrying the event will not help.
    #[error("{queue} refused job {job}: {code}: {message}")]
    Refused {
        /// The queue.
        queue: String,
        /// The job id.
        job: String,
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// The queue kept failing; the event is retried later.
    #[error("{queue}: {message}")]
    Unavailable {
        /// The queue.
        queue: String,
        /// What happened last.
        message: String,
    },
    /// A job is over the message size limit.
    #[error(transparent)]
    TooLarge(crate::JobError),
    /// The queue call was refused.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Sends messages in batches of at most ten and 256 KiB, retrying the entries a batch did not
/// accept with exponential backoff. Returns once every message was accepted.
pub async fn send_all(queue: &dyn Queue, messages: Vec<OutgoingMessage>) -> Result<(), SendError> {
    for batch in batches(messages) {
        send_batch(queue, batch).await?;
    }
    Ok(())
}

fn batches(messages: Vec<OutgoingMessage>) -> Vec<Vec<OutgoingMessage>> {
    let mut out: Vec<Vec<OutgoingMessage>> = Vec::new();
    let mut bytes = 0usize;
    for m in messages {
        let size = m.body.len() + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH && bytes + size <= MAX_JOB_BYTES => {
                bytes += size;
                batch.push(m);
            }
            _ => {
                bytes = size;
                out.push(vec![m]);
            }
        }
    }
    out
}

async fn send_batch(queue: &dyn Queue, mut pending: Vec<OutgoingMessage>) -> Result<(), SendError> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        let failures = match queue.send_batch(&pending).await {
            Ok(failures) => failures,
            Err(QueueError::Unavailable { message, .. }) => {
                last = message;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if failures.is_empty() {
            return Ok(());
        }
        if let Some(refused) = failures.iter().find(|f| f.sender_fault) {
            let job = pending.get(refused.index).and_then(|m| m.dedup_id.clone()).unwrap_or_default();
            return Err(SendError::Refused {
                queue: queue.name().to_owned(),
                job,
                code: refused.code.clone(),
                message: refused.message.clone(),
            });
        }
        last = failures.iter().map(|f| format!("{}: {}", f.code, f.message)).collect::<Vec<_>>().join("; ");
        let retry: Vec<usize> = failures.iter().map(|f| f.index).collect();
        pending = pending.into_iter().enumerate().filter(|(i, _)| retry.contains(i)).map(|(_, m)| m).collect();
    }
    Err(SendError::Unavailable { queue: queue.name().to_owned(), message: last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(size: usize) -> OutgoingMessage {
        OutgoingMessage { body: "x".repeat(size), ..Default::default() }
    }

    #[test]
    fn batches_hold_ten_and_stay_under_the_size_limit() {
        let sizes: Vec<usize> = batches((0..25).map(|_| m(10)).collect()).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let big = batches((0..5).map(|_| m(100 * 1024)).collect());
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    }
}
