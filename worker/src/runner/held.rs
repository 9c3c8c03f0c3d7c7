//! What a running job holds — its lock, its slots and its attempt — and the only ways to let go
//! of them.
//!
//! The gate hands out a [`Held`]; it is let go only by consuming it: [`Held::release`] frees
//! every lease now, [`Held::leave_with_check`] leaves them to the check message that carries a
//! pending job on, and [`Held::lost`] says they were taken over, so nothing is ours to free. A
//! `Held` dropped on any other path (an error returned early) lets go by itself: a job's leases
//! are released in the background; a check's stay with its message, which comes back for them.
//!
//! A release that fails is retried; one that still fails leaves leases that lapse by
//! themselves a lease later, which [`Released`] says, so the job is not retried before then.

use crate::lease::{Lease, Leases};
use crate::ledger::{Attempt, Writer};
use crate::telemetry::{LeaseLost, ReleaseFailed};
use opsfleet_protocol::ports::StoreError;
use opsfleet_protocol::Clock;
use std::time::Duration;
use tokio::time::Instant;

use super::Disposition;

/// Tries of a release before its leases are left to lapse.
const RELEASE_TRIES: u32 = 3;

/// Who keeps a job's leases when its [`Held`] is dropped without being let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeper {
    /// This process: they are released.
    Process,
    /// A check message: it comes back for them.
    CheckMessage,
}

/// A job's lock and slots, held by this process, with the attempt they run.
#[must_use = "a job's leases are let go only by consuming what holds them"]
pub(super) struct Held {
    leases: Leases,
    lock: Lease,
    slots: Vec<Lease>,
    /// The lease every holder states.
    lease: Duration,
    /// When the lock was taken, Unix ms.
    pub(super) locked_ms: u64,
    /// When the action started, Unix ms.
    pub(super) started_ms: u64,
    /// When the oldest of the leases was last written (taken before the call was sent), so
    /// the worker knows when they lapse if heartbeats keep failing.
    pub(super) renewed: Instant,
    /// Whether the job's record holds this holder's fence (the attempt was begun, or a write
    /// of its outcome went through); until then, its first write begins the attempt too.
    pub(super) begun: bool,
    /// The attempt these leases run (0 for a cancellation).
    pub(super) attempt: u32,
    /// Whether the action started under these leases.
    pub(super) acted: bool,
    /// Whether a write recorded the attempt's outcome (or handed it to a check).
    pub(super) recorded: bool,
    /// The latest the leases lapse by themselves (a renewal whose reply was lost may have
    /// gone through, so every renewal sent counts).
    lapses_at: Instant,
    clock: Clock,
    keeper: Keeper,
    /// Set once let go, so that dropping does nothing more.
    done: bool,
}

/// What releasing came to.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Released {
    /// Every lease is free (or was no longer ours).
    Freed,
    /// A release kept failing: the leases lapse by themselves after this long.
    Lapsing(Duration),
}

impl Released {
    /// The message's fate once the leases are let go: a retry waits for leases that lapse.
    pub(super) fn then(self, disposition: Disposition) -> Disposition {
        match (self, disposition) {
            (Released::Lapsing(left), Disposition::Retry(after)) => Disposition::Retry(after.max(left)),
            (_, disposition) => disposition,
        }
    }
}

impl Held {
    /// The lock just taken by this process (`renewed`: when its write was sent).
    pub(super) fn taken(leases: Leases, lock: Lease, lease: Duration, clock: Clock, renewed: Instant) -> Self {
        let now_ms = clock.now_ms();
        Held {
            acted: false,
            recorded: false,
            lapses_at: renewed + lease,
            clock,
            leases,
            lock,
            slots: Vec::new(),
            lease,
            locked_ms: now_ms,
            started_ms: now_ms,
            renewed,
            begun: false,
            attempt: 1,
            keeper: Keeper::Process,
            done: false,
        }
    }

    /// The leases a check message carries: its job's, begun under their fence.
    pub(super) fn of_check(leases: Leases, check: &crate::check::CheckMessage, lease: Duration, clock: Clock) -> Self {
        Held {
            acted: true,
            recorded: true,
            // Kept for the check: until it is due and more.
            lapses_at: Instant::now() + lease + super::PENDING_SLACK,
            clock,
            leases,
            lock: check.lock.clone(),
            slots: check.slots.clone(),
            lease,
            locked_ms: check.locked_ms,
            started_ms: check.started_ms,
            renewed: Instant::now(),
            begun: true,
            attempt: check.attempt,
            keeper: Keeper::CheckMessage,
            done: false,
        }
    }

