//! Running one job message or check message: the ledger, the lock, the slots, the action,
//! and what to do with the message afterwards. Actions only say what to do; everything around
//! them is here.

use crate::actions::{Action, ActionContext, ActionRegistry, Step};
use crate::check::{CheckMessage, CHECK_VERSION};
use crate::clock::Clock;
use crate::lease::{lock_key, Acquire, Lease, Leases};
use crate::ledger::{Attempt, Begin, Ledger, Status};
use crate::telemetry::{
    CheckRan, JobAlreadyFinished, JobFinished, JobStarted, LeaseLost, LockAcquisition, MessageDeadLettered,
    RunCancelled, SlotAcquired, SlotUnavailable, WorkerCallFailed,
};
use opsfleet_protocol::config::Task;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage, Queue, QueueError, ReceivedMessage, StoreError, MAX_DELAY};
use opsfleet_protocol::template::TemplateInput;
use opsfleet_protocol::{Config, Job};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod checks;
mod dead_letter;

/// What to do with a message once it was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with: delete it.
    Delete,
    /// Hand it back, visible again after this long (zero: at once).
    Retry(Duration),
}

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A queue is missing or unreachable.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The table is missing or unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The leases a running job holds.
#[derive(Debug, Clone)]
struct Holding {
    lock: Lease,
    slots: Vec<Lease>,
    locked_ms: u64,
    started_ms: u64,
    /// When the oldest of the leases was last written (taken before the call was sent), so
    /// the worker knows when they lapse if heartbeats keep failing.
    renewed: tokio::time::Instant,
}

impl Holding {
    fn all(&self) -> impl Iterator<Item = &Lease> {
        std::iter::once(&self.lock).chain(&self.slots)
    }
}

/// How an action step ended, seen from the worker.
enum Guarded {
    Step(Step),
    /// A lease lapsed and was taken over: stop, write nothing.
    LeaseLost,
    /// The shutdown grace ran out.
    Interrupted,
}

/// Handles job and check messages for one fleet.
pub struct Worker {
    config: Arc<Config>,
    actions: ActionRegistry,
    leases: Leases,
    ledger: Ledger,
    clock: Clock,
    checks: Arc<dyn Queue>,
    partitions: Vec<Arc<dyn Queue>>,
    dead_letters: Vec<Arc<dyn Queue>>,
    checks_dead_letter: Arc<dyn Queue>,
    id: String,
    dry_run: bool,
    lease: Duration,
    hard_stop: CancellationToken,
}

impl Worker {
    /// Opens the fleet's table, checks queue and dead-letter queues.
    pub async fn open(
        backend: &dyn Backend,
        config: Arc<Config>,
        actions: ActionRegistry,
        id: String,
        dry_run: bool,
        hard_stop: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let fleet = &config.fleet.name;
        let store = backend.store(&names::table(fleet)).await?;
        let clock = Clock::new();
        let retention = Duration::from_secs(u64::from(config.worker.ledger_retention_days) * 86_400);
        let mut dead_letters = Vec::new();
        let mut partitions = Vec::new();
        for p in 0..config.fleet.partitions.get() {
            dead_letters.push(backend.queue(&names::jobs_dlq(fleet, p)).await?);
            partitions.push(backend.queue(&names::jobs_queue(fleet, p)).await?);
        }
        Ok(Worker {
            leases: Leases::new(Arc::clone(&store), clock),
            ledger: Ledger::new(store, clock, retention),
            checks: backend.queue(&names::checks_queue(fleet)).await?,
            checks_dead_letter: backend.queue(&names::checks_dlq(fleet)).await?,
            lease: Duration::from_secs(u64::from(config.worker.lease_secs.max(3))),
            config,
            actions,
            clock,
            partitions,
            dead_letters,
            id,
            dry_run,
            hard_stop,
        })
    }

    /// The worker's id, the prefix of every lease it holds.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Handles one message of a job partition.
    pub async fn handle_job(&self, message: &ReceivedMessage, partition: u32) -> Disposition {
        let job = match Job::from_json(&message.body) {
            Ok(job) => job,
            Err(e) => return self.dead_letter(partition, &message.body, &e.to_string(), 0).await,
        };
        match self.run_job(&job, message).await {
            Ok(d) => d,
            Err(e) => {
                WorkerCallFailed { what: "job", error: &e.to_string() }.emit();
                Disposition::Retry(jitter(Duration::from_secs(5)))
            }
        }
    }

