//! Running one job message or check message: the ledger, the lock, the slots, the action,
//! and what to do with the message afterwards. Actions only say what to do; the worker is
//! composed of the parts around them, each in its own file:
//!
//! - `held`: what a running job holds (its lock, its slots, its attempt) and the only ways to
//!   let go of it;
//! - `gate`: how a job takes its leases, and how it waits for them without holding a worker;
//! - `guarded`: running an action step under heartbeats and a deadline;
//! - `recorder` and `pending`: how an outcome is recorded (the ledger, the release, the next
//!   check, the dead letter);
//! - `dead_letters`: what must not run again goes to a DLQ with its reason;
//! - `job`: a job message from its ledger check to its action's first step;
//! - `checks`: how a check continues a job;
//! - `permits`: how many jobs and checks run at once.

use crate::actions::{ActionContext, ActionRegistry, AnyAction, Step};
use crate::check::CheckMessage;
use crate::lease::Leases;
use crate::ledger::{Ledger, Status};
use crate::telemetry::WorkerCallFailed;
use dead_letters::DeadLetters;
use gate::Gate;
use guarded::{Guarded, StepGuard};
use opsfleet_protocol::config::Task;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, PortError, ReceivedMessage};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job};
use permits::Permits;
use rand::Rng;
use recorder::Recorder;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod awaiting;
mod checks;
mod dead_letters;
mod gate;
mod guarded;
mod halted;
mod held;
mod job;
mod pending;
mod permits;
mod recorder;

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

/// Why the worker cannot start: a queue or the table is missing or unreachable.
pub type WorkerError = PortError;

/// A queue or store call of a message's handling that failed: the message is retried.
type CallError = PortError;

/// How long a pending job's leases outlast its check's due time: a check later than this (a
/// checks backlog of over this long, or a check in the checks DLQ) finds its leases taken
/// over and resumes from the recorded state under new ones.
pub const PENDING_SLACK: Duration = Duration::from_secs(3600);