    /// Adds a slot just taken.
    pub(super) fn add_slot(&mut self, slot: Lease) {
        self.slots.push(slot);
    }

    /// The lock.
    pub(super) fn lock(&self) -> &Lease {
        &self.lock
    }

    /// The slots.
    pub(super) fn slots(&self) -> &[Lease] {
        &self.slots
    }

    /// The lock's fence: this holder's, in the job's record.
    pub(super) fn fence(&self) -> i64 {
        self.lock.fence
    }

    /// Every lease held: the lock, then the slots.
    pub(super) fn all(&self) -> impl Iterator<Item = &Lease> {
        std::iter::once(&self.lock).chain(&self.slots)
    }

    /// Whether a check message keeps these leases when they are dropped.
    pub(super) fn kept_by_check(&self) -> bool {
        self.keeper == Keeper::CheckMessage
    }

    /// This holder as the writer of the job's record, recording `attempt` with the write.
    pub(super) fn writer<'a>(&'a self, attempt: Option<&'a Attempt>) -> Writer<'a> {
        Writer {
            fence: self.lock.fence,
            unbegun: (!self.begun).then_some(self.lock.owner.as_str()),
            attempt,
            lock: Some(self.lock.key.as_str()),
        }
    }

    /// This holder's attempt, let go now, for the audit trail.
    pub(super) fn attempt_record(&self, clock: &Clock, outcome: &str, error: Option<&str>) -> Attempt {
        Attempt {
            number: self.attempt,
            owner: self.lock.owner.clone(),
            fence: self.lock.fence,
            locked_ms: self.locked_ms,
            started_ms: self.started_ms,
            released_ms: clock.now_ms(),
            outcome: outcome.to_owned(),
            error: error.map(str::to_owned),
        }
    }

    /// Heartbeats every lease for `lease` from now (kept for a check when `pending`); false
    /// when one was taken over.
    pub(super) async fn renew(&mut self, job_id: &str, lease: Duration, pending: bool) -> Result<bool, StoreError> {
        let sent = Instant::now();
        self.lapses_at = self.lapses_at.max(sent + lease);
        for held in std::iter::once(&self.lock).chain(&self.slots) {
            if !self.leases.heartbeat(held, lease, pending).await? {
                LeaseLost { job_id, key: &held.name() }.emit();
                return Ok(false);
            }
        }
        self.renewed = sent;
        Ok(true)
    }

    /// Lets go of every lease now, trying each release a few times; one that still fails is
    /// tried on in the background until it goes through or the lease lapses. The lock keeps
    /// the attempt when the action ran and its outcome was never recorded, for the job's next
    /// run to record.
    pub(super) async fn release(mut self) -> Released {
        self.done = true;
        let unrecorded = self.unrecorded();
        let mut released = Released::Freed;
        let mut left = Vec::new();
        for (i, held) in std::iter::once(&self.lock).chain(&self.slots).enumerate() {
            let attempt = if i == 0 { unrecorded.as_deref() } else { None };
            if release_one(&self.leases, held, attempt).await.is_err() {
                released = Released::Lapsing(self.lease);
                left.push(held.clone());
            }
        }
        if !left.is_empty() {
            self.release_in_background(left, unrecorded);
        }
        released
    }

    /// The attempt, as the lock keeps it, when the action ran and its outcome was never
    /// recorded.
    fn unrecorded(&self) -> Option<String> {
        (self.acted && !self.recorded && self.keeper == Keeper::Process).then(|| {
            let error = "its outcome was never recorded (interrupted, or the write failed)";
            let attempt = self.attempt_record(&self.clock, "INTERRUPTED", Some(error));
            crate::ledger::remembered_json(&attempt, self.begun)
        })
    }

    /// Keeps releasing `leases` until each goes through or lapses by itself.
    fn release_in_background(&self, leases: Vec<Lease>, unrecorded: Option<String>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (store, lapses_at, lock) = (self.leases.clone(), self.lapses_at, self.lock.name());
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(500);
            for held in &leases {
                let attempt = if held.name() == lock { unrecorded.as_deref() } else { None };
                while Instant::now() < lapses_at {
                    if store.release_remembering(held, attempt).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(pause.min(lapses_at.saturating_duration_since(Instant::now()))).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        });
    }