    /// Handles one message of the checks queue.
    pub async fn handle_check(&self, message: &ReceivedMessage) -> Disposition {
        let check = match CheckMessage::from_json(&message.body) {
            Ok(check) => check,
            Err(e) => {
                let queue = Arc::clone(&self.checks_dead_letter);
                return self.dead_letter_to(queue.as_ref(), &message.body, &e, 0).await;
            }
        };
        match self.run_check(check, &message.message_id).await {
            Ok(d) => d,
            Err(e) => {
                WorkerCallFailed { what: "check", error: &e.to_string() }.emit();
                Disposition::Retry(jitter(Duration::from_secs(5)))
            }
        }
    }

    async fn run_job(&self, job: &Job, message: &ReceivedMessage) -> Result<Disposition, CallError> {
        let Some(task) = self.config.task(&job.task) else {
            return Ok(self
                .dead_letter(
                    job.partition,
                    &message.body,
                    &format!("task {} is not in this worker's config", job.task),
                    0,
                )
                .await);
        };
        let Some(action) = self.actions.get(&job.action).cloned() else {
            return Ok(self
                .dead_letter(
                    job.partition,
                    &message.body,
                    &format!("action {} is not known to this worker", job.action),
                    0,
                )
                .await);
        };
        if let Some(record) = self.ledger.job(&job.id).await? {
            if record.status == Status::Failed {
                return Ok(self.dead_letter_failed(job, record).await);
            }
            if record.status.is_final() {
                JobAlreadyFinished { job_id: &job.id, status: record.status.as_str() }.emit();
                return Ok(Disposition::Delete);
            }
        }
        let owner = format!("{}/{}", self.id, job.id);
        let input = TemplateInput { resource: &job.resource, task: &job.task, params: &job.params };
        let asked = tokio::time::Instant::now();
        let lock = match self.leases.acquire(&lock_key(&task.lock.render(input)), &owner, self.lease).await? {
            Acquire::Acquired(lock) => {
                LockAcquisition { job_id: &job.id, result: "acquired", holder: &owner }.emit();
                lock
            }
            Acquire::Held { by, .. } => {
                LockAcquisition { job_id: &job.id, result: "held", holder: &by }.emit();
                return Ok(Disposition::Retry(contention_backoff(message.receive_count)));
            }
        };
        let now = self.clock.now_ms();
        let mut holding = Holding { lock, slots: Vec::new(), locked_ms: now, started_ms: now, renewed: asked };
        let result = self.run_locked(job, message, task, &action, &owner, &mut holding).await;
        if result.is_err() {
            // A store or queue call failed: free what the job holds now rather than at lease
            // expiry (releasing what was already released changes nothing).
            self.release(&holding).await;
        }
        result
    }

    /// The part of a job run that holds its lock.
    async fn run_locked(
        &self,
        job: &Job,
        message: &ReceivedMessage,
        task: &Task,
        action: &Arc<dyn Action>,
        owner: &str,
        holding: &mut Holding,
    ) -> Result<Disposition, CallError> {
        let input = TemplateInput { resource: &job.resource, task: &job.task, params: &job.params };
        if task.max_errors.is_some() {
            let run = self.ledger.run(&job.run_id()).await?;
            if let Some(reason) = run.cancelled_because {
                let reason = format!("cancelled: {reason}");
                if self.ledger.cancel(job, owner, holding.lock.fence, &reason).await? {
                    self.ledger.count(job, Status::Cancelled).await?;
                    self.record_attempt(job, holding, 0, "CANCELLED", Some(&reason)).await;
                }
                JobFinished {
                    job_id: &job.id,
                    action: &job.action,
                    outcome: "cancelled",
                    took: Duration::ZERO,
                    detail: &reason,
                }
                .emit();
                self.release(holding).await;
                return Ok(Disposition::Delete);
            }
        }

        if let Some(max) = task.max_concurrency {
            match self.leases.acquire_slot("run", &job.run_id(), max, owner, self.lease).await? {
                Some(slot) => holding.slots.push(slot),
                None => return Ok(self.no_slot(job, holding, "max_concurrency").await),
            }
        }
        if let Some(limit) = task.limit.as_ref().and_then(|name| self.config.limits.get(name)) {
            let pool = limit.pool.render(input);
            match self.leases.acquire_slot(&limit.name, &pool, limit.max, owner, self.lease).await? {
                Some(slot) => {
                    let waited = if message.receive_count > 1 {
                        Duration::from_millis(self.clock.now_ms().saturating_sub(message.sent_ms))
                    } else {
                        Duration::ZERO
                    };
                    SlotAcquired { limit: &limit.name, waited }.emit();
                    holding.slots.push(slot);
                }
                None => return Ok(self.no_slot(job, holding, &limit.name).await),
            }
        }

        let attempt = match self.ledger.begin(job, owner, holding.lock.fence).await? {
            Begin::Started(n) => n,
            Begin::Finished(status) => {
                JobAlreadyFinished { job_id: &job.id, status: status.as_str() }.emit();
                self.release(holding).await;
                return Ok(Disposition::Delete);
            }
            Begin::Stale => {
                self.release(holding).await;
                return Ok(Disposition::Retry(contention_backoff(message.receive_count)));
            }
        };
        holding.started_ms = self.clock.now_ms();
        JobStarted {
            job_id: &job.id,
            since_event: Duration::from_millis(self.clock.now_ms().saturating_sub(job.received_ms)),
        }
        .emit();
        let started = tokio::time::Instant::now();
        let ctx = ActionContext { job, dry_run: self.dry_run, attempt, check: 0 };
        let step = if self.dry_run && action.mutates() {
            Guarded::Step(Step::Done { summary: format!("dry run: {}", action.describe(ctx)) })
        } else {
            self.guarded(action.start(ctx), holding, &job.id).await
        };
        self.settle(job, task, action, holding.clone(), attempt, None, step, started.elapsed()).await
    }

