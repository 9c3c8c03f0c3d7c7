//! How a job waits: taking its lock and slots, and waiting for them without holding a worker.
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
//!
//! Every acquisition has an owner of its own (`worker/job/n`), so a lease this process failed
//! to release is never mistaken for one it is taking now.

use super::awaiting::{ApprovalWatch, Standing};
use super::halted::{HaltWatch, HALT_READ_EVERY};
use super::held::Held;
use super::permits::{Permits, Running};
use super::CallError;
use crate::lease::{lock_key, pool_key, Acquire, Holder, Leases, Pool as LeasePool, Wanted, Watch};
use crate::ledger::{Ledger, Status};
use crate::telemetry::{JobWaitEnded, JobWaitStarted, LockAcquisition, SlotUnavailable};
use opsfleet_protocol::config::Task;
use opsfleet_protocol::template::TemplateInput;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first wait before polling again.
pub const FIRST_POLL: Duration = Duration::from_millis(250);

/// The longest wait between polls.
pub const MAX_POLL: Duration = Duration::from_secs(2);

/// After this long waiting, a job hands its message back (SQS hides a message at most 12 hours
/// after a receive).
pub const HAND_BACK_AFTER: Duration = Duration::from_secs(11 * 3600);

/// How long the items of a run's `max_concurrency` slots are kept (DynamoDB TTL).
const RUN_SLOT_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Takes jobs' leases, and makes jobs wait for them.
pub(super) struct Gate {
    leases: Leases,
    ledger: Ledger,
    config: Arc<Config>,
    clock: Clock,
    lease: Duration,
    worker_id: String,
    /// Numbers this worker's acquisitions, so that each has an owner of its own.
    acquisitions: AtomicU64,
    /// Cancelled at shutdown: jobs waiting for a lock or a slot hand their messages back.
    stop_waiting: CancellationToken,
    /// Which tasks are halted.
    halts: HaltWatch,
    /// Which runs are approved.
    approvals: ApprovalWatch,
}

/// What entering the gate came to.
pub(super) enum Entered {
    /// Everything the job needs is held. `waited`: the job waited for it, so it may have been
    /// finished meanwhile.
    All { held: Held, running: Running, waited: bool },
    /// The job's run was cancelled; the lock is held to record that.
    Cancelled { held: Held, reason: String, running: Running },
    /// The job's own pending run holds its lock: its completion check carries it on.
    OwnPending,
    /// The worker is shutting down, or the job waited as long as its message may stay hidden.
    HandBack,
}

/// What one try at the job's leases came to.
enum Taken {
    All(Held),
    Cancelled(Held, String),
    /// Something is held by others: wait for it.
    Busy {
        wanted: Wanted,
        /// `lock`, `max_concurrency` or `limit`.
        reason: &'static str,
        /// The lock's holder, when it is the lock.
        holder: Option<Holder>,
    },
}

/// How a job enters: whether its run's cancellation is checked, and whether its own pending run
/// holding the lock ends it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry<'a> {
    /// Check whether the job's run was cancelled (not for a redriven job, which runs anyway).
    pub check_run: bool,
    /// A job message finding its own pending run on the lock is done with.
    pub own_pending_ends: bool,
    /// The key of the lock item the job began under, if it did: taken instead of the one its
    /// task's `lock` renders now.
    pub lock: Option<&'a str>,
}

impl Gate {
    /// A gate over a fleet's leases.
    pub(super) fn new(leases: Leases, ledger: Ledger, config: Arc<Config>, clock: Clock, worker_id: String) -> Self {
        Gate {
            halts: HaltWatch::new(leases.store()),
            approvals: ApprovalWatch::new(leases.store(), &config.fleet.name),
            leases,
            ledger,
            lease: Duration::from_secs(u64::from(config.worker.lease_secs.max(3))),
            config,
            clock,
            worker_id,
            acquisitions: AtomicU64::new(0),
            stop_waiting: CancellationToken::new(),
        }
    }

