//! Lease locks and limit slots in the store, each acquire, heartbeat and release one
//! conditional write.
//!
//! Written here rather than taken from a crate: the DynamoDB lock crates we know of
//! (`dynamodb-lock`, `rusoto_dynamodb`-era clients) hand out leases without fencing tokens, and
//! the guarantees need one: the `fence` of a lock increments on every acquisition and is never
//! reset, so the ledger can refuse the writes of a holder whose lease lapsed and was taken over.
//!
//! No lease decision compares two machines' clocks (the amazon-dynamodb-lock-client way). A
//! holder writes a fresh record version (`rvn`) with every acquire and heartbeat, and states its
//! lease as a duration. A taker that finds a lease held remembers the version and when it saw it
//! on its own monotonic clock ([`Watch`]); only when the same version is still there a whole lease
//! later may it take the lease over, with a write conditional on that version. The holder, for
//! its part, counts its lease from when it *sent* its last successful write and stops well before
//! it ends, so the holder's lease always ends before any taker's wait does.

use opsfleet_protocol::ports::{AttrValue, Cond, Item, Key, Store, StoreError, Update};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The outcome of an acquire: contention is an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours, with this fence.
    Acquired(Lease),
    /// Someone else holds it.
    Held(Holder),
}

/// What a taker saw of a held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder (`worker/job`).
    pub owner: String,
    /// The job holding it, if it said.
    pub job: Option<String>,
    /// Whether the holder is a pending job waiting for its completion check (no process holds
    /// it; the check message does).
    pub pending: bool,
    /// The lease the holder stated, counted by takers from when they first see `version`.
    pub lease: Duration,
    /// The record version: changes with every write of the holder.
    pub version: String,
}

/// A held lease: what heartbeats and releases need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The item's partition key (`lock#…` or `slot#<limit>#<pool>`).
    pub key: String,
    /// The item's sort key (`lease` for locks, the slot's index for slots).
    #[serde(default = "lock_sk")]
    pub sk: String,
    /// The holder.
    pub owner: String,
    /// The fence of this acquisition.
    pub fence: i64,
    /// The job holding it.
    #[serde(default)]
    pub job: String,
    /// The job whose holder last released the lease, if any: a job that finds itself there
    /// ran to its end under the previous holder.
    #[serde(skip)]
    pub last_job: Option<String>,
    /// The attempt of `last_job` whose outcome its holder never recorded (interrupted at
    /// shutdown, or its outcome's write failed), as JSON: the job's next run records it.
    #[serde(skip)]
    pub last_attempt: Option<String>,
    /// The holder this acquisition took the lease over from, its lease having lapsed (it
    /// crashed or hung); its fence was this one's less one.
    #[serde(skip)]
    pub took_over: Option<Holder>,
}

impl Lease {
    fn item_key(&self) -> Key {
        Key::new(&self.key, &self.sk)
    }

    /// A readable name of the leased item (`lock#…`, `slot#<limit>#<pool>#<i>`).
    pub fn name(&self) -> String {
        if self.sk == LOCK_SK {
            self.key.clone()
        } else {
            format!("{}#{}", self.key, self.sk)
        }
    }
}

const LOCK_SK: &str = "lease";

fn lock_sk() -> String {
    LOCK_SK.to_owned()
}

/// What a taker remembers of the leases it found held: the version it saw and when, on its own
/// monotonic clock.
#[derive(Debug, Default)]
pub struct Watch {
    seen: HashMap<Key, Sighting>,
}

#[derive(Debug)]
struct Sighting {
    version: String,
    since: Instant,
    lease: Duration,
    holder: Holder,
}

impl Watch {
    /// Records a sighting of a held lease; true when the same version has been there for a
    /// whole lease of the taker's own clock (the holder is gone).
    fn lapsed(&mut self, key: &Key, holder: &Holder) -> bool {
        let now = Instant::now();
        match self.seen.get_mut(key) {
            Some(seen) if seen.version == holder.version => {
                seen.lease = holder.lease;
                seen.holder = holder.clone();
                now.duration_since(seen.since) >= holder.lease
            }
            _ => {
                let seen = Sighting {
                    version: holder.version.clone(),
                    since: now,
                    lease: holder.lease,
                    holder: holder.clone(),
                };
                self.seen.insert(key.clone(), seen);
                false
            }
        }
    }

