//! Running one job message or check message: the ledger, the lock, the slots, the action,
//! and what to do with the message afterwards. Actions only say what to do; everything around
//! them is here.
//!
//! - `take`: the lock and the slots, and waiting for them without holding a worker;
//! - `job`: a job message from its ledger check to its action's first step;
//! - `settle`: running a step under heartbeats and a deadline, and recording what it came to;
//! - `checks`: completion checks, and taking over a pending job whose leases lapsed;
//! - `dead_letter`: what must not run again goes to a DLQ with its reason.

use crate::actions::{Action, ActionContext, ActionRegistry, Step};
use crate::check::{CheckMessage, CHECK_VERSION};
use crate::clock::Clock;
use crate::lease::{Lease, Leases};
use crate::ledger::{Attempt, Ledger, Status, Writer};
use crate::telemetry::{jobs_in_flight, WorkerCallFailed};
use opsfleet_protocol::config::Task;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, ReceivedMessage, StoreError};
use opsfleet_protocol::{Config, Job};
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod checks;
mod dead_letter;
mod job;
mod settle;
mod take;

/// What to do with a message once it was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with: delete it.
    Delete,
    /// Hand it back, visible again after this long (zero: at once).
    Retry(Duration),
    /// Hand it back at once, not started: the worker is shutting down (or the job waited as
    /// long as SQS lets a message stay hidden).
    Returned,
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

impl WorkerError {
    /// Whether trying again later may succeed (transport, throttling, a server error).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Queue(e) => e.is_transient(),
            WorkerError::Store(e) => e.is_transient(),
        }
    }
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
    /// Whether the job's record holds this holder's fence (the attempt was begun, or a write
    /// of its outcome went through); until then, its first write begins the attempt too.
    begun: bool,
}

impl Holding {
    fn all(&self) -> impl Iterator<Item = &Lease> {
        std::iter::once(&self.lock).chain(&self.slots)
    }

    /// This holder as the writer of the job's record, recording `attempt` with the write.
    fn writer<'a>(&'a self, attempt: Option<&'a Attempt>) -> Writer<'a> {
        Writer { fence: self.lock.fence, unbegun: (!self.begun).then_some(self.lock.owner.as_str()), attempt }
    }
}

/// A job running in this process: it holds one of the `max_in_flight` permits, and the
/// in-flight gauge counts it.
struct Running {
    _permit: OwnedSemaphorePermit,
    count: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        jobs_in_flight(self.count.fetch_sub(1, Ordering::SeqCst).saturating_sub(1));
    }
}

/// How long a pending job's leases outlast its check's due time: a check later than this (a
/// checks backlog of over this long, or a check in the checks DLQ) finds its leases taken
/// over and resumes from the recorded state under new ones.
pub const PENDING_SLACK: Duration = Duration::from_secs(3600);

