//! A counting layer around any backend: every queue and store call by operation, so tests and
//! the load test report what a job costs in requests (SQS requests, DynamoDB reads and writes)
//! instead of guessing.

use async_trait::async_trait;
use opsfleet_protocol::ports::{
    Backend, Cond, DeleteFailure, IndexQuery, Item, Key, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec,
    ReceivedMessage, SendFailure, Store, StoreError, Update,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Requests by operation name (`UpdateItem`, `GetItem(eventual)`, `ReceiveMessage`, …), and
/// SQS requests by queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls by operation.
    pub by_operation: BTreeMap<&'static str, u64>,
    /// SQS calls by queue name.
    pub by_queue: BTreeMap<String, u64>,
}

impl Counts {
    fn sum(&self, ops: &[&str]) -> u64 {
        ops.iter().map(|op| self.by_operation.get(op).copied().unwrap_or(0)).sum()
    }

    /// DynamoDB writes: `PutItem`, `UpdateItem`, `DeleteItem` (refused conditional writes
    /// included: DynamoDB charges them too).
    pub fn writes(&self) -> u64 {
        self.sum(&["PutItem", "UpdateItem", "DeleteItem"])
    }

    /// Strongly consistent DynamoDB reads (`GetItem`, `Query`).
    pub fn strong_reads(&self) -> u64 {
        self.sum(&["GetItem", "Query"])
    }

    /// Eventually consistent DynamoDB reads.
    pub fn eventual_reads(&self) -> u64 {
        self.sum(&["GetItem(eventual)", "Query(eventual)"])
    }

    /// SQS requests of every kind.
    pub fn sqs_requests(&self) -> u64 {
        self.sum(&[
            "SendMessageBatch",
            "ReceiveMessage",
            "DeleteMessageBatch",
            "ChangeMessageVisibility",
            "ChangeMessageVisibilityBatch",
            "GetQueueAttributes",
        ])
    }

    /// SQS requests to the queues whose names satisfy `which`.
    pub fn sqs_requests_to(&self, which: impl Fn(&str) -> bool) -> u64 {
        self.by_queue.iter().filter(|(name, _)| which(name)).map(|(_, n)| n).sum()
    }

    /// What happened between an earlier snapshot and this one.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut later = self.clone();
        for (op, n) in &earlier.by_operation {
            if let Some(now) = later.by_operation.get_mut(op) {
                *now = now.saturating_sub(*n);
            }
        }
        for (queue, n) in &earlier.by_queue {
            if let Some(now) = later.by_queue.get_mut(queue) {
                *now = now.saturating_sub(*n);
            }
        }
        later
    }
}

#[derive(Default)]
struct Counter(Mutex<Counts>);

impl Counter {
    fn count(&self, op: &'static str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner).by_operation.entry(op).or_default() += 1;
    }

    fn count_sqs(&self, op: &'static str, queue: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.by_operation.entry(op).or_default() += 1;
        match counts.by_queue.get_mut(queue) {
            Some(n) => *n += 1,
            None => {
                counts.by_queue.insert(queue.to_owned(), 1);
            }
        }
    }
}

/// A backend whose every call is counted.
#[derive(Clone)]
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    counter: Arc<Counter>,
}

impl CountingBackend {
    /// Counts the calls made through `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        CountingBackend { inner, counter: Arc::default() }
    }

    /// The calls so far.
    pub fn counts(&self) -> Counts {
        self.counter.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl Backend for CountingBackend {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        let inner = self.inner.queue(name).await?;
        Ok(Arc::new(CountingQueue { inner, counter: Arc::clone(&self.counter) }))
    }

    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        let inner = self.inner.store(table).await?;
        Ok(Arc::new(CountingStore { inner, counter: Arc::clone(&self.counter) }))
    }

    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        self.inner.ensure_queue(spec).await
    }

    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.inner.ensure_table(table).await
    }
}

struct CountingQueue {
    inner: Arc<dyn Queue>,
    counter: Arc<Counter>,
}

#[async_trait]
impl Queue for CountingQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        self.counter.count_sqs("SendMessageBatch", self.inner.name());
        self.inner.send_batch(messages).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.counter.count_sqs("ReceiveMessage", self.inner.name());
        self.inner.receive(max, wait, visibility).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        self.counter.count_sqs("DeleteMessageBatch", self.inner.name());
        self.inner.delete_batch(receipts).await
    }

    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.counter.count_sqs("ChangeMessageVisibility", self.inner.name());
        self.inner.change_visibility(receipt, visibility).await
    }

    async fn change_visibility_batch(&self, entries: &[(String, Duration)]) -> Result<Vec<DeleteFailure>, QueueError> {
        self.counter.count_sqs("ChangeMessageVisibilityBatch", self.inner.name());
        self.inner.change_visibility_batch(entries).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.counter.count_sqs("GetQueueAttributes", self.inner.name());
        self.inner.depth().await
    }
}

struct CountingStore {
    inner: Arc<dyn Store>,
    counter: Arc<Counter>,
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.counter.count("GetItem");
        self.inner.get(key).await
    }

    async fn peek(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.counter.count("GetItem(eventual)");
        self.inner.peek(key).await
    }

    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError> {
        self.counter.count("PutItem");
        self.inner.put(item, cond).await
    }

    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError> {
        self.counter.count("UpdateItem");
        self.inner.update(key, update, cond).await
    }

    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError> {
        self.counter.count("DeleteItem");
        self.inner.delete(key, cond).await
    }

    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.counter.count("Query");
        self.inner.query_prefix(pk, sk_prefix).await
    }

    async fn peek_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.counter.count("Query(eventual)");
        self.inner.peek_prefix(pk, sk_prefix).await
    }

    async fn query_index(&self, query: &IndexQuery) -> Result<Vec<Key>, StoreError> {
        self.counter.count("Query(index)");
        self.inner.query_index(query).await
    }
}
