//! Lease locks and limit slots in the store, each acquire, heartbeat and release one
//! conditional write.
//!
//! Written here rather than taken from a crate: the DynamoDB lock crates we know of
//! (`dynamodb-lock`, `rusoto_dynamodb`-era clients) hand out leases without fencing tokens, and
//! the guarantees need one: the `fence` of a lock increments on every acquisition and is never
//! reset, so the ledger can refuse the writes of a holder whose lease lapsed and was taken over.

use crate::clock::Clock;
use opsfleet_protocol::ports::{AttrValue, Cond, Key, Store, StoreError, Update};
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of an acquire: contention is an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours, with this fence.
    Acquired(Lease),
    /// Someone else holds it.
    Held {
        /// The holder.
        by: String,
        /// When their lease ends, in Unix ms.
        until: u64,
    },
}

/// A held lease: what heartbeats and releases need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The item's partition key (`lock#…` or `slot#…`).
    pub key: String,
    /// The holder.
    pub owner: String,
    /// The fence of this acquisition.
    pub fence: i64,
}

const SK: &str = "lease";

fn item_key(key: &str) -> Key {
    Key::new(key, SK)
}

/// Leases in one table.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    clock: Clock,
}

impl Leases {
    /// Leases in a store, timed by a clock.
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Self {
        Leases { store, clock }
    }

    /// Takes the lease on `key` for `owner` when it is free, lapsed, or already the owner's;
    /// the fence increments on every acquisition.
    pub async fn acquire(&self, key: &str, owner: &str, lease: Duration) -> Result<Acquire, StoreError> {
        let now = self.clock.now_ms() as i64;
        let until = now + lease.as_millis() as i64;
        let update = Update::default().set("owner", owner).set("lease_until", until).add("fence", 1);
        let cond = Cond::Or(vec![
            Cond::NotExists,
            Cond::Lacks("owner".into()),
            Cond::lt("lease_until", now),
            Cond::eq("owner", owner),
        ]);
        match self.store.update(&item_key(key), update, cond).await {
            Ok(item) => Ok(Acquire::Acquired(Lease {
                key: key.to_owned(),
                owner: owner.to_owned(),
                fence: item.int("fence").unwrap_or(0),
            })),
            Err(StoreError::ConditionFailed { .. }) => {
                let current = self.store.get(&item_key(key)).await?;
                Ok(Acquire::Held {
                    by: current.as_ref().and_then(|i| i.str("owner")).unwrap_or_default().to_owned(),
                    until: current.and_then(|i| i.int("lease_until")).unwrap_or(0).max(0) as u64,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Extends a held lease to `lease` from now; false when it is no longer ours (lapsed and
    /// taken over).
    pub async fn heartbeat(&self, held: &Lease, lease: Duration) -> Result<bool, StoreError> {
        let until = self.clock.now_ms() as i64 + lease.as_millis() as i64;
        let cond = Cond::And(vec![Cond::eq("owner", held.owner.as_str()), Cond::eq("fence", held.fence)]);
        match self.store.update(&item_key(&held.key), Update::default().set("lease_until", until), cond).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Releases a held lease; false when it was no longer ours. The fence stays.
    pub async fn release(&self, held: &Lease) -> Result<bool, StoreError> {
        let cond = Cond::And(vec![Cond::eq("owner", held.owner.as_str()), Cond::eq("fence", held.fence)]);
        let update = Update::default().remove("owner").set("lease_until", 0i64);
        match self.store.update(&item_key(&held.key), update, cond).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes one of `max` slots of a pool (items `slot#<limit>#<pool>#<i>`), trying them in
    /// random order so holders spread; `None` when every slot is held.
    pub async fn acquire_slot(
        &self,
        limit: &str,
        pool: &str,
        max: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let mut order: Vec<u32> = (0..max).collect();
        order.shuffle(&mut rand::thread_rng());
        for i in order {
            if let Acquire::Acquired(held) = self.acquire(&slot_key(limit, pool, i), owner, lease).await? {
                return Ok(Some(held));
            }
        }
        Ok(None)
    }

    /// The current fence of a key (0 when never taken).
    pub async fn fence(&self, key: &str) -> Result<i64, StoreError> {
        Ok(self.store.get(&item_key(key)).await?.and_then(|i| i.int("fence")).unwrap_or(0))
    }
}

/// The key of a lock.
pub fn lock_key(key: &str) -> String {
    format!("lock#{key}")
}

/// The key of one slot of a limit's pool.
pub fn slot_key(limit: &str, pool: &str, index: u32) -> String {
    format!("slot#{limit}#{pool}#{index}")
}

impl From<&Lease> for AttrValue {
    fn from(lease: &Lease) -> Self {
        AttrValue::S(format!("{}@{}", lease.key, lease.fence))
    }
}

#[cfg(test)]
mod tests;