    /// The holder of a lease this watch has seen unchanged for a whole lease.
    fn lapsed_holder(&self, key: &Key) -> Option<&Holder> {
        self.seen.get(key).filter(|s| s.since.elapsed() >= s.lease).map(|s| &s.holder)
    }
}

/// What is wanted when a job waits: a lock, or a slot of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// The lock of this key (`lock#…`).
    Lock(String),
    /// A slot of this pool (`slot#<limit>#<pool>`) of this many.
    Slot {
        /// The pool's partition key.
        pool: String,
        /// The number of slots.
        max: u32,
    },
}

impl Wanted {
    /// The partition key of what is wanted: where releases are announced.
    pub fn key(&self) -> &str {
        match self {
            Wanted::Lock(key) => key,
            Wanted::Slot { pool, .. } => pool,
        }
    }
}

/// A pool of slots: its partition key (`slot#<limit>#<pool>`), how many slots it has, and
/// when its items expire (Unix seconds), if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool<'a> {
    /// The pool's partition key.
    pub key: &'a str,
    /// The number of slots.
    pub max: u32,
    /// When its slot items expire (DynamoDB TTL), if they do.
    pub expires_at: Option<i64>,
}

/// Leases in one table.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    versions: Arc<AtomicU64>,
    prefix: String,
}

