//! The queue port: SQS semantics (batches of ten, visibility timeouts, receive counts, FIFO
//! message groups and deduplication, per-message delay).

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// The most messages one call sends, receives or deletes.
pub const MAX_BATCH: usize = 10;

/// The longest delay SQS applies to one message.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body.
    pub body: String,
    /// The FIFO message group (required on FIFO queues).
    pub group_id: Option<String>,
    /// The FIFO deduplication id (required on FIFO queues without content deduplication).
    pub dedup_id: Option<String>,
    /// Delay before the message becomes visible (standard queues only).
    pub delay: Option<Duration>,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The queue's id of the message.
    pub message_id: String,
    /// The handle that deletes the message or changes its visibility, valid for this receive.
    pub receipt: String,
    /// The body.
    pub body: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// When the message was first sent, in Unix milliseconds.
    pub sent_ms: u64,
    /// The FIFO message group, if any.
    pub group_id: Option<String>,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// One entry of a batch send that the queue did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// The index of the message in the batch.
    pub index: usize,
    /// The error code.
    pub code: String,
    /// The error message.
    pub message: String,
    /// Whether the fault is the sender's (retrying the same entry will fail again).
    pub sender_fault: bool,
}

/// One entry of a batch delete or visibility change that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    /// The index of the receipt in the batch.
    pub index: usize,
    /// The error code and message.
    pub message: String,
    /// Whether the fault is the caller's (an invalid or outdated receipt): retrying the same
    /// entry will fail again.
    pub sender_fault: bool,
}

/// Approximate message counts of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Messages ready to receive.
    pub visible: u64,
    /// Messages received and not yet deleted or returned.
    pub in_flight: u64,
    /// Messages waiting out a delay.
    pub delayed: u64,
}

/// What a queue should be when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue name (FIFO names end in `.fifo`).
    pub name: String,
    /// Default visibility timeout.
    pub visibility: Duration,
    /// How long messages are kept.
    pub retention: Duration,
    /// The dead-letter queue and the receive count after which messages move there.
    pub dead_letter: Option<(String, u32)>,
}

impl QueueSpec {
    /// Whether the queue is FIFO (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.name.ends_with(".fifo")
    }
}

/// Why a queue call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue does not exist.
    #[error("queue {queue} does not exist (run `opsfleet setup`)")]
    NotFound {
        /// The queue name.
        queue: String,
    },
    /// A request was refused as invalid; retrying it will not help.
    #[error("queue {queue}: {operation} refused: {message}")]
    Invalid {
        /// The queue name.
        queue: String,
        /// The operation, such as `SendMessageBatch`.
        operation: &'static str,
        /// The service's message.
        message: String,
    },
    /// The call failed in transport, was throttled, or hit a server error; retry later.
    #[error("queue {queue}: {operation} failed: {message}")]
    Unavailable {
        /// The queue name.
        queue: String,
        /// The operation.
        operation: &'static str,
        /// What happened.
        message: String,
    },
}

impl QueueError {
    /// Whether trying again later may succeed (transport, throttling, a server error).
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Unavailable { .. })
    }
}

/// One queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// The queue's name.
    fn name(&self) -> &str;

    /// Sends up to [`MAX_BATCH`] messages; returns the entries not accepted.
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError>;

    /// Sends one message; an entry the queue did not accept becomes an error (`Invalid` when
    /// it is the sender's fault, `Unavailable` otherwise).
    async fn send_one(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        match self.send_batch(std::slice::from_ref(&message)).await?.into_iter().next() {
            None => Ok(()),
            Some(f) => {
                let (queue, operation, message) =
                    (self.name().to_owned(), "SendMessageBatch", format!("{}: {}", f.code, f.message));
                Err(if f.sender_fault {
                    QueueError::Invalid { queue, operation, message }
                } else {
                    QueueError::Unavailable { queue, operation, message }
                })
            }
        }
    }

    /// Receives up to `max` messages (at most [`MAX_BATCH`]), waiting up to `wait` for the
    /// first, hiding them for `visibility` (the queue's default when `None`).
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Deletes up to [`MAX_BATCH`] messages by receipt; returns the ones that failed.
    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError>;

    /// Sets a received message's visibility timeout, counted from now (zero returns it).
    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;

    /// Sets the visibility of up to [`MAX_BATCH`] received messages in one call; returns the
    /// entries that failed.
    async fn change_visibility_batch(&self, entries: &[(String, Duration)]) -> Result<Vec<DeleteFailure>, QueueError> {
        let mut failed = Vec::new();
        for (index, (receipt, visibility)) in entries.iter().enumerate() {
            match self.change_visibility(receipt, *visibility).await {
                Ok(()) => {}
                Err(QueueError::Unavailable { message, .. }) => {
                    failed.push(DeleteFailure { index, message, sender_fault: false })
                }
                Err(e) => failed.push(DeleteFailure { index, message: e.to_string(), sender_fault: true }),
            }
        }
        Ok(failed)
    }

    /// Approximate message counts.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
}
