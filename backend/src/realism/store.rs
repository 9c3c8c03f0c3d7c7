//! A table as DynamoDB serves it: eventually consistent reads a moment behind, indexes that miss
//! recent writes, and writes applied whose reply is lost and which the SDK sends again.

use super::Realism;
use async_trait::async_trait;
use opsfleet_protocol::ports::{Attrs, Cond, IndexQuery, Item, Key, Store, StoreError, Update};
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Chooses the writes whose reply is lost: an update's key and update.
pub type LostReply = Box<dyn Fn(&Key, &Update) -> bool + Send + Sync>;

/// Per item, what it was before each write of the last `read_lag`, oldest first.
type History = HashMap<Key, VecDeque<(Instant, Option<Attrs>)>>;

/// One write to lose on purpose, and how late its retry comes.
struct Planned {
    matches: LostReply,
    retry_after: Duration,
}

/// A table with DynamoDB's unkindness around another (see [`Realism`]).
pub struct EventualStore {
    inner: std::sync::Arc<dyn Store>,
    realism: Realism,
    history: Mutex<History>,
    /// A write and the reading of what it replaces go together.
    writing: tokio::sync::Mutex<()>,
    planned: Mutex<Vec<Planned>>,
    lost: std::sync::atomic::AtomicU64,
}

impl EventualStore {
    /// The layer around a table.
    pub fn new(inner: std::sync::Arc<dyn Store>, realism: Realism) -> Self {
        EventualStore {
            inner,
            realism,
            history: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
            planned: Mutex::default(),
            lost: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Loses the reply of the next update that `matches`: it is applied, and sent again
    /// `retry_after` later, whose answer the caller gets.
    pub fn lose_reply_of_next(&self, matches: LostReply, retry_after: Duration) {
        self.planned.lock().unwrap_or_else(PoisonError::into_inner).push(Planned { matches, retry_after });
    }

    /// How many replies were lost so far.
    pub fn lost_replies(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The item as an eventually consistent read sees it: as it was `read_lag` ago, when a
    /// write came since; `None` when no write came since (the current item is what it was).
    fn lagged(&self, key: &Key) -> Option<Option<Attrs>> {
        let horizon = Instant::now().checked_sub(self.realism.read_lag)?;
        let mut history = self.history();
        let writes = history.get_mut(key)?;
        while writes.front().is_some_and(|(at, _)| *at <= horizon) {
            writes.pop_front();
        }
        let before = writes.front().map(|(_, attrs)| attrs.clone());
        if writes.is_empty() {
            history.remove(key);
        }
        before
    }

    /// Runs a write, remembering what it replaces for the reads that lag behind it.
    async fn write<T, F>(&self, key: &Key, lose: Option<Duration>, call: impl Fn() -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let first = self.recorded(key, &call).await;
        let Some(retry_after) = lose else { return first };
        if matches!(first, Err(ref e) if e.is_transient()) {
            return first;
        }
        // Applied (or refused), and the reply lost: the SDK sends the same request again.
        self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(retry_after).await;
        self.recorded(key, &call).await
    }

    async fn recorded<T, F>(&self, key: &Key, call: &impl Fn() -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        if self.realism.read_lag.is_zero() {
            return call().await;
        }
        let _writing = self.writing.lock().await;
        let before = self.inner.get(key).await?.map(|item| item.attrs);
        let result = call().await;
        if result.is_ok() {
            self.history().entry(key.clone()).or_default().push_back((Instant::now(), before));
        }
        result
    }

    /// Whether this write's reply is lost, and how late its retry comes.
    fn lose(&self, key: &Key, update: Option<&Update>) -> Option<Duration> {
        if let Some(update) = update {
            let mut planned = self.planned.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = planned.iter().position(|p| (p.matches)(key, update)) {
                return Some(planned.remove(at).retry_after);
            }
        }
        let share = self.realism.lost_replies;
        (share > 0.0 && rand::thread_rng().gen_bool(share.min(1.0))).then_some(self.realism.retry_after)
    }
}

#[async_trait]
impl Store for EventualStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.inner.get(key).await
    }

    async fn peek(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        match self.lagged(key) {
            Some(attrs) => Ok(attrs.map(|attrs| Item { key: key.clone(), attrs })),
            None => self.inner.get(key).await,
        }
    }

    async fn put(&self, item: Item, cond: Cond) -> Result<(), StoreError> {
        let key = item.key.clone();
        let lose = self.lose(&key, None);
        self.write(&key, lose, || self.inner.put(item.clone(), cond.clone())).await
    }

    async fn update(&self, key: &Key, update: Update, cond: Cond) -> Result<Item, StoreError> {
        let lose = self.lose(key, Some(&update));
        self.write(key, lose, || self.inner.update(key, update.clone(), cond.clone())).await
    }

    async fn delete(&self, key: &Key, cond: Cond) -> Result<(), StoreError> {
        let lose = self.lose(key, None);
        self.write(key, lose, || self.inner.delete(key, cond.clone())).await
    }

    async fn query_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.inner.query_prefix(pk, sk_prefix).await
    }