    /// The lease every holder states.
    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    /// The leases.
    pub(super) fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The same gate with another wall clock.
    pub(super) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
        self.ledger = self.ledger.clone().with_clock(clock);
    }

    /// Tells waiting jobs to hand their messages back (shutdown).
    pub(super) fn stop_waiting(&self) {
        self.stop_waiting.cancel();
    }

    /// Whether the worker is shutting down.
    pub(super) fn stopping(&self) -> bool {
        self.stop_waiting.is_cancelled()
    }

    /// The same gate publishing approval notices with these clients.
    pub(super) fn set_aws(&mut self, aws: Arc<dyn opsfleet_backend::aws::AwsClients>) {
        self.approvals.set_aws(aws);
    }

    /// Sleeps for `pause`; false when the worker began shutting down meanwhile.
    pub(super) async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.stop_waiting.cancelled() => false,
        }
    }

    /// Takes a run permit from `permits` unless the worker is shutting down.
    pub(super) async fn permit(&self, permits: &Permits) -> Option<Running> {
        permits.take(&self.stop_waiting).await
    }

    /// Takes everything `job` needs, waiting for what others hold without holding a permit
    /// meanwhile; `first` is the permit it came with.
    pub(super) async fn enter(
        &self,
        job: &Job,
        task: &Task,
        permits: &Permits,
        first: Option<Running>,
        entry: Entry<'_>,
    ) -> Result<Entered, CallError> {
        let mut waiting = Waiting::new();
        let mut first = first;
        let mut waited = false;
        loop {
            let running = match first.take() {
                Some(running) => running,
                None => match self.permit(permits).await {
                    Some(running) => running,
                    None => return Ok(Entered::HandBack),
                },
            };
            if let Some(halt) = self.halts.halted(&task.name).await? {
                // A halted task's jobs wait, holding nothing, until the halt ends.
                drop(running);
                if !self.wait_out_halt(&task.name, &halt, &mut waiting).await? {
                    return Ok(Entered::HandBack);
                }
                waited = true;
                continue;
            }
            if entry.check_run && task.approve.is_some() {
                match self.approvals.standing(job, self.clock.now_ms()).await? {
                    Standing::Go => {}
                    // Taking the lock below finds the run cancelled, and cancels the job.
                    Standing::Cancel(reason) => self.ledger.cancel_run(&job.run_id(), &reason).await?,
                    Standing::Wait => {
                        drop(running);
                        if !self.wait_for_approval(job, &mut waiting).await? {
                            return Ok(Entered::HandBack);
                        }
                        waited = true;
                        continue;
                    }
                }
            }
            match self.take(job, task, waiting.watch(), entry.check_run, entry.lock).await? {
                Taken::All(held) => return Ok(Entered::All { held, running, waited }),
                Taken::Cancelled(held, reason) => return Ok(Entered::Cancelled { held, reason, running }),
                Taken::Busy { wanted, reason, holder } => {
                    drop(running);
                    if entry.own_pending_ends
                        && holder.is_some_and(|h| h.pending && h.job.as_deref() == Some(job.id.as_str()))
                        && self.ledger.job(&job.id).await?.is_some_and(|r| r.status == Status::Pending)
                    {
                        return Ok(Entered::OwnPending);
                    }
                    if !waiting.wait(self, &wanted, reason).await? {
                        return Ok(Entered::HandBack);
                    }
                    waited = true;
                }
            }
        }
    }

    /// The halt of `task` in force, if any.
    pub(super) async fn halted(&self, task: &str) -> Result<Option<opsfleet_protocol::halt::Halt>, CallError> {
        Ok(self.halts.halted(task).await?)
    }

    /// Waits until `task` is halted no more (true), or until the job should hand its message
    /// back (false): at shutdown, or after [`HAND_BACK_AFTER`].
    async fn wait_out_halt(
        &self,
        task: &str,
        halt: &opsfleet_protocol::halt::Halt,
        waiting: &mut Waiting,
    ) -> Result<bool, CallError> {
        waiting.begin("halted");
        tracing::debug!(task, halt = %halt.line(), "The task is halted: the job waits.");
        loop {
            if waiting.received.elapsed() >= HAND_BACK_AFTER || !self.pause(HALT_READ_EVERY).await {
                return Ok(false);
            }
            if self.halts.halted(task).await?.is_none() {
                return Ok(true);
            }
        }
    }

    /// Where a runbook's approval step stands for the run of `job`.
    pub(super) async fn step_approval(
        &self,
        job: &Job,
        step: &str,
        settings: &opsfleet_protocol::config::ApproveSettings,
    ) -> Result<Standing, CallError> {
        Ok(self.approvals.step_standing(job, step, settings, self.clock.now_ms()).await?)
    }

    /// Waits until the run of `job` is decided (true), or until the job should hand its message
    /// back (false): at shutdown, or after [`HAND_BACK_AFTER`].
    async fn wait_for_approval(&self, job: &Job, waiting: &mut Waiting) -> Result<bool, CallError> {
        waiting.begin("approval");
        loop {
            if waiting.received.elapsed() >= HAND_BACK_AFTER || !self.pause(HALT_READ_EVERY).await {
                return Ok(false);
            }
            if self.approvals.standing(job, self.clock.now_ms()).await? != Standing::Wait {
                return Ok(true);
            }
        }
    }

    /// A lease owner unique to one acquisition: `worker/job/n`.
    fn owner(&self, job: &Job) -> String {
        format!("{}/{}/{}", self.worker_id, job.id, self.acquisitions.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes the job's lock, then its run's `max_concurrency` slot and its limit's slot; on
    /// the first that is busy, lets go of what it took and says what to wait for.
    async fn take(
        &self,
        job: &Job,
        task: &Task,
        watch: &mut Watch,
        check_run: bool,
        lock: Option<&str>,
    ) -> Result<Taken, CallError> {
        let owner = self.owner(job);
        let now = self.clock.now_ms();
        let input = TemplateInput::of(job, now);
        let key = lock.map_or_else(|| lock_key(&task.lock.render(input)), str::to_owned);
        let asked = Instant::now();
        let lock = match self.leases.acquire(&key, &owner, &job.id, self.lease, watch).await? {
            Acquire::Acquired(lock) => {
                LockAcquisition { job_id: &job.id, result: "acquired", holder: &owner }.emit();
                lock
            }
            Acquire::Held(holder) => {
                LockAcquisition { job_id: &job.id, result: "held", holder: &holder.owner }.emit();
                return Ok(Taken::Busy { wanted: Wanted::Lock(key), reason: "lock", holder: Some(holder) });
            }
        };
        let mut held = Held::taken(self.leases.clone(), lock, self.lease, self.clock, asked);
        if check_run && task.cancellable() {
            let location = location(job);
            if let Some(reason) = self.ledger.run_cancelled_in(&job.run_id(), &location).await? {
                // A redriven job runs although its run was cancelled: a stale read may have shown
                // it as new, so its record says for sure before it is cancelled again.
                if !self.ledger.job(&job.id).await?.is_some_and(|r| r.redriven) {
                    return Ok(Taken::Cancelled(held, reason));
                }
            }
        }
        let ttl = (now / 1000 + RUN_SLOT_TTL.as_secs()) as i64;
        let mut pools: Vec<Pool<'_>> = Vec::new();
        if let Some(max) = task.max_concurrency {
            let max = match task.ramp_up {
                true => crate::ledger::ramped(max, self.ledger.run_finished_well_count(&job.run_id()).await?),
                false => max,
            };
            let key = pool_key("run", &job.run_id());
            pools.push(Pool { key, max, ttl: Some(ttl), reason: "max_concurrency", label: "max_concurrency" });
        }
        if let Some(max) = task.max_concurrency_per_location {
            let key = pool_key("run-location", &format!("{}/{}", job.run_id(), location(job)));
            let label = "max_concurrency_per_location";
            pools.push(Pool { key, max, ttl: Some(ttl), reason: "max_concurrency", label });
        }
        if let Some(limit) = task.limit.as_ref().and_then(|name| self.config.limits.get(name)) {
            let key = pool_key(&limit.name, &limit.pool.render(input));
            pools.push(Pool { key, max: limit.max, ttl: None, reason: "limit", label: &limit.name });
        }
        for pool in pools {
            let slots = LeasePool { key: &pool.key, max: pool.max, expires_at: pool.ttl };
            let slot = self.leases.acquire_slot(&slots, &owner, &job.id, self.lease, watch);
            match slot.await? {
                Some(slot) => held.add_slot(slot),
                None => {
                    SlotUnavailable { job_id: &job.id, limit: pool.label }.emit();
                    // The job waits for the slot anyway: a release that fails only lapses.
                    let _ = held.release().await;
                    let wanted = Wanted::Slot { pool: pool.key, max: pool.max };
                    return Ok(Taken::Busy { wanted, reason: pool.reason, holder: None });
                }
            }
        }
        Ok(Taken::All(held))
    }
}

/// The (account, region) a job acts in, as `account/region`.
pub(super) fn location(job: &Job) -> String {
    format!("{}/{}", job.resource.account, job.resource.region)
}

/// A pool of slots a job takes one of.
struct Pool<'a> {
    key: String,
    max: u32,
    ttl: Option<i64>,
    /// The wait reason.
    reason: &'static str,
    /// The metric label (the limit's name).
    label: &'a str,
}

