//! A backend layer that injects the faults a real process meets: a crash at a chosen write
//! (every call after it fails, as if the process were gone), the table unreachable for a while,
//! queries throttled, a write that stalls (a paused
//! process), batch deletes that leave entries behind, and receives that go on server-side
//! after the caller stops waiting (as SQS's do).

use async_trait::async_trait;
use opsfleet_protocol::ports::{
    Backend, Cond, DeleteFailure, Item, Key, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec,
    ReceivedMessage, SendFailure, Store, StoreError, Update,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

type WritePredicate = Box<dyn Fn(&Key, &Update) -> bool + Send + Sync>;
type PutPredicate = Box<dyn Fn(&Item) -> bool + Send + Sync>;

/// What to inject.
#[derive(Default)]
pub struct Faults {
    /// Crash at the first update this matches: it is not applied, and every later call fails.
    pub crash_at: Mutex<Option<WritePredicate>>,
    /// Whether the crash happened.
    pub crashed: AtomicBool,
    /// The first put this matches waits this long before it is sent.
    pub stall_puts: Mutex<Option<(PutPredicate, Duration)>>,
    /// Stalled puts whose condition then failed.
    pub stalled_refused: AtomicUsize,
    /// The next this many delete entries fail (as throttled: retrying may work), undeleted.
    pub failing_deletes: AtomicUsize,
    /// The table is unreachable while this is set (the queues are not).
    pub table_down: AtomicBool,
    /// The first update this matches fails, and the table is unreachable for this long from
    /// then on.
    pub outage_at: Mutex<Option<(WritePredicate, Duration)>>,
    /// Whether `outage_at` struck.
    pub table_down_seen: AtomicBool,
    /// The next this many queries of a partition (`query_prefix`) fail, as throttled.
    pub failing_queries: AtomicUsize,
    /// Receives run on as their own task, so a receive its caller stopped waiting for still
    /// takes messages, hiding them for their visibility timeout.
    pub detached_receives: AtomicBool,
}

impl Faults {
    fn gone(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn table_gone(&self) -> bool {
        self.gone() || self.table_down.load(Ordering::SeqCst)
    }
}

/// A backend with faults injected.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// Faults in front of a backend.
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> Self {
        FaultyBackend { inner, faults }
    }
}

fn store_down(op: &'static str) -> StoreError {
    StoreError::Unavailable { table: "w".into(), operation: op, message: "the process is gone".into() }
}

fn queue_down(queue: &str, op: &'static str) -> QueueError {
    QueueError::Unavailable { queue: queue.into(), operation: op, message: "the process is gone".into() }
}

#[async_trait]
impl Backend for FaultyBackend {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(FaultyQueue { inner: self.inner.queue(name).await?, faults: Arc::clone(&self.faults) }))
    }

    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(FaultyStore { inner: self.inner.store(table).await?, faults: Arc::clone(&self.faults) }))
    }

    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        self.inner.ensure_queue(spec).await
    }

    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.inner.ensure_table(table).await
    }
}

struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Store for FaultyStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("GetItem"));
        }
        self.inner.get(key).await
    }

    async fn peek(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("GetItem"));
        }
        self.inner.peek(key).await
    }

    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("PutItem"));
        }
        let stall = {
            let mut stall = self.faults.stall_puts.lock().unwrap_or_else(PoisonError::into_inner);
            match stall.as_ref() {
                Some((matches, _)) if matches(&item) => stall.take().map(|(_, pause)| pause),
                _ => None,
            }
        };
        if let Some(pause) = stall {
            tokio::time::sleep(pause).await;
            let result = self.inner.put(item, cond).await;
            if matches!(result, Err(StoreError::ConditionFailed { .. })) {
                self.faults.stalled_refused.fetch_add(1, Ordering::SeqCst);
            }
            return result;
        }
        self.inner.put(item, cond).await
    }

    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("UpdateItem"));
        }
        let outage = {
            let mut outage = self.faults.outage_at.lock().unwrap_or_else(PoisonError::into_inner);
            match outage.as_ref() {
                Some((matches, _)) if matches(key, &update) => outage.take().map(|(_, lasts)| lasts),
                _ => None,
            }
        };
        if let Some(lasts) = outage {
            self.faults.table_down.store(true, Ordering::SeqCst);
            self.faults.table_down_seen.store(true, Ordering::SeqCst);
            let faults = Arc::clone(&self.faults);
            tokio::spawn(async move {
                tokio::time::sleep(lasts).await;
                faults.table_down.store(false, Ordering::SeqCst);
            });
            return Err(store_down("UpdateItem"));
        }
        let crash = self
            .faults
            .crash_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|at| at(key, &update));
        if crash {
            self.faults.crashed.store(true, Ordering::SeqCst);
            return Err(store_down("UpdateItem"));
        }
        self.inner.update(key, update, cond).await
    }

    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("DeleteItem"));
        }
        self.inner.delete(key, cond).await
    }

    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        let throttled =
            self.faults.failing_queries.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if self.faults.table_gone() || throttled {
            return Err(store_down("Query"));
        }
        self.inner.query_prefix(pk, sk_prefix).await
    }

    async fn peek_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("Query"));
        }
        self.inner.peek_prefix(pk, sk_prefix).await
    }

    async fn query_index(&self, query: &opsfleet_protocol::ports::IndexQuery) -> Result<Vec<Key>, StoreError> {
        if self.faults.table_gone() {
            return Err(store_down("Query"));
        }
        self.inner.query_index(query).await
    }
}

struct FaultyQueue {
    inner: Arc<dyn Queue>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        if self.faults.gone() {
            return Err(queue_down(self.name(), "SendMessageBatch"));
        }
        self.inner.send_batch(messages).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        if self.faults.gone() {
            tokio::time::sleep(wait).await;
            return Err(queue_down(self.name(), "ReceiveMessage"));
        }
        if self.faults.detached_receives.load(Ordering::SeqCst) {
            let inner = Arc::clone(&self.inner);
            return tokio::spawn(async move { inner.receive(max, wait, visibility).await })
                .await
                .unwrap_or_else(|_| Err(queue_down("?", "ReceiveMessage")));
        }
        self.inner.receive(max, wait, visibility).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        if self.faults.gone() {
            return Err(queue_down(self.name(), "DeleteMessageBatch"));
        }
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        for (index, receipt) in receipts.iter().enumerate() {
            let fail = self
                .faults
                .failing_deletes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                failed.push(DeleteFailure { index, message: "InternalError: try again".into(), sender_fault: false });
            } else {
                kept.push((index, receipt.clone()));
            }
        }
        if !kept.is_empty() {
            let receipts: Vec<String> = kept.iter().map(|(_, r)| r.clone()).collect();
            for f in self.inner.delete_batch(&receipts).await? {
                failed.push(DeleteFailure { index: kept[f.index].0, ..f });
            }
        }
        Ok(failed)
    }

    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        if self.faults.gone() {
            return Err(queue_down(self.name(), "ChangeMessageVisibility"));
        }
        self.inner.change_visibility(receipt, visibility).await
    }

    async fn change_visibility_batch(&self, entries: &[(String, Duration)]) -> Result<Vec<DeleteFailure>, QueueError> {
        if self.faults.gone() {
            return Err(queue_down(self.name(), "ChangeMessageVisibilityBatch"));
        }
        self.inner.change_visibility_batch(entries).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}
