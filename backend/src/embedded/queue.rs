//! An in-process queue with SQS semantics: visibility timeouts, receive counts, redrive to a
//! dead-letter queue after `maxReceiveCount`, FIFO message groups (a group with a message in
//! flight delivers nothing more), FIFO deduplication for five minutes, per-message delay on
//! standard queues, and long polling.

use async_trait::async_trait;
use opsfleet_protocol::ports::{
    DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec, ReceivedMessage, SendFailure, MAX_BATCH,
    MAX_DELAY,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long SQS remembers a FIFO deduplication id.
const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The most message attributes SQS takes on one message.
const MAX_ATTRIBUTES: usize = 10;

/// The longest visibility timeout SQS allows.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

struct Stored {
    id: String,
    body: String,
    attributes: BTreeMap<String, String>,
    group: Option<String>,
    visible_at: Instant,
    receive_count: u32,
    receipt: Option<String>,
    sent_ms: u64,
    /// When the current receive happened.
    received_at: Instant,
}

#[derive(Default)]
struct State {
    /// Messages by sequence number, so FIFO order is send order.
    messages: BTreeMap<u64, Stored>,
    /// Deduplication ids seen in the last five minutes, and the same in the order they came,
    /// so expiring them costs nothing per send.
    dedup: HashMap<String, Instant>,
    dedup_order: VecDeque<(Instant, String)>,
    /// Messages received at least once and not deleted: where in-flight FIFO groups are.
    received: BTreeSet<u64>,
    next_seq: u64,
    next_receipt: u64,
}

/// One in-process queue.
pub struct EmbeddedQueue {
    name: String,
    fifo: bool,
    visibility: Duration,
    dead_letter: Option<(Arc<EmbeddedQueue>, u32)>,
    state: Mutex<State>,
    arrived: Notify,
}

impl EmbeddedQueue {
    pub(super) fn new(spec: &QueueSpec, dead_letter: Option<(Arc<EmbeddedQueue>, u32)>) -> Self {
        EmbeddedQueue {
            name: spec.name.clone(),
            fifo: spec.is_fifo(),
            visibility: spec.visibility,
            dead_letter,
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bodies of every message in the queue, in send order, whatever their visibility.
    pub fn peek_bodies(&self) -> Vec<String> {
        self.state().messages.values().map(|m| m.body.clone()).collect()
    }

    /// The message attributes of every message in the queue, in send order.
    pub fn peek_attributes(&self) -> Vec<BTreeMap<String, String>> {
        self.state().messages.values().map(|m| m.attributes.clone()).collect()
    }

    fn accept(&self, state: &mut State, message: &OutgoingMessage, now: Instant) -> Result<(), (String, String)> {
        if message.attributes.len() > MAX_ATTRIBUTES {
            return Err((
                "InvalidParameterValue".into(),
                format!(
                    "Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].",
                    message.attributes.len()
                ),
            ));
        }
        if self.fifo {
            let group = message.group_id.as_deref().filter(|g| !g.is_empty());
            if group.is_none() {
                return Err((
                    "MissingParameter".into(),
                    "The request must contain the parameter MessageGroupId.".into(),
                ));
            }
            if message.delay.is_some_and(|d| !d.is_zero()) {
                return Err((
                    "InvalidParameterValue".into(),
                    "DelaySeconds per message is not supported on FIFO queues.".into(),
                ));
            }
            let Some(dedup) = message.dedup_id.as_deref().filter(|d| !d.is_empty()) else {
                return Err(("InvalidParameterValue".into(), "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly".into()));
            };
            while let Some((at, _)) = state.dedup_order.front() {
                if now.duration_since(*at) < DEDUP_WINDOW {
                    break;
                }
                if let Some((at, id)) = state.dedup_order.pop_front() {
                    if state.dedup.get(&id) == Some(&at) {
                        state.dedup.remove(&id);
                    }
                }
            }
            if state.dedup.contains_key(dedup) {
                return Ok(());
            }
            state.dedup.insert(dedup.to_owned(), now);
            state.dedup_order.push_back((now, dedup.to_owned()));
        } else if message.group_id.is_some() || message.dedup_id.is_some() {
            return Err((
                "InvalidParameterValue".into(),
                "MessageGroupId and MessageDeduplicationId are for FIFO queues only.".into(),
            ));
        }
        let delay = message.delay.unwrap_or_default();
        if delay > MAX_DELAY {
            return Err(("InvalidParameterValue".into(), format!("DelaySeconds {} is over 900.", delay.as_secs())));
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.messages.insert(
            seq,
            Stored {
                id: format!("{}-{seq}", self.name),
                body: message.body.clone(),
                attributes: message.attributes.clone(),
                group: message.group_id.clone(),
                visible_at: now + delay,
                receive_count: 0,
                receipt: None,
                sent_ms: unix_ms(),
                received_at: now,
            },
        );
        Ok(())
    }

    fn take(&self, max: usize, visibility: Duration) -> (Vec<ReceivedMessage>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.state();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut next_visible: Option<Instant> = None;
        if self.fifo {
            for seq in &state.received {
                if let Some(m) = state.messages.get(seq) {
                    if m.visible_at > now {
                        if let Some(g) = &m.group {
                            blocked.insert(g.clone());
                        }
                        // Wake a long poll when an in-flight message comes back.
                        next_visible = Some(next_visible.map_or(m.visible_at, |n: Instant| n.min(m.visible_at)));
                    }
                }
            }
        }
        let mut chosen = Vec::new();
        let mut redrive = Vec::new();
        for (seq, m) in state.messages.iter() {
            if chosen.len() >= max {
                break;
            }
            let group_blocked = m.group.as_ref().is_some_and(|g| blocked.contains(g));
            if group_blocked {
                continue;
            }
            if m.visible_at > now {
                next_visible = Some(next_visible.map_or(m.visible_at, |n| n.min(m.visible_at)));
                if let Some(g) = &m.group {
                    blocked.insert(g.clone());
                }
                continue;
            }
            match &self.dead_letter {
                Some((_, max_receive)) if m.receive_count >= *max_receive => redrive.push(*seq),
                _ => chosen.push(*seq),
            }
        }
        for seq in redrive {
            state.received.remove(&seq);
            if let (Some(m), Some((dlq, _))) = (state.messages.remove(&seq), &self.dead_letter) {
                dlq.receive_redriven(m);
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for seq in chosen {
            state.next_receipt += 1;
            state.received.insert(seq);
            let receipt = format!("{}#{seq}#{}", self.name, state.next_receipt);
            if let Some(m) = state.messages.get_mut(&seq) {
                m.receive_count += 1;
                m.visible_at = now + visibility;
                m.received_at = now;
                m.receipt = Some(receipt.clone());
                out.push(ReceivedMessage {
                    message_id: m.id.clone(),
                    receipt,
                    body: m.body.clone(),
                    receive_count: m.receive_count,
                    sent_ms: m.sent_ms,
                    group_id: m.group.clone(),
                    attributes: m.attributes.clone(),
                });
            }
        }
        (out, next_visible)
    }

    /// Takes a message moved here by redrive, keeping its id, body and attributes.
    fn receive_redriven(&self, mut m: Stored) {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        m.receive_count = 0;
        m.receipt = None;
        m.visible_at = Instant::now();
        if !self.fifo {
            m.group = None;
        }
        state.messages.insert(seq, m);
        drop(state);
        self.arrived.notify_waiters();
    }

    fn find_receipt(state: &State, receipt: &str) -> Option<u64> {
        let seq: u64 = receipt.rsplit('#').nth(1)?.parse().ok()?;
        let m = state.messages.get(&seq)?;
        (m.receipt.as_deref() == Some(receipt)).then_some(seq)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(QueueError::Invalid {
                queue: self.name.clone(),
                operation: "SendMessageBatch",
                message: format!("a batch holds 1 to {MAX_BATCH} messages, not {}", messages.len()),
            });
        }
        let now = Instant::now();
        let mut failures = Vec::new();
        {
            let mut state = self.state();
            for (index, message) in messages.iter().enumerate() {
                if let Err((code, text)) = self.accept(&mut state, message, now) {
                    failures.push(SendFailure { index, code, message: text, sender_fault: true });
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(failures)
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = max.clamp(1, MAX_BATCH);
        let visibility = visibility.unwrap_or(self.visibility).min(MAX_VISIBILITY);
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let (messages, next_visible) = self.take(max, visibility);
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let wake = next_visible.map_or(deadline, |n| n.min(deadline));
            let _ = tokio::time::timeout_at(wake, arrived).await;
        }
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        let mut state = self.state();
        let mut failures = Vec::new();
        for (index, receipt) in receipts.iter().enumerate() {
            match Self::find_receipt(&state, receipt) {
                Some(seq) => {
                    state.messages.remove(&seq);
                    state.received.remove(&seq);
                }
                None => failures.push(DeleteFailure {
                    index,
                    message: format!("ReceiptHandleIsInvalid: {receipt} is not the current receipt of a message"),
                    sender_fault: true,
                }),
            }
        }
        drop(state);
        // Deleting an in-flight FIFO message unblocks its group.
        self.arrived.notify_waiters();
        Ok(failures)
    }

    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let now = Instant::now();
        let mut state = self.state();
        let invalid = |message: String| QueueError::Invalid {
            queue: self.name.clone(),
            operation: "ChangeMessageVisibility",
            message,
        };
        let seq =
            Self::find_receipt(&state, receipt).ok_or_else(|| invalid(format!("ReceiptHandleIsInvalid: {receipt}")))?;
        let m = state.messages.get_mut(&seq).ok_or_else(|| invalid(format!("ReceiptHandleIsInvalid: {receipt}")))?;
        if m.visible_at <= now {
            return Err(invalid(format!("MessageNotInflight: {}", m.id)));
        }
        // As in SQS, a message stays hidden at most 12 hours from when it was received.
        if now + visibility > m.received_at + MAX_VISIBILITY {
            return Err(invalid(format!(
                "InvalidParameterValue: visibility {} s would hide {} past 12 hours from its receive",
                visibility.as_secs(),
                m.id
            )));
        }
        m.visible_at = now + visibility;
        drop(state);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let now = Instant::now();
        let state = self.state();
        let mut depth = QueueDepth::default();
        for m in state.messages.values() {
            if m.visible_at <= now {
                depth.visible += 1;
            } else if m.receive_count > 0 {
                depth.in_flight += 1;
            } else {
                depth.delayed += 1;
            }
        }
        Ok(depth)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receive_brings_as_many_messages_of_a_group_as_it_can_in_order() {
        let spec = QueueSpec {
            name: "q.fifo".into(),
            visibility: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            dead_letter: None,
        };
        let q = EmbeddedQueue::new(&spec, None);
        let messages: Vec<OutgoingMessage> = (0..4)
            .map(|i| OutgoingMessage {
                body: format!("a{i}"),
                group_id: Some("A".into()),
                dedup_id: Some(format!("d{i}")),
                ..Default::default()
            })
            .collect();
        assert!(q.send_batch(&messages).await.expect("send").is_empty());
        let got = q.receive(10, Duration::ZERO, None).await.expect("receive");
        assert_eq!(got.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["a0", "a1", "a2", "a3"], "as SQS does");
        assert!(q.receive(10, Duration::ZERO, None).await.expect("receive").is_empty(), "the group is in flight");
    }
}