/// A job waiting for a lock or a slot: what it watched, since when, and why.
struct Waiting {
    watch: Watch,
    since: Option<(Instant, &'static str)>,
    received: Instant,
    interval: Duration,
}

impl Waiting {
    fn new() -> Self {
        Waiting { watch: Watch::default(), since: None, received: Instant::now(), interval: FIRST_POLL }
    }

    fn watch(&mut self) -> &mut Watch {
        &mut self.watch
    }

    /// Waits until what is wanted looks free (true), or until the job should hand its message
    /// back (false): at shutdown, or after [`HAND_BACK_AFTER`].
    async fn wait(&mut self, gate: &Gate, wanted: &Wanted, reason: &'static str) -> Result<bool, CallError> {
        self.begin(reason);
        loop {
            if self.received.elapsed() >= HAND_BACK_AFTER {
                return Ok(false);
            }
            let waker = gate.leases.waker(wanted.key());
            let woken = {
                let notified = waker.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                tokio::select! {
                    () = notified => Some(true),
                    () = tokio::time::sleep(self.interval) => Some(false),
                    () = gate.stop_waiting.cancelled() => None,
                }
            };
            gate.leases.forget_waker(wanted.key(), waker);
            let Some(woken) = woken else {
                return Ok(false);
            };
            self.interval = if woken { FIRST_POLL } else { (self.interval * 2).min(MAX_POLL) };
            if gate.leases.looks_free(wanted, &mut self.watch).await? {
                return Ok(true);
            }
        }
    }