    /// Runs an action step while heartbeating every lease held; stops when one is lost or the
    /// shutdown grace runs out.
    async fn guarded(&self, step: impl std::future::Future<Output = Step>, holding: &Holding, job_id: &str) -> Guarded {
        let beat = async {
            // Renew every lease a third of the way through; when renewals keep failing (or
            // hang), stop two thirds of the way, before the leases can lapse unseen.
            let mut renewed = holding.renewed;
            loop {
                let give_up = renewed + self.lease * 2 / 3;
                tokio::time::sleep_until(renewed + self.lease / 3).await;
                let sent = tokio::time::Instant::now();
                let renew = async {
                    let mut all_ok = true;
                    for lease in holding.all() {
                        match self.leases.heartbeat(lease, self.lease).await {
                            Ok(true) => {}
                            Ok(false) => return Err(lease.key.clone()),
                            Err(e) => {
                                all_ok = false;
                                WorkerCallFailed { what: "heartbeat", error: &e.to_string() }.emit();
                            }
                        }
                    }
                    Ok(all_ok)
                };
                match tokio::time::timeout_at(give_up, renew).await {
                    Ok(Ok(true)) => renewed = sent,
                    Ok(Ok(false)) => {
                        // Try again soon, until the deadline.
                        if tokio::time::Instant::now() >= give_up {
                            LeaseLost { job_id, key: &holding.lock.key }.emit();
                            return;
                        }
                        tokio::time::sleep((self.lease / 20).max(Duration::from_millis(100))).await;
                    }
                    Ok(Err(key)) => {
                        LeaseLost { job_id, key: &key }.emit();
                        return;
                    }
                    Err(_) => {
                        LeaseLost { job_id, key: &holding.lock.key }.emit();
                        return;
                    }
                }
            }
        };
        tokio::select! {
            step = step => Guarded::Step(step),
            () = beat => Guarded::LeaseLost,
            () = self.hard_stop.cancelled() => Guarded::Interrupted,
        }
    }