/// Handles job and check messages for one fleet.
pub struct Worker {
    config: Arc<Config>,
    store: Arc<dyn opsfleet_protocol::ports::Store>,
    actions: ActionRegistry,
    leases: Leases,
    ledger: Ledger,
    clock: Clock,
    checks: Arc<dyn Queue>,
    dead_letters: Vec<Arc<dyn Queue>>,
    checks_dead_letter: Arc<dyn Queue>,
    id: String,
    dry_run: bool,
    lease: Duration,
    /// Jobs running actions (`max_in_flight`).
    run_permits: Arc<Semaphore>,
    /// Completion checks running, apart from jobs so that a backlog of jobs never delays the
    /// checks of pending ones.
    check_permits: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    /// Numbers this worker's acquisitions, so that each has an owner of its own.
    acquisitions: std::sync::atomic::AtomicU64,
    /// AWS clients for the actions (none in plan mode and on the embedded backend).
    aws: Option<Arc<opsfleet_backend::aws::AwsAccounts>>,
    /// Cancelled at shutdown: jobs waiting for a lock or a slot hand their messages back.
    stop_waiting: CancellationToken,
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
        let mut dead_letters = Vec::new();
        for p in 0..config.fleet.partitions.get() {
            dead_letters.push(backend.queue(&names::jobs_dlq(fleet, p)).await?);
        }
        let in_flight = config.worker.max_in_flight.get() as usize;
        Ok(Worker {
            leases: Leases::new(Arc::clone(&store)),
            ledger: Ledger::new(Arc::clone(&store), clock, retention(&config)),
            store,
            checks: backend.queue(&names::checks_queue(fleet)).await?,
            checks_dead_letter: backend.queue(&names::checks_dlq(fleet)).await?,
            lease: Duration::from_secs(u64::from(config.worker.lease_secs.max(3))),
            run_permits: Arc::new(Semaphore::new(in_flight)),
            check_permits: Arc::new(Semaphore::new(in_flight)),
            in_flight: Arc::default(),
            acquisitions: Default::default(),
            aws: None,
            stop_waiting: CancellationToken::new(),
            config,
            actions,
            clock,
            dead_letters,
            id,
            dry_run,
            hard_stop,
        })
    }

    /// The same worker with AWS clients for its actions.
    pub fn with_aws(mut self, aws: Arc<opsfleet_backend::aws::AwsAccounts>) -> Self {
        self.aws = Some(aws);
        self
    }

    /// The same worker with another wall clock for its audit trail (tests of skewed clocks).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.ledger = self.ledger.with_clock(clock);
        self
    }

    /// The worker's id, the prefix of every lease it holds.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The fleet's table.
    pub(crate) fn store(&self) -> Arc<dyn opsfleet_protocol::ports::Store> {
        Arc::clone(&self.store)
    }

    /// How many jobs run now (their action steps, not the ones waiting).
    pub fn in_flight_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }

    /// The permits of jobs running actions (`max_in_flight`): the consumer takes one for each
    /// job message it receives, so it holds only as many unstarted messages as can start; a job
    /// that waits for a lock or a slot gives its permit back while it waits.
    pub fn run_capacity(&self) -> Arc<Semaphore> {
        Arc::clone(&self.run_permits)
    }

    /// The permits of running completion checks.
    pub fn check_capacity(&self) -> Arc<Semaphore> {
        Arc::clone(&self.check_permits)
    }

    /// Tells jobs waiting for a lock or a slot to hand their messages back (shutdown).
    pub fn stop_waiting(&self) {
        self.stop_waiting.cancel();
    }

    /// Handles one message of a job partition, starting with the run permit the consumer
    /// took for it (see [`Worker::run_capacity`]).
    pub async fn handle_job(
        &self,
        message: &ReceivedMessage,
        partition: u32,
        permit: OwnedSemaphorePermit,
    ) -> Disposition {
        let job = match Job::from_json(&message.body) {
            Ok(job) => job,
            Err(e) => return self.dead_letter_message(partition, message, &e.to_string()).await,
        };
        // Every line logged about the job carries its id, task, resource and event.
        let span = tracing::info_span!("job", job_id = %job.id, task = %job.task, resource = %job.resource.key(), event_id = %job.event_id);
        match self.run_job(&job, message, self.running_with(permit)).instrument(span).await {
            Ok(d) => d,
            Err(e) => {
                WorkerCallFailed { what: "job", error: &e.to_string() }.emit();
                Disposition::Retry(jitter(Duration::from_secs(5)))
            }
        }
    }

    /// Handles one message of the checks queue, starting with the check permit the consumer
    /// took for it.
    pub async fn handle_check(&self, message: &ReceivedMessage, permit: OwnedSemaphorePermit) -> Disposition {
        let check = match CheckMessage::from_json(&message.body, self.clock.now_ms()) {
            Ok(check) => check,
            Err(e) => {
                let queue = Arc::clone(&self.checks_dead_letter);
                let seed = format!("message/{}", message.message_id);
                return self.dead_letter_to(queue.as_ref(), &message.body, &e, &seed, message.sent_ms).await;
            }
        };
        let job = &check.job;
        let span = tracing::info_span!("job", job_id = %job.id, task = %job.task, resource = %job.resource.key(), event_id = %job.event_id);
        match self.run_check(check.clone(), &message.message_id, self.running_with(permit)).instrument(span).await {
            Ok(d) => d,
            Err(e) => {
                WorkerCallFailed { what: "check", error: &e.to_string() }.emit();
                Disposition::Retry(jitter(Duration::from_secs(5)))
            }
        }
    }

    /// Takes one of the `max_in_flight` permits to run a job; `None` at shutdown.
    async fn running(&self, permits: &Arc<Semaphore>) -> Option<Running> {
        let permit = tokio::select! {
            permit = Arc::clone(permits).acquire_owned() => permit.ok()?,
            () = self.stop_waiting.cancelled() => return None,
        };
        Some(self.running_with(permit))
    }

    /// Counts a permit already taken as a running job.
    fn running_with(&self, permit: OwnedSemaphorePermit) -> Running {
        jobs_in_flight(self.in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        Running { _permit: permit, count: Arc::clone(&self.in_flight) }
    }

    /// A lease owner unique to one acquisition: `worker/job/n`.
    fn owner(&self, job: &Job) -> String {
        format!("{}/{}/{}", self.id, job.id, self.acquisitions.fetch_add(1, Ordering::Relaxed))
    }

    async fn release(&self, holding: &Holding) {
        for lease in holding.all() {
            if let Err(e) = self.leases.release(lease).await {
                WorkerCallFailed { what: "release", error: &e.to_string() }.emit();
            }
        }
    }

    /// An attempt of this holder, released now, for the audit trail.
    fn attempt(&self, holding: &Holding, number: u32, outcome: &str, error: Option<&str>) -> Attempt {
        Attempt {
            number,
            owner: holding.lock.owner.clone(),
            fence: holding.lock.fence,
            locked_ms: holding.locked_ms,
            started_ms: holding.started_ms,
            released_ms: self.clock.now_ms(),
            outcome: outcome.to_owned(),
            error: error.map(str::to_owned),
        }
    }

    fn task_and_action(&self, job: &Job) -> Result<(&Task, Arc<dyn Action>), String> {
        let task =
            self.config.task(&job.task).ok_or_else(|| format!("task {} is not in this worker's config", job.task))?;
        let action = self
            .actions
            .get(&job.action)
            .cloned()
            .ok_or_else(|| format!("action {} is not known to this worker", job.action))?;
        Ok((task, action))
    }
}

fn retention(config: &Config) -> Duration {
    Duration::from_secs(u64::from(config.worker.ledger_retention_days) * 86_400)
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Backoff after a real failure: 2^failures seconds, capped at 5 minutes, jittered.
fn failure_backoff(failures: u32) -> Duration {
    jitter(Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300)))
}