impl Leases {
    /// Leases in a store. Record versions are unique per process (`prefix`, a counter).
    /// The table the leases are kept in.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Leases kept in a fleet's table.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Leases {
            store,
            wakers: Arc::default(),
            versions: Arc::default(),
            prefix: format!("{:x}-{nanos:x}", std::process::id()),
        }
    }

    fn version(&self) -> String {
        format!("{}-{}", self.prefix, self.versions.fetch_add(1, Ordering::Relaxed))
    }

    fn free() -> Cond {
        Cond::Or(vec![Cond::NotExists, Cond::Lacks("owner".into())])
    }

    /// Takes the lease of an item when it is free, or when `watch` has seen its holder's record
    /// unchanged for a whole lease. Never takes a lease from a live holder, the caller's own
    /// earlier acquisitions included: a job delivered twice waits for its first run. `owner`
    /// must be unique per acquisition, so that a write the SDK retried after its first try
    /// went through is recognised as this acquisition's own.
    async fn take(
        &self,
        key: Key,
        owner: &str,
        job: &str,
        lease: Duration,
        watch: &mut Watch,
        expires_at: Option<i64>,
    ) -> Result<Acquire, StoreError> {
        for _ in 0..3 {
            let lapsed = watch.lapsed_holder(&key).cloned();
            let cond = match &lapsed {
                Some(holder) => Cond::Or(vec![Self::free(), Cond::eq("rvn", holder.version.as_str())]),
                None => Self::free(),
            };
            let mut update = Update::default()
                .set("owner", owner)
                .set("job", job)
                .set("rvn", self.version())
                .set("lease_ms", lease.as_millis() as i64)
                .remove("pending")
                .add("fence", 1);
            if let Some(at) = expires_at {
                update = update.set("expires_at", at);
            }
            match self.store.update(&key, update, cond).await {
                Ok(item) => {
                    watch.seen.remove(&key);
                    return Ok(Acquire::Acquired(Lease {
                        key: key.pk.clone(),
                        sk: key.sk.clone(),
                        owner: owner.to_owned(),
                        fence: item.int("fence").unwrap_or(0),
                        job: job.to_owned(),
                        last_job: item.str("last_job").map(str::to_owned),
                        last_attempt: item.str("last_attempt").map(str::to_owned),
                        took_over: lapsed,
                    }));
                }
                Err(StoreError::ConditionFailed { current, .. }) => {
                    let current = match current {
                        Some(item) => Some(*item),
                        None => self.store.get(&key).await?,
                    };
                    let Some(holder) = current.as_ref().and_then(holder) else {
                        continue; // Freed meanwhile: try again at once.
                    };
                    if holder.owner == owner {
                        // This very acquisition: the SDK retried a write whose first try went
                        // through (owners are unique per acquisition).
                        watch.seen.remove(&key);
                        let fence = current.as_ref().and_then(|i| i.int("fence")).unwrap_or(0);
                        return Ok(Acquire::Acquired(Lease {
                            key: key.pk.clone(),
                            sk: key.sk.clone(),
                            owner: owner.to_owned(),
                            fence,
                            job: job.to_owned(),
                            last_job: current.as_ref().and_then(|i| i.str("last_job")).map(str::to_owned),
                            last_attempt: current.as_ref().and_then(|i| i.str("last_attempt")).map(str::to_owned),
                            took_over: lapsed,
                        }));
                    }
                    if !watch.lapsed(&key, &holder) {
                        return Ok(Acquire::Held(holder));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let current = self.store.get(&key).await?;
        Ok(current.as_ref().and_then(holder).map_or_else(|| Acquire::Held(Holder::unknown()), Acquire::Held))
    }

    /// Takes the lock `key` (`lock#…`) for `owner` running `job`.
    pub async fn acquire(
        &self,
        key: &str,
        owner: &str,
        job: &str,
        lease: Duration,
        watch: &mut Watch,
    ) -> Result<Acquire, StoreError> {
        self.take(Key::new(key, LOCK_SK), owner, job, lease, watch, None).await
    }

    /// Takes one of the slots of a pool (items under `slot#<limit>#<pool>`), reading the pool
    /// first so that a full pool costs one read, not `max` refused writes; `None` when every
    /// slot is held. Slots may carry a TTL (`expires_at`, Unix seconds).
    pub async fn acquire_slot(
        &self,
        pool: &Pool<'_>,
        owner: &str,
        job: &str,
        lease: Duration,
        watch: &mut Watch,
    ) -> Result<Option<Lease>, StoreError> {
        let Pool { key: pool, max, expires_at } = *pool;
        let held = self.pool_holders(pool).await?;
        // Free slots first, in an order that spreads holders; then lapsed ones.
        let start = rand::random::<u32>() % max.max(1);
        let mut lapsed = Vec::new();
        for i in (0..max).map(|n| (n + start) % max) {
            let key = Key::new(pool, i.to_string());
            match held.get(&i.to_string()) {
                Some(holder) => {
                    if watch.lapsed(&key, holder) {
                        lapsed.push(key);
                    }
                }
                None => {
                    if let Acquire::Acquired(lease) = self.take(key, owner, job, lease, watch, expires_at).await? {
                        return Ok(Some(lease));
                    }
                }
            }
        }
        for key in lapsed {
            if let Acquire::Acquired(lease) = self.take(key, owner, job, lease, watch, expires_at).await? {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    /// The holders of a pool's slots, by slot index (an eventually consistent query).
    async fn pool_holders(&self, pool: &str) -> Result<HashMap<String, Holder>, StoreError> {
        Ok(self
            .store
            .peek_prefix(pool, "")
            .await?
            .into_iter()
            .filter_map(|item| holder(&item).map(|h| (item.key.sk, h)))
            .collect())
    }

    /// Whether what is wanted looks free now (eventually consistent, so a moment old): free,
    /// or held by a holder `watch` has seen unchanged for a whole lease. A free answer is a
    /// reason to try, not a promise.
    pub async fn looks_free(&self, wanted: &Wanted, watch: &mut Watch) -> Result<bool, StoreError> {
        match wanted {
            Wanted::Lock(key) => {
                let key = Key::new(key, LOCK_SK);
                Ok(match self.store.peek(&key).await?.as_ref().and_then(holder) {
                    None => true,
                    Some(holder) => watch.lapsed(&key, &holder),
                })
            }
            Wanted::Slot { pool, max } => {
                let held = self.pool_holders(pool).await?;
                let mut free = false;
                for i in 0..*max {
                    let key = Key::new(pool.as_str(), i.to_string());
                    match held.get(&i.to_string()) {
                        None => free = true,
                        Some(holder) => free |= watch.lapsed(&key, holder),
                    }
                }
                Ok(free)
            }
        }
    }

    /// Extends a held lease to `lease` from now (a new record version); false when it is no
    /// longer ours (lapsed and taken over). `pending` marks a lease kept for a completion check.
    pub async fn heartbeat(&self, held: &Lease, lease: Duration, pending: bool) -> Result<bool, StoreError> {
        let mut update = Update::default().set("rvn", self.version()).set("lease_ms", lease.as_millis() as i64);
        update = if pending { update.set("pending", true) } else { update.remove("pending") };
        match self.store.update(&held.item_key(), update, Self::mine(held)).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn mine(held: &Lease) -> Cond {
        Cond::And(vec![Cond::eq("owner", held.owner.as_str()), Cond::eq("fence", held.fence)])
    }

    /// Releases a held lease and wakes this process's waiters for it; false when it was no
    /// longer ours. The fence stays, and the job that held it is kept as `last_job`.
    pub async fn release(&self, held: &Lease) -> Result<bool, StoreError> {
        self.release_remembering(held, None).await
    }

    /// As [`Leases::release`], keeping on the item the holder's attempt whose outcome was never
    /// recorded (JSON), for the job's next run to record; any such attempt kept before goes.
    pub async fn release_remembering(&self, held: &Lease, unrecorded: Option<&str>) -> Result<bool, StoreError> {
        let mut update = Update::default().remove("owner").remove("job").remove("pending").set("rvn", self.version());
        if !held.job.is_empty() {
            update = update.set("last_job", held.job.as_str());
        }
        update = match unrecorded {
            Some(attempt) => update.set("last_attempt", attempt),
            None => update.remove("last_attempt"),
        };
        let released = match self.store.update(&held.item_key(), update, Self::mine(held)).await {
            Ok(_) => true,
            Err(StoreError::ConditionFailed { .. }) => false,
            Err(e) => return Err(e),
        };
        self.wake(&held.key);
        Ok(released)
    }

    /// The current fence of a lock (0 when never taken).
    pub async fn fence(&self, key: &str) -> Result<i64, StoreError> {
        Ok(self.store.get(&Key::new(key, LOCK_SK)).await?.and_then(|i| i.int("fence")).unwrap_or(0))
    }

    /// The holder of a lock, if it is held (a strongly consistent read).
    pub async fn holder(&self, key: &str) -> Result<Option<Holder>, StoreError> {
        Ok(self.store.get(&Key::new(key, LOCK_SK)).await?.as_ref().and_then(holder))
    }

    /// What wakes this process's waiters for a key when one of its leases is released here.
    pub fn waker(&self, key: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(wakers.entry(key.to_owned()).or_default())
    }

    /// Forgets a waker no one waits on any more.
    pub fn forget_waker(&self, key: &str, waker: Arc<Notify>) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and the caller's: nobody else waits.
        if Arc::strong_count(&waker) <= 2 {
            wakers.remove(key);
        }
    }

    fn wake(&self, key: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = wakers.get(key) {
            waker.notify_one();
        }
    }
}

impl Holder {
    fn unknown() -> Self {
        Holder { owner: String::new(), job: None, pending: false, lease: Duration::ZERO, version: String::new() }
    }
}

/// The holder of a lease item, if it is held.
fn holder(item: &Item) -> Option<Holder> {
    let owner = item.str("owner")?.to_owned();
    Some(Holder {
        owner,
        job: item.str("job").map(str::to_owned),
        pending: matches!(item.attrs.get("pending"), Some(AttrValue::Bool(true))),
        lease: Duration::from_millis(item.int("lease_ms").unwrap_or(0).max(0) as u64),
        version: item.str("rvn").unwrap_or_default().to_owned(),
    })
}

/// The key of a lock.
pub fn lock_key(key: &str) -> String {
    crate::table::lock(key)
}

/// The partition key of a limit's pool: its slots are the items under it, by index.
pub fn pool_key(limit: &str, pool: &str) -> String {
    crate::table::pool(limit, pool)
}

impl From<&Lease> for AttrValue {
    fn from(lease: &Lease) -> Self {
        AttrValue::S(format!("{}@{}", lease.name(), lease.fence))
    }
}

#[cfg(test)]
mod tests;
