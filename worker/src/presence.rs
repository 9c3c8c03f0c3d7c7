//! Which processes of a fleet are alive: each router and worker writes a heartbeat item
//! (`fleet` / `<role>#<id>`, with a TTL) every [`BEAT`], and reads them all with one query every
//! [`COUNT_EVERY`] to count the live ones of each role. The EC2 budget is split by the live
//! processes (reads among all, writes among the workers): a process that joins is counted by
//! the others within `COUNT_EVERY`, and it counts them before its first EC2 call ([`join`]).

use opsfleet_protocol::ports::{Attrs, Cond, Item, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often a process says it is alive.
pub const BEAT: Duration = Duration::from_secs(10);

/// How often a process counts the live ones.
pub const COUNT_EVERY: Duration = Duration::from_secs(5);

/// How long a joining process waits between its first heartbeat and its first count, so that
/// processes started together see one another.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A process whose last heartbeat is older than this is not counted: a process that died
/// without leaving keeps its share of the EC2 budget this long at most.
pub const STALE: Duration = Duration::from_secs(35);

use crate::table::{presence, PRESENCE_PK as PK};

/// The live processes, by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// Routers.
    pub routers: u32,
    /// Workers.
    pub workers: u32,
}

impl Live {
    /// Every live process.
    pub fn processes(&self) -> u32 {
        self.routers + self.workers
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Writes this process's heartbeat.
pub async fn beat(store: &dyn Store, role: &str, id: &str) -> Result<(), StoreError> {
    let now = now_ms();
    let mut attrs = Attrs::new();
    attrs.insert("seen_ms".into(), now.into());
    attrs.insert("expires_at".into(), (now / 1000 + 3600).into());
    store.put(Item { key: presence(role, id), attrs }, Cond::Always).await
}

/// Removes this process's heartbeat (at shutdown).
pub async fn leave(store: &dyn Store, role: &str, id: &str) -> Result<(), StoreError> {
    store.delete(&presence(role, id), Cond::Always).await
}

/// Counts the live processes (an eventually consistent query).
pub async fn live(store: &dyn Store) -> Result<Live, StoreError> {
    let oldest = now_ms() - STALE.as_millis() as i64;
    let mut live = Live::default();
    for item in store.peek_prefix(PK, "").await? {
        if item.int("seen_ms").unwrap_or(0) < oldest {
            continue;
        }
        if item.key.sk.starts_with("router#") {
            live.routers += 1;
        } else if item.key.sk.starts_with("worker#") {
            live.workers += 1;
        }
    }
    Ok(live)
}

/// Joins the fleet: the first heartbeat, a moment for processes started together to beat too,
/// then the first count.
pub async fn join(store: &dyn Store, role: &str, id: &str) -> Result<Live, StoreError> {
    beat(store, role, id).await?;
    tokio::time::sleep(SETTLE).await;
    live(store).await
}

/// Beats every [`BEAT`] and counts every [`COUNT_EVERY`] until `stop`, calling `seen` with each
/// count, then leaves.
pub async fn run(
    store: Arc<dyn Store>,
    role: &'static str,
    id: String,
    stop: CancellationToken,
    seen: impl Fn(Live) + Send + 'static,
) {
    let mut last_beat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(COUNT_EVERY) => {}
            () = stop.cancelled() => break,
        }
        if last_beat.elapsed() + COUNT_EVERY > BEAT {
            match beat(store.as_ref(), role, &id).await {
                Ok(()) => last_beat = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(error = %e, "Writing this process's heartbeat failed."),
            }
        }
        match live(store.as_ref()).await {
            Ok(live) => seen(live),
            Err(e) => tracing::warn!(error = %e, "Counting the fleet's live processes failed."),
        }
    }
    let _ = leave(store.as_ref(), role, &id).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsfleet_backend::EmbeddedBackend;
    use opsfleet_protocol::ports::{Backend, Key};

    #[tokio::test]
    async fn live_processes_are_counted_by_role_and_leave_at_shutdown() {
        let backend = EmbeddedBackend::new();
        backend.ensure_table("t").await.expect("table");
        let store = backend.store("t").await.expect("store");
        beat(store.as_ref(), "worker", "w1").await.expect("beat");
        beat(store.as_ref(), "worker", "w2").await.expect("beat");
        beat(store.as_ref(), "router", "r1").await.expect("beat");
        let mut stale = Attrs::new();
        stale.insert("seen_ms".into(), (now_ms() - 10 * 60_000).into());
        store.put(Item { key: Key::new(PK, "worker#gone"), attrs: stale }, Cond::Always).await.expect("put");
        assert_eq!(live(store.as_ref()).await.expect("live"), Live { routers: 1, workers: 2 });
        leave(store.as_ref(), "worker", "w2").await.expect("leave");
        assert_eq!(live(store.as_ref()).await.expect("live").processes(), 2);
    }
}
