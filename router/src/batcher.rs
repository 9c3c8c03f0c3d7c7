//! Batching jobs per partition across events: the jobs of every event being routed go to their
//! partition's batcher, which sends them ten to a `SendMessageBatch` (or fewer when
//! [`LINGER`] passes first), so an event that names one resource does not cost a request of
//! its own. Each job learns what became of it, entry by entry: one event's job that the queue
//! refuses never fails another event's jobs of the same batch.

use opsfleet_protocol::job::MAX_JOB_BYTES;
use opsfleet_protocol::ports::SendError;
use opsfleet_protocol::ports::{OutgoingMessage, Queue, QueueError, MAX_BATCH};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The longest a job waits for others to fill its batch.
pub const LINGER: Duration = Duration::from_millis(10);

/// Attempts per entry before its event is left for redelivery.
const ATTEMPTS: u32 = 5;

/// What became of one job message.
pub type Sent = Result<(), SendError>;

struct Entry {
    message: OutgoingMessage,
    done: oneshot::Sender<Sent>,
}

/// The sending side of one partition's batcher; the batcher stops when every clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Entry>,
    queue: String,
}

impl Batcher {
    /// Starts a batcher sending to `queue`.
    pub fn start(queue: Arc<dyn Queue>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = queue.name().to_owned();
        tokio::spawn(run(queue, rx));
        Batcher { tx, queue: name }
    }

    /// Sends a message with the next batch; resolves when the queue accepted it or gave up.
    pub async fn send(&self, message: OutgoingMessage) -> Sent {
        let (done, outcome) = oneshot::channel();
        let gone = || SendError::Unavailable { queue: self.queue.clone(), message: "the batcher stopped".into() };
        self.tx.send(Entry { message, done }).map_err(|_| gone())?;
        outcome.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn size(m: &OutgoingMessage) -> usize {
    m.body.len() + m.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

async fn run(queue: Arc<dyn Queue>, mut rx: mpsc::UnboundedReceiver<Entry>) {
    let mut carried: Option<Entry> = None;
    loop {
        let first = match carried.take() {
            Some(entry) => entry,
            None => match rx.recv().await {
                Some(entry) => entry,
                None => return,
            },
        };
        let mut bytes = size(&first.message);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(entry) => Some(entry),
                Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
            };
            let Some(entry) = next else { break };
            if bytes + size(&entry.message) > MAX_JOB_BYTES {
                carried = Some(entry);
                break;
            }
            bytes += size(&entry.message);
            batch.push(entry);
        }
        // Sending runs beside the gathering of the next batch.
        tokio::spawn(send_batch(Arc::clone(&queue), batch));
    }
}

/// Sends one batch, retrying the entries the queue did not take with backoff; an entry the
/// queue refuses as invalid fails alone.
async fn send_batch(queue: Arc<dyn Queue>, batch: Vec<Entry>) {
    let mut pending = batch;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        let messages: Vec<OutgoingMessage> = pending.iter().map(|e| e.message.clone()).collect();
        let failures = match queue.send_batch(&messages).await {
            Ok(failures) => failures,
            Err(QueueError::Unavailable { message, .. }) => {
                last = message;
                continue;
            }
            Err(e) => {
                let message = e.to_string();
                for entry in pending {
                    let _ = entry
                        .done
                        .send(Err(SendError::Unavailable { queue: queue.name().to_owned(), message: message.clone() }));
                }
                return;
            }
        };
        let mut retry = Vec::new();
        let mut failed: std::collections::HashMap<usize, _> = failures.into_iter().map(|f| (f.index, f)).collect();
        for (i, entry) in pending.into_iter().enumerate() {
            match failed.remove(&i) {
                None => {
                    let _ = entry.done.send(Ok(()));
                }
                Some(f) if f.sender_fault => {
                    let _ = entry.done.send(Err(SendError::Refused {
                        queue: queue.name().to_owned(),
                        job: entry.message.dedup_id.clone().unwrap_or_default(),
                        code: f.code,
                        message: f.message,
                    }));
                }
                Some(f) => {
                    last = format!("{}: {}", f.code, f.message);
                    retry.push(entry);
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        pending = retry;
    }
    for entry in pending {
        let _ = entry.done.send(Err(SendError::Unavailable { queue: queue.name().to_owned(), message: last.clone() }));
    }
}