    /// Records what an action step came to and decides the message's fate.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        job: &Job,
        task: &Task,
        action: &Arc<dyn Action>,
        holding: Holding,
        attempt: u32,
        checking: Option<(u32, &serde_json::Value)>,
        step: Guarded,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let fence = holding.lock.fence;
        let checks = checking.map_or(0, |(n, _)| n);
        let step = match step {
            Guarded::Step(step) => step,
            Guarded::LeaseLost if checking.is_some() => return self.resume_lapsed(job, fence).await,
            Guarded::LeaseLost => return Ok(Disposition::Retry(Duration::ZERO)),
            // A check keeps its leases: whoever takes the check message next holds them.
            Guarded::Interrupted if checking.is_some() => return Ok(Disposition::Retry(Duration::ZERO)),
            Guarded::Interrupted => {
                self.release(&holding).await;
                return Ok(Disposition::Retry(Duration::ZERO));
            }
        };
        match step {
            Step::Done { summary } => {
                if self.ledger.finish(job, fence, Status::Succeeded, &summary).await? {
                    self.ledger.count(job, Status::Succeeded).await?;
                    self.record_attempt(job, &holding, attempt, "SUCCEEDED", None).await;
                    JobFinished {
                        job_id: &job.id,
                        action: action.name(),
                        outcome: "succeeded",
                        took,
                        detail: &summary,
                    }
                    .emit();
                }
                self.release(&holding).await;
                Ok(Disposition::Delete)
            }
            Step::Pending { check_after, state } => {
                if !self.ledger.pending(job, fence, &state, checks).await? {
                    self.release(&holding).await;
                    return Ok(Disposition::Delete);
                }
                self.schedule_check(job, &holding, attempt, checks, state, check_after).await
            }
            Step::Failed { retryable, error } => {
                let Some(failures) = self.ledger.failure(job, fence, &error).await? else {
                    return Ok(Disposition::Retry(Duration::ZERO));
                };
                if retryable && failures <= task.retries {
                    JobFinished { job_id: &job.id, action: action.name(), outcome: "retried", took, detail: &error }
                        .emit();
                    if let Some((_, state)) = checking {
                        // A failed check is checked again later, the job keeping its leases.
                        return self
                            .schedule_check(job, &holding, attempt, checks, state.clone(), failure_backoff(failures))
                            .await;
                    }
                    self.record_attempt(job, &holding, attempt, "RETRY", Some(&error)).await;
                    self.release(&holding).await;
                    return Ok(Disposition::Retry(failure_backoff(failures)));
                }
                let reason = if retryable {
                    format!("{error} (failure {failures}, over retries = {})", task.retries)
                } else {
                    error
                };
                if self.ledger.finish(job, fence, Status::Failed, &reason).await? {
                    let run = self.ledger.count(job, Status::Failed).await?;
                    self.record_attempt(job, &holding, attempt, "FAILED", Some(&reason)).await;
                    if let Some(max) = task.max_errors {
                        if run.failed > max {
                            let why = format!("run failed {} jobs, over max_errors = {max}", run.failed);
                            self.ledger.cancel_run(&job.run_id(), &why).await?;
                            RunCancelled { run: &job.run_id(), task: &job.task, failed: run.failed }.emit();
                        }
                    }
                }
                JobFinished { job_id: &job.id, action: action.name(), outcome: "failed", took, detail: &reason }.emit();
                self.release(&holding).await;
                let body = serde_json::to_string(job).unwrap_or_default();
                Ok(self.dead_letter(job.partition, &body, &reason, fence).await)
            }
        }
    }

    async fn no_slot(&self, job: &Job, holding: &Holding, limit: &str) -> Disposition {
        SlotUnavailable { job_id: &job.id, limit }.emit();
        self.release(holding).await;
        Disposition::Retry(Duration::from_millis(rand::thread_rng().gen_range(300..2_000)))
    }

    async fn release(&self, holding: &Holding) {
        for lease in holding.all() {
            if let Err(e) = self.leases.release(lease).await {
                WorkerCallFailed { what: "release", error: &e.to_string() }.emit();
            }
        }
    }

    async fn record_attempt(&self, job: &Job, holding: &Holding, number: u32, outcome: &str, error: Option<&str>) {
        let attempt = Attempt {
            owner: holding.lock.owner.clone(),
            fence: holding.lock.fence,
            locked_ms: holding.locked_ms,
            started_ms: holding.started_ms,
            released_ms: self.clock.now_ms(),
            outcome: outcome.to_owned(),
            error: error.map(str::to_owned),
        };
        if let Err(e) = self.ledger.attempt(&job.id, number, &attempt).await {
            WorkerCallFailed { what: "attempt", error: &e.to_string() }.emit();
        }
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Backoff when the lock is held: grows with the receive count, capped at 30 s, jittered.
fn contention_backoff(receive_count: u32) -> Duration {
    let exp = receive_count.saturating_sub(1).min(5);
    jitter(Duration::from_millis(500 << exp).min(Duration::from_secs(30)))
}

/// Backoff after a real failure: 2^failures seconds, capped at 5 minutes, jittered.
fn failure_backoff(failures: u32) -> Duration {
    jitter(Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300)))
}
