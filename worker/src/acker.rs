//! What the worker tells a queue about the messages it holds, in batches of ten: deletes of
//! finished messages, hand-backs (a visibility change), and the visibility heartbeat of every
//! message it still holds, running or waiting. Entries a batch did not take are retried, unless
//! the queue says the receipt itself is bad (the message is gone or was received again).

use crate::telemetry::WorkerCallFailed;
use opsfleet_protocol::ports::{DeleteFailure, Queue, QueueError, MAX_BATCH};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a batch gathers entries before it is sent.
const GATHER: Duration = Duration::from_millis(20);

/// How many times an entry a batch did not take is tried again.
const RETRIES: u32 = 4;

/// One thing to tell the queue about a received message.
#[derive(Debug, Clone)]
enum Ack {
    Delete(String),
    Hide(String, Duration),
}

/// The messages of one queue this process holds, and the batches that delete, hand back and
/// keep them hidden.
#[derive(Clone)]
pub(crate) struct Acker {
    queue: Arc<dyn Queue>,
    tx: mpsc::UnboundedSender<Ack>,
    held: Arc<Mutex<HashSet<String>>>,
}

impl Acker {
    /// Starts the batching task of a queue; it ends once every `Acker` clone is dropped and
    /// what was sent is done.
    pub(crate) fn start(queue: Arc<dyn Queue>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::clone(&queue), rx));
        (Acker { queue, tx, held: Arc::default() }, task)
    }

    /// The queue.
    pub(crate) fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Starts keeping a received message hidden.
    pub(crate) fn hold(&self, receipt: &str) {
        self.held().insert(receipt.to_owned());
    }

    /// Deletes a message (it is done with).
    pub(crate) fn delete(&self, receipt: &str) {
        self.held().remove(receipt);
        let _ = self.tx.send(Ack::Delete(receipt.to_owned()));
    }

    /// Hands a message back, visible again after `after`.
    pub(crate) fn hand_back(&self, receipt: &str, after: Duration) {
        self.held().remove(receipt);
        let _ = self.tx.send(Ack::Hide(receipt.to_owned(), after));
    }

    /// Extends the visibility of every message held, in batches: the heartbeat of running and
    /// waiting jobs alike.
    pub(crate) fn extend_all(&self, visibility: Duration) {
        let receipts: Vec<String> = self.held().iter().cloned().collect();
        for receipt in receipts {
            let _ = self.tx.send(Ack::Hide(receipt, visibility));
        }
    }

    /// How many messages are held.
    pub(crate) fn len(&self) -> usize {
        self.held().len()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn run(queue: Arc<dyn Queue>, mut rx: mpsc::UnboundedReceiver<Ack>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + GATHER;
        while batch.len() < 4 * MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ack)) => batch.push(ack),
                _ => break,
            }
        }
        // A delete wins over a visibility change of the same receipt sent before it.
        let deleted: HashSet<String> =
            batch.iter().filter_map(|a| if let Ack::Delete(r) = a { Some(r.clone()) } else { None }).collect();
        let mut deletes: Vec<String> = deleted.iter().cloned().collect();
        let mut hides: HashMap<String, Duration> = HashMap::new();
        for ack in batch {
            if let Ack::Hide(receipt, after) = ack {
                if !deleted.contains(&receipt) {
                    hides.insert(receipt, after);
                }
            }
        }
        deletes.sort();
        for chunk in deletes.chunks(MAX_BATCH) {
            let chunk: Vec<String> = chunk.to_vec();
            send(&*queue, "delete", chunk, |q, entries| Box::pin(async move { q.delete_batch(&entries).await })).await;
        }
        let hides: Vec<(String, Duration)> = hides.into_iter().collect();
        for chunk in hides.chunks(MAX_BATCH) {
            let chunk = chunk.to_vec();
            send(&*queue, "visibility", chunk, |q, entries| {
                Box::pin(async move { q.change_visibility_batch(&entries).await })
            })
            .await;
        }
    }
}

type BatchCall<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<DeleteFailure>, QueueError>> + Send + 'a>>;

/// Sends one batch, retrying the entries it did not take (with backoff) unless the queue
/// says the receipt is bad.
async fn send<T: Clone + Send + Sync>(
    queue: &dyn Queue,
    what: &'static str,
    mut entries: Vec<T>,
    call: impl for<'a> Fn(&'a dyn Queue, Vec<T>) -> BatchCall<'a>,
) {
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match call(queue, entries.clone()).await {
            Ok(failures) => {
                let mut again = Vec::new();
                for f in failures {
                    if f.sender_fault {
                        // The message is gone or was received again: nothing to retry.
                        tracing::debug!(queue = %queue.name(), what, error = %f.message, "A receipt is no longer valid.");
                    } else if let Some(entry) = entries.get(f.index) {
                        again.push(entry.clone());
                    }
                }
                if again.is_empty() {
                    return;
                }
                entries = again;
            }
            Err(QueueError::Unavailable { message, .. }) if attempt < RETRIES => {
                tracing::debug!(queue = %queue.name(), what, error = %message, "A batch failed; retrying.");
            }
            Err(e) => {
                WorkerCallFailed { what, error: &e.to_string() }.emit();
                return;
            }
        }
    }
    WorkerCallFailed { what, error: &format!("{} entries not taken after {RETRIES} retries", entries.len()) }.emit();
}
