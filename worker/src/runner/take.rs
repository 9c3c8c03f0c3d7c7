//! Taking a job's lock and slots, and waiting for them.
//!
//! Waiting is not failing. A job that finds its lock held or its limit full keeps its message
//! (hidden, its visibility extended in batches by the consumer) instead of handing it back to
//! SQS, so no receive is spent on waiting and `maxReceiveCount` only ever counts crashes and
//! hangs. While it waits it holds no run permit and no lease: it polls the store with
//! eventually consistent reads only (a lock item, or one query for a whole pool), backing off
//! from [`FIRST_POLL`] to [`MAX_POLL`], and is woken at once when a lease it waits for is
//! released in the same process. A waiting job therefore costs no DynamoDB writes and about
//! 60 / `MAX_POLL` reads a minute, and starts within `MAX_POLL` of its lease freeing anywhere
//! in the fleet. A message can stay hidden at most 12 hours after a receive: a job that has
//! waited [`HAND_BACK_AFTER`] hands its message back and waits on from the next receive.

use super::*;
use crate::lease::{lock_key, pool_key, Acquire, Holder, Wanted, Watch};
use crate::telemetry::{JobWaitEnded, JobWaitStarted, LockAcquisition, SlotUnavailable};
use opsfleet_protocol::template::TemplateInput;
use tokio::time::Instant;

/// The first wait before polling again.
pub const FIRST_POLL: Duration = Duration::from_millis(250);

/// The longest wait between polls.
pub const MAX_POLL: Duration = Duration::from_secs(2);

/// After this long waiting, a job hands its message back (SQS hides a message at most 12 hours
/// after a receive).
pub const HAND_BACK_AFTER: Duration = Duration::from_secs(11 * 3600);

/// How long the items of a run's `max_concurrency` slots are kept (DynamoDB TTL).
const RUN_SLOT_TTL: Duration = Duration::from_secs(7 * 86_400);

/// What taking a job's leases came to.
pub(super) enum Taken {
    /// Everything the job needs is held.
    All(Holding),
    /// The job's run was cancelled; the lock is held to record that.
    Cancelled(Holding, String),
    /// Something is held by others: wait for it.
    Busy {
        /// What to wait for.
        wanted: Wanted,
        /// `lock`, `max_concurrency` or `limit`.
        reason: &'static str,
        /// The lock's holder, when it is the lock.
        holder: Option<Holder>,
    },
}

impl Worker {
    /// Takes the job's lock, then its run's `max_concurrency` slot and its limit's slot; on
    /// the first that is busy, releases what it took and says what to wait for.
    pub(super) async fn take(
        &self,
        job: &Job,
        task: &Task,
        owner: &str,
        watch: &mut Watch,
        check_run: bool,
    ) -> Result<Taken, CallError> {
        let input = TemplateInput::of(job, self.clock.now_ms());
        let key = lock_key(&task.lock.render(input));
        let asked = Instant::now();
        let lock = match self.leases.acquire(&key, owner, &job.id, self.lease, watch).await? {
            Acquire::Acquired(lock) => {
                LockAcquisition { job_id: &job.id, result: "acquired", holder: owner }.emit();
                lock
            }
            Acquire::Held(holder) => {
                LockAcquisition { job_id: &job.id, result: "held", holder: &holder.owner }.emit();
                return Ok(Taken::Busy { wanted: Wanted::Lock(key), reason: "lock", holder: Some(holder) });
            }
        };
        let now = self.clock.now_ms();
        let mut holding =
            Holding { lock, slots: Vec::new(), locked_ms: now, started_ms: now, renewed: asked, begun: false };
        match self.take_slots(job, task, owner, watch, check_run, &mut holding).await {
            Ok(None) => Ok(Taken::All(holding)),
            Ok(Some(Taken::Cancelled(_, reason))) => Ok(Taken::Cancelled(holding, reason)),
            Ok(Some(busy)) => {
                self.release(&holding).await;
                Ok(busy)
            }
            Err(e) => {
                self.release(&holding).await;
                Err(e)
            }
        }
    }

    async fn take_slots(
        &self,
        job: &Job,
        task: &Task,
        owner: &str,
        watch: &mut Watch,
        check_run: bool,
        holding: &mut Holding,
    ) -> Result<Option<Taken>, CallError> {
        if check_run && task.max_errors.is_some() {
            if let Some(reason) = self.ledger.run_cancelled(&job.run_id()).await? {
                return Ok(Some(Taken::Cancelled(holding.clone(), reason)));
            }
        }
        let input = TemplateInput::of(job, self.clock.now_ms());
        let ttl = (self.clock.now_ms() / 1000 + RUN_SLOT_TTL.as_secs()) as i64;
        let mut wanted: Vec<(String, u32, Option<i64>, &'static str, &str)> = Vec::new();
        if let Some(max) = task.max_concurrency {
            wanted.push((pool_key("run", &job.run_id()), max, Some(ttl), "max_concurrency", "max_concurrency"));
        }
        if let Some(limit) = task.limit.as_ref().and_then(|name| self.config.limits.get(name)) {
            wanted.push((pool_key(&limit.name, &limit.pool.render(input)), limit.max, None, "limit", &limit.name));
        }
        for (pool, max, expires_at, reason, label) in wanted {
            match self.leases.acquire_slot(&pool, max, owner, &job.id, self.lease, watch, expires_at).await? {
                Some(slot) => holding.slots.push(slot),
                None => {
                    SlotUnavailable { job_id: &job.id, limit: label }.emit();
                    return Ok(Some(Taken::Busy { wanted: Wanted::Slot { pool, max }, reason, holder: None }));
                }
            }
        }
        Ok(None)
    }
}

/// A job waiting for a lock or a slot: what it watched, since when, and why.
pub(super) struct Waiting {
    watch: Watch,
    since: Option<(Instant, &'static str)>,
    received: Instant,
    interval: Duration,
}

impl Waiting {
    pub(super) fn new() -> Self {
        Waiting { watch: Watch::default(), since: None, received: Instant::now(), interval: FIRST_POLL }
    }

    pub(super) fn watch(&mut self) -> &mut Watch {
        &mut self.watch
    }

    /// Waits until what is wanted looks free (true), or until the job should hand its message
    /// back (false): at shutdown, or after [`HAND_BACK_AFTER`].
    pub(super) async fn wait(
        &mut self,
        worker: &Worker,
        wanted: &Wanted,
        reason: &'static str,
    ) -> Result<bool, CallError> {
        match self.since {
            Some((_, current)) if current == reason => {}
            _ => {
                self.finish();
                JobWaitStarted { reason }.emit();
                self.since = Some((Instant::now(), reason));
            }
        }
        loop {
            if self.received.elapsed() >= HAND_BACK_AFTER {
                return Ok(false);
            }
            let waker = worker.leases.waker(wanted.key());
            let woken = {
                let notified = waker.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                tokio::select! {
                    () = notified => Some(true),
                    () = tokio::time::sleep(self.interval) => Some(false),
                    () = worker.stop_waiting.cancelled() => None,
                }
            };
            worker.leases.forget_waker(wanted.key(), waker);
            let Some(woken) = woken else {
                return Ok(false);
            };
            self.interval = if woken { FIRST_POLL } else { (self.interval * 2).min(MAX_POLL) };
            if worker.leases.looks_free(wanted, &mut self.watch).await? {
                return Ok(true);
            }
        }
    }
}

impl Waiting {
    fn finish(&mut self) {
        if let Some((since, reason)) = self.since.take() {
            JobWaitEnded { reason, waited: since.elapsed() }.emit();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.finish();
    }
}