    /// From now on a check message carries these leases: dropped, they stay for it.
    pub(super) fn keep_for_check(&mut self) {
        self.keeper = Keeper::CheckMessage;
    }

    /// Leaves the leases to the check message that carries the job on (sent, or coming back).
    pub(super) fn leave_with_check(mut self) {
        self.done = true;
    }

    /// The leases lapsed and were taken over: nothing of them is ours to let go.
    pub(super) fn lost(mut self) {
        self.done = true;
    }
}

/// Releases one lease (the lock keeping `attempt`), trying again on a store error.
async fn release_one(leases: &Leases, held: &Lease, attempt: Option<&str>) -> Result<(), ()> {
    let mut backoff = Duration::from_millis(100);
    for n in 1..=RELEASE_TRIES {
        match leases.release_remembering(held, attempt).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                ReleaseFailed { key: &held.name(), error: &e.to_string(), last: n == RELEASE_TRIES }.emit();
                if n < RELEASE_TRIES {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    Err(())
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.done || self.keeper == Keeper::CheckMessage {
            return;
        }
        // Not let go on purpose (an error returned early): release in the background, until
        // it goes through or the leases lapse.
        let all: Vec<Lease> = std::iter::once(self.lock.clone()).chain(self.slots.drain(..)).collect();
        let unrecorded = self.unrecorded();
        self.release_in_background(all, unrecorded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Acquire, Watch};
    use opsfleet_backend::EmbeddedBackend;
    use opsfleet_protocol::ports::Backend;

    const LEASE: Duration = Duration::from_secs(10);

    async fn held(leases: &Leases, owner: &str) -> Held {
        match leases.acquire("lock#r", owner, "job", LEASE, &mut Watch::default()).await.expect("acquire") {
            Acquire::Acquired(lock) => Held::taken(leases.clone(), lock, LEASE, Clock::new(), Instant::now()),
            Acquire::Held(holder) => panic!("held by {}", holder.owner),
        }
    }

    async fn leases() -> Leases {
        let backend = EmbeddedBackend::new();
        backend.ensure_table("t").await.expect("table");
        Leases::new(backend.store("t").await.expect("store"))
    }

    async fn free(leases: &Leases) -> bool {
        leases.holder("lock#r").await.expect("holder").is_none()
    }

    /// Whether the lock is free once the tasks spawned so far had every chance to run: the
    /// same bound for the tests that expect a release and those that expect none.
    async fn freed_in_the_background(leases: &Leases) -> bool {
        for _ in 0..100 {
            if free(leases).await {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn a_job_s_leases_dropped_without_being_let_go_are_released_in_the_background() {
        let leases = leases().await;
        drop(held(&leases, "w/1").await);
        assert!(freed_in_the_background(&leases).await, "a dropped job's lock was never released");
    }

    #[tokio::test]
    async fn a_check_s_leases_stay_with_its_message_and_lost_ones_are_left_alone() {
        let kept_by_check = leases().await;
        let mut kept = held(&kept_by_check, "w/1").await;
        kept.keep_for_check();
        drop(kept);
        assert!(!freed_in_the_background(&kept_by_check).await, "a check's lock stays held for its message");
        let lost = leases().await;
        held(&lost, "w/2").await.lost();
        assert!(!freed_in_the_background(&lost).await, "a lost lease is not ours to release");
        let released = leases().await;
        assert_eq!(held(&released, "w/3").await.release().await, Released::Freed);
        assert!(free(&released).await, "release frees the lock at once");
    }

    #[test]
    fn leases_that_lapse_hold_the_retry_back_until_they_do() {
        let lapsing = Released::Lapsing(LEASE);
        assert_eq!(lapsing.then(Disposition::Retry(Duration::ZERO)), Disposition::Retry(LEASE));
        let later = Duration::from_secs(60);
        assert_eq!(lapsing.then(Disposition::Retry(later)), Disposition::Retry(later));
        assert_eq!(lapsing.then(Disposition::Delete), Disposition::Delete);
        assert_eq!(Released::Freed.then(Disposition::Retry(Duration::ZERO)), Disposition::Retry(Duration::ZERO));
    }
}