    /// Counts the job as waiting for `reason` from now, unless it already was.
    fn begin(&mut self, reason: &'static str) {
        match self.since {
            Some((_, current)) if current == reason => {}
            _ => {
                self.finish();
                JobWaitStarted { reason }.emit();
                self.since = Some((Instant::now(), reason));
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActionRegistry;
    use opsfleet_backend::EmbeddedBackend;
    use opsfleet_protocol::config::fixture::{instance_job, noop_task, tasks};
    use opsfleet_protocol::ports::Backend;

    #[tokio::test]
    async fn a_lock_this_process_failed_to_release_is_not_taken_again_as_its_own() {
        let text = format!("[fleet]\nname = \"g\"\n{}", tasks(&[noop_task("t", "")]));
        let config = Arc::new(Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config"));
        let backend = EmbeddedBackend::new();
        backend.ensure_table("g").await.expect("table");
        let store = backend.store("g").await.expect("store");
        let clock = Clock::new();
        let ledger = Ledger::new(Arc::clone(&store), clock, Duration::from_secs(3600));
        let gate = Gate::new(Leases::new(store), ledger, Arc::clone(&config), clock, "w".into());
        let job = instance_job(&config, "t", "e", "i-1");
        let task = config.task("t").expect("task");
        let Taken::All(first) = gate.take(&job, task, &mut Watch::default(), false, None).await.expect("take") else {
            panic!("the lock is free");
        };
        let owner = first.lock().owner.clone();
        // Its release failed: the lock stays with the first acquisition until it lapses.
        first.lost();
        match gate.take(&job, task, &mut Watch::default(), false, None).await.expect("take again") {
            Taken::Busy { holder: Some(holder), .. } => assert_eq!(holder.owner, owner),
            Taken::All(again) => panic!("taken again without a write, as {}", again.lock().owner),
            _ => panic!("the lock is what is busy"),
        }
    }
}
