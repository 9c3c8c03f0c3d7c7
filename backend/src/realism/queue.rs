//! A standard queue as SQS serves it: at least once, so now and then a message is delivered a
//! second time, to whichever receive comes next, while its first delivery is still being handled.

use async_trait::async_trait;
use opsfleet_protocol::ports::{
    DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, ReceivedMessage, SendFailure,
};
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The receipts of second deliveries start with this; deleting one, or changing its visibility,
/// succeeds and does nothing (the first delivery's receipt is the one that counts).
const SECOND: &str = "second-delivery#";

/// A standard queue that delivers some messages twice.
pub struct DuplicatingQueue {
    inner: Arc<dyn Queue>,
    share: f64,
    waiting: Mutex<Vec<ReceivedMessage>>,
    delivered: AtomicU64,
}

impl DuplicatingQueue {
    /// The layer around a standard queue; `share` of its messages are delivered twice.
    pub fn new(inner: Arc<dyn Queue>, share: f64) -> Self {
        DuplicatingQueue { inner, share, waiting: Mutex::default(), delivered: AtomicU64::new(0) }
    }

    /// How many second deliveries were made so far.
    pub fn second_deliveries(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Queue for DuplicatingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        self.inner.send_batch(messages).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let mut out: Vec<ReceivedMessage> = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let n = waiting.len().min(max);
            waiting.drain(..n).collect()
        };
        self.delivered.fetch_add(out.len() as u64, Ordering::SeqCst);
        if out.len() < max {
            let wait = if out.is_empty() { wait } else { Duration::ZERO };
            let received = self.inner.receive(max - out.len(), wait, visibility).await?;
            let mut rng = rand::thread_rng();
            let mut again = Vec::new();
            for message in &received {
                if rng.gen_bool(self.share.clamp(0.0, 1.0)) {
                    let mut copy = message.clone();
                    copy.receipt = format!("{SECOND}{}", message.receipt);
                    copy.receive_count += 1;
                    again.push(copy);
                }
            }
            self.waiting.lock().unwrap_or_else(PoisonError::into_inner).extend(again);
            out.extend(received);
        }
        Ok(out)
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        let real: Vec<(usize, String)> =
            receipts.iter().enumerate().filter(|(_, r)| !r.starts_with(SECOND)).map(|(i, r)| (i, r.clone())).collect();
        if real.is_empty() {
            return Ok(Vec::new());
        }
        let sent: Vec<String> = real.iter().map(|(_, r)| r.clone()).collect();
        let failures = self.inner.delete_batch(&sent).await?;
        Ok(failures.into_iter().map(|f| DeleteFailure { index: real[f.index].0, ..f }).collect())
    }

    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        if receipt.starts_with(SECOND) {
            return Ok(());
        }
        self.inner.change_visibility(receipt, visibility).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedBackend;
    use opsfleet_protocol::ports::{Backend, QueueSpec};

    #[tokio::test]
    async fn a_message_is_delivered_again_to_the_next_receive_while_its_first_delivery_runs() {
        let backend = EmbeddedBackend::new();
        let spec = QueueSpec {
            name: "q".into(),
            visibility: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            dead_letter: None,
        };
        backend.ensure_queue(&spec).await.expect("queue");
        let q = DuplicatingQueue::new(backend.queue("q").await.expect("queue"), 1.0);
        q.send_one(OutgoingMessage { body: "m".into(), ..Default::default() }).await.expect("send");
        let first = q.receive(10, Duration::ZERO, None).await.expect("receive");
        let second = q.receive(10, Duration::ZERO, None).await.expect("receive");
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_eq!(first[0].message_id, second[0].message_id, "the same message, twice");
        assert!(q.delete_batch(&[second[0].receipt.clone()]).await.expect("delete").is_empty());
        assert!(q.delete_batch(&[first[0].receipt.clone()]).await.expect("delete").is_empty());
        assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());
        assert_eq!(q.second_deliveries(), 1);
    }
}
