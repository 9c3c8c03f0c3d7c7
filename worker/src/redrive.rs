//! The fleet's dead-letter queues, read and sent back: what `opsfleet dlq list` shows and what
//! `opsfleet dlq redrive` does, as library functions over the ports.

use crate::ledger::Ledger;
use opsfleet_protocol::ports::{send_all, Backend, PortError, Queue, QueueError, ReceivedMessage};
use opsfleet_protocol::{names, Config, DeadLetter, Job};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Which dead-letter queues to work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Which {
    /// `<name>-events-dlq`: events the router rejected.
    Events,
    /// `<name>-jobs-<p>-dlq.fifo`: jobs that failed for good, and bodies that were not jobs.
    Jobs,
    /// `<name>-checks-dlq`: completion checks that kept failing.
    Checks,
    /// All of them.
    All,
}

/// A dead-letter queue and the queue its messages go back to.
pub struct DeadLetterQueue {
    /// The dead-letter queue.
    pub dead: Arc<dyn Queue>,
    /// Where its messages came from.
    pub live: Arc<dyn Queue>,
}

/// The fleet's dead-letter queues of `which` kind, each with its live queue.
pub async fn dead_letter_queues(
    backend: &dyn Backend,
    config: &Config,
    which: Which,
) -> Result<Vec<DeadLetterQueue>, QueueError> {
    let fleet = &config.fleet.name;
    let mut pairs = Vec::new();
    if matches!(which, Which::Events | Which::All) {
        pairs.push((names::events_dlq(fleet), names::events_queue(fleet)));
    }
    if matches!(which, Which::Jobs | Which::All) {
        for p in 0..config.fleet.partitions.get() {
            pairs.push((names::jobs_dlq(fleet, p), names::jobs_queue(fleet, p)));
        }
    }
    if matches!(which, Which::Checks | Which::All) {
        pairs.push((names::checks_dlq(fleet), names::checks_queue(fleet)));
    }
    let mut out = Vec::new();
    for (dead, live) in pairs {
        out.push(DeadLetterQueue { dead: backend.queue(&dead).await?, live: backend.queue(&live).await? });
    }
    Ok(out)
}

/// Receives up to `max` messages of a queue, hiding each for `hide` so that each is seen once.
async fn take(queue: &dyn Queue, max: usize, hide: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
    let mut out = Vec::new();
    while out.len() < max {
        let got = queue.receive((max - out.len()).min(10), Duration::from_secs(1), Some(hide)).await?;
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    Ok(out)
}

/// Up to `max` dead letters of a queue, with their messages; they stay in their queue. A jobs
/// DLQ (FIFO, one group per resource) shows the oldest dead letter of each resource: SQS shows
/// no more of a FIFO group until that one is gone.
pub async fn list(queue: &dyn Queue, max: usize) -> Result<Vec<(ReceivedMessage, DeadLetter)>, QueueError> {
    let messages = take(queue, max, Duration::from_secs(30)).await?;
    let letters = messages.iter().map(|m| (m.clone(), DeadLetter::read(m))).collect();
    for m in &messages {
        queue.change_visibility(&m.receipt, Duration::ZERO).await?;
    }
    Ok(letters)
}

/// What a redrive did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Sent back to its live queue (and, for a job, reopened in the ledger) and deleted here.
    Sent {
        /// The dead letter's message id.
        message_id: String,
    },
    /// Left in place: its body is not a job, and only jobs run on a job queue.
    NotAJob {
        /// The dead letter's message id.
        message_id: String,
    },
}

/// Sends up to `max` dead letters of one queue back where they came from, then deletes them
/// from the dead-letter queue. A job goes back to its partition in its resource's group with a
/// new deduplication id (`stamp` names the redrive), so FIFO deduplication does not swallow it,
/// and a job that failed for good or was cancelled is reopened in the ledger first, so that it
/// runs again. Only what is there when it starts is redriven: a redriven event the router
/// rejects again lands there anew.
pub async fn redrive(
    pair: &DeadLetterQueue,
    ledger: &Ledger,
    max: usize,
    stamp: u128,
) -> Result<Vec<Redriven>, PortError> {
    let mut done = Vec::new();
    let mut left = HashSet::new();
    let there = pair.dead.depth().await?.visible as usize;
    let limit = max.min(there);
    let mut redriven = 0;
    // Batch by batch: a FIFO DLQ shows more only once what it showed is gone.
    while redriven < limit {
        let batch = take(pair.dead.as_ref(), (limit - redriven).min(10), Duration::from_secs(60)).await?;
        let mut progressed = false;
        for m in batch {
            let letter = DeadLetter::read(&m);
            let Some(out) = letter.redrive_message(pair.live.name(), stamp) else {
                if left.insert(m.message_id.clone()) {
                    done.push(Redriven::NotAJob { message_id: m.message_id.clone() });
                }
                pair.dead.change_visibility(&m.receipt, Duration::ZERO).await?;
                continue;
            };
            if let (true, Ok(job)) = (pair.live.name().ends_with(".fifo"), Job::from_json(&letter.body)) {
                ledger.reopen(&job.id).await?;
            }
            // When it cannot be sent, it stays in the DLQ: visible again soon, for a later redrive.
            send_all(pair.live.as_ref(), vec![out]).await?;
            pair.dead.delete_batch(std::slice::from_ref(&m.receipt)).await?;
            done.push(Redriven::Sent { message_id: m.message_id });
            redriven += 1;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(done)
}