    async fn query_index(&self, query: &IndexQuery) -> Result<Vec<Key>, StoreError> {
        // An index is a moment behind its table: an item whose indexed attribute was written
        // within the lag is not (yet) found under its new value.
        let keys = self.inner.query_index(query).await?;
        Ok(keys
            .into_iter()
            .filter(|key| match self.lagged(key) {
                None => true,
                Some(before) => before.is_some_and(|attrs| {
                    attrs.get(query.index.key).and_then(|v| v.as_str()) == Some(query.value.as_str())
                }),
            })
            .collect())
    }

    async fn peek_prefix(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        for item in self.inner.query_prefix(pk, sk_prefix).await? {
            match self.lagged(&item.key) {
                None => items.push(item),
                Some(Some(attrs)) => items.push(Item { key: item.key, attrs }),
                // Not there yet, as far as this read knows.
                Some(None) => {}
            }
        }
        // Items deleted within the lag are still there for this read.
        let gone: Vec<Key> = self
            .history()
            .keys()
            .filter(|k| k.pk == pk && k.sk.starts_with(sk_prefix) && !items.iter().any(|i| &i.key == *k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(Some(attrs)) = self.lagged(&key) {
                items.push(Item { key, attrs });
            }
        }
        items.sort_by(|a, b| a.key.sk.cmp(&b.key.sk));
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedBackend;
    use opsfleet_protocol::ports::Backend;
    use std::sync::Arc;

    async fn store(realism: Realism) -> EventualStore {
        let backend = EmbeddedBackend::new();
        backend.ensure_table("t").await.expect("table");
        EventualStore::new(backend.store("t").await.expect("store"), realism)
    }

    fn set(value: &str) -> Update {
        Update::default().set("v", value)
    }

    #[tokio::test(start_paused = true)]
    async fn an_eventually_consistent_read_sees_the_item_as_it_was_a_moment_ago() {
        let s = store(Realism::stale_reads(Duration::from_secs(1))).await;
        let key = Key::new("p", "s");
        s.update(&key, set("one"), Cond::Always).await.expect("write");
        assert_eq!(s.peek(&key).await.expect("peek"), None, "a new item is not there yet for a lagging read");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.update(&key, set("two"), Cond::Always).await.expect("write");
        let peeked = s.peek(&key).await.expect("peek").expect("item");
        assert_eq!(peeked.str("v"), Some("one"), "the lagging read misses the write of the last second");
        assert_eq!(s.get(&key).await.expect("get").expect("item").str("v"), Some("two"), "a strong read does not");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(s.peek(&key).await.expect("peek").expect("item").str("v"), Some("two"));
        assert_eq!(s.peek_prefix("p", "").await.expect("query").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_reply_applies_the_write_and_answers_its_retry() {
        let s = Arc::new(store(Realism::stale_reads(Duration::ZERO)).await);
        let key = Key::new("p", "s");
        s.lose_reply_of_next(Box::new(|_, u| u.set.contains_key("v")), Duration::from_secs(2));
        let writer = {
            let s = Arc::clone(&s);
            let key = key.clone();
            tokio::spawn(async move { s.update(&key, set("one"), Cond::NotExists).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(s.get(&key).await.expect("get").is_some(), "the write was applied before its reply was lost");
        let answer = writer.await.expect("task");
        assert!(
            matches!(answer, Err(StoreError::ConditionFailed { .. })),
            "the retry of an applied conditional write is refused: {answer:?}"
        );
        assert_eq!(s.lost_replies(), 1);
    }
}