/// Handles job and check messages for one fleet.
pub struct Worker {
    config: Arc<Config>,
    store: Arc<dyn opsfleet_protocol::ports::Store>,
    actions: ActionRegistry,
    ledger: Ledger,
    clock: Clock,
    /// Takes jobs' leases and makes them wait.
    gate: Gate,
    /// Runs action steps under heartbeats.
    guard: StepGuard,
    /// Records outcomes, pending checks and dead letters.
    recorder: Recorder,
    /// Jobs running actions (`max_in_flight`).
    run_permits: Permits,
    /// Completion checks running, apart from jobs so that a backlog of jobs never delays the
    /// checks of pending ones.
    check_permits: Permits,
    in_flight: Arc<AtomicUsize>,
    id: String,
    dry_run: bool,
    /// AWS clients for the actions (none in plan mode and on the embedded backend).
    aws: Option<Arc<dyn opsfleet_backend::aws::AwsClients>>,
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
        let ledger = Ledger::new(Arc::clone(&store), clock, retention(&config));
        let leases = Leases::new(Arc::clone(&store));
        let gate = Gate::new(leases.clone(), ledger.clone(), Arc::clone(&config), clock, id.clone());
        let recorder = Recorder {
            ledger: ledger.clone(),
            clock,
            dead_letters: DeadLetters::open(backend, &config, ledger.clone(), clock).await?,
            checks: backend.queue(&names::checks_queue(fleet)).await?,
            lease: gate.lease(),
        };
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight = config.worker.max_in_flight.get() as usize;
        Ok(Worker {
            guard: StepGuard::new(leases, gate.lease(), hard_stop),
            run_permits: Permits::new(max_in_flight, Arc::clone(&in_flight)),
            check_permits: Permits::new(max_in_flight, Arc::clone(&in_flight)),
            in_flight,
            gate,
            recorder,
            store,
            ledger,
            clock,
            config,
            actions,
            id,
            dry_run,
            aws: None,
        })
    }

    /// The same worker with AWS clients for its actions.
    pub fn with_aws(mut self, aws: Arc<dyn opsfleet_backend::aws::AwsClients>) -> Self {
        self.gate.set_aws(Arc::clone(&aws));
        self.aws = Some(aws);
        self
    }

    /// The same worker with another wall clock for its audit trail (tests of skewed clocks).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.ledger = self.ledger.with_clock(clock);
        self.gate.set_clock(clock);
        self.recorder.set_clock(clock);
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
        self.run_permits.pool()
    }

    /// The permits of running completion checks.
    pub fn check_capacity(&self) -> Arc<Semaphore> {
        self.check_permits.pool()
    }

    /// Tells jobs waiting for a lock or a slot to hand their messages back (shutdown).
    pub fn stop_waiting(&self) {
        self.gate.stop_waiting();
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
            Err(e) => return self.recorder.dead_letters().message(partition, message, &e.to_string()).await,
        };
        // Every line logged about the job carries its id, task, resource and event.
        let span = tracing::info_span!("job", job_id = %job.id, task = %job.task, resource = %job.resource.key(), event_id = %job.event_id);
        let mut first = Some(self.run_permits.count(permit));
        let mut outage = Outage::default();
        loop {
            let running = match first.take() {
                Some(running) => running,
                None => match self.gate.permit(&self.run_permits).await {
                    Some(running) => running,
                    None => return Disposition::Returned,
                },
            };
            match self.run_job(&job, message, running).instrument(span.clone()).await {
                Ok(d) => return d,
                Err(e) => {
                    WorkerCallFailed { what: "job", error: &e.to_string() }.emit();
                    if !outage.wait(&e, &self.gate).await {
                        return Disposition::Retry(jitter(Duration::from_secs(5)));
                    }
                }
            }
        }
    }

    /// Handles one message of the checks queue, starting with the check permit the consumer
    /// took for it.
    pub async fn handle_check(&self, message: &ReceivedMessage, permit: OwnedSemaphorePermit) -> Disposition {
        let check = match CheckMessage::from_json(&message.body, self.clock.now_ms()) {
            Ok(check) => check,
            Err(e) => return self.recorder.dead_letters().check_message(message, &e).await,
        };
        let job = &check.job;
        let span = tracing::info_span!("job", job_id = %job.id, task = %job.task, resource = %job.resource.key(), event_id = %job.event_id);
        let token = &message.message_id;
        let mut first = Some(self.check_permits.count(permit));
        let mut outage = Outage::default();
        loop {
            let running = match first.take() {
                Some(running) => running,
                None => match self.gate.permit(&self.check_permits).await {
                    Some(running) => running,
                    None => return Disposition::Returned,
                },
            };
            match self.run_check(check.clone(), token, running).instrument(span.clone()).await {
                Ok(d) => return d,
                Err(e) => {
                    WorkerCallFailed { what: "check", error: &e.to_string() }.emit();
                    if !outage.wait(&e, &self.gate).await {
                        return Disposition::Retry(jitter(Duration::from_secs(5)));
                    }
                }
            }
        }
    }

    /// Dead-letters a message whose handling panicked (a bug) with the panic's message, to
    /// its partition's DLQ or the checks DLQ.
    pub async fn dead_letter_panicked(
        &self,
        message: &ReceivedMessage,
        partition: Option<u32>,
        reason: &str,
    ) -> Disposition {
        match partition {
            Some(p) => self.recorder.dead_letters().message(p, message, reason).await,
            None => self.recorder.dead_letters().check_message(message, reason).await,
        }
    }

    /// What an action is told about a job's step.
    fn context<'a>(&'a self, job: &'a Job, attempt: u32, check: u32) -> ActionContext<'a> {
        ActionContext {
            job,
            dry_run: self.dry_run,
            attempt,
            check,
            aws: self.aws.as_deref(),
            now_ms: self.clock.now_ms(),
        }
    }

    fn task_and_action(&self, job: &Job) -> Result<(&Task, Arc<dyn AnyAction>), String> {
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

/// The longest wait between tries of a message's handling while the table or a queue is
/// unreachable.
const OUTAGE_MAX_WAIT: Duration = Duration::from_secs(30);

/// A message's handling waiting out an outage of the table or a queue: it keeps the message
/// (hidden, its visibility extended with the others held) and tries again, backing off, instead
/// of handing it back, so that an outage spends none of the message's receives.
#[derive(Default)]
struct Outage {
    tries: u32,
}

impl Outage {
    /// Waits before the next try after `error`; false when the error is not an outage (a
    /// retry through the message's visibility is due) or the worker is shutting down.
    async fn wait(&mut self, error: &CallError, gate: &Gate) -> bool {
        if !error.is_transient() || gate.stopping() {
            return false;
        }
        self.tries += 1;
        let pause = jitter(Duration::from_millis(500 << self.tries.min(6)).min(OUTAGE_MAX_WAIT));
        gate.pause(pause).await
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Backoff after a real failure: 2^failures seconds, capped at 5 minutes, jittered.
fn failure_backoff(failures: u32) -> Duration {
    jitter(Duration::from_secs(1 << failures.min(8)).min(Duration::from_secs(300)))
}
