//! The ingest loop: receive, route, acknowledge.

use crate::approving::RunApprovals;
use crate::batcher::Batcher;
use crate::blast_radius::{self, Refusal};
use crate::discovery::{Discover, DiscoveryError, PlaceFailed};
use crate::discovery_retry::{DiscoveryRetry, DISCOVERY_RETRIES};
use crate::halting::AlarmHalts;
use crate::telemetry::{
    DiscoveryPlacesFailed, EventDeferred, EventReceived, EventRejected, EventRouted, EventUnmatched, JobsEmitted,
    PollFailed, TaskFoundNothing,
};
use futures::future::join_all;
use opsfleet_protocol::event::{normalize, TargetError};
use opsfleet_protocol::liveness;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{send_all, Backend, OutgoingMessage, Queue, QueueError, ReceivedMessage, SendError};
use opsfleet_protocol::setup::EVENTS_MAX_RECEIVE;
use opsfleet_protocol::{Clock, DeadLetter, Job, PlanError, Planner};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long one receive waits for messages (SQS's maximum long poll).
const LONG_POLL: Duration = Duration::from_secs(20);

/// Received batches one long-poll loop routes at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// Why the router cannot start or keep going.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A queue is missing or unreachable.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The fleet's table is missing or unreachable (a fleet with halting alarms).
    #[error(transparent)]
    Store(#[from] opsfleet_protocol::ports::StoreError),
}

impl RouterError {
    /// Whether trying again later may succeed (transport, throttling, a server error).
    pub fn is_transient(&self) -> bool {
        match self {
            RouterError::Queue(e) => e.is_transient(),
            RouterError::Store(e) => e.is_transient(),
        }
    }
}

/// What became of one input message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every job was accepted by its partition; the message can be deleted.
    Routed {
        /// The event id.
        event_id: String,
        /// The jobs sent.
        jobs: Vec<Job>,
    },
    /// No task matched; the message can be deleted.
    Unmatched {
        /// The event id.
        event_id: String,
    },
    /// The message went to the dead-letter queue with this reason; it can be deleted.
    DeadLettered {
        /// A bounded label of the reason.
        kind: &'static str,
        /// The one-line reason.
        reason: String,
    },
    /// Something that may pass failed; the message stays and is received again.
    Deferred {
        /// What failed.
        error: String,
    },
}

impl Outcome {
    /// Whether the input message is done with and can be deleted.
    pub fn acknowledges(&self) -> bool {
        !matches!(self, Outcome::Deferred { .. })
    }
}

/// A message planned and ready to send.
struct Ready {
    event_id: String,
    jobs: Vec<Job>,
    failed_discovery: Option<String>,
    /// Places of discoveries that failed, by task, to retry on their own.
    failed_places: Vec<(String, Vec<PlaceFailed>)>,
    /// Runs refused for their size.
    refused: Vec<Refusal>,
    /// The message is itself a retry of failed places.
    retry: Option<DiscoveryRetry>,
    /// The event's body, for the retries.
    body: String,
    received_ms: u64,
    started: Instant,
}

/// What planning a message came to.
enum Prepared {
    /// Its jobs are ready to send.
    Ready(Box<Ready>),
    /// Nothing to send: its outcome.
    Done(Outcome),
}

/// Routes events of one fleet.
pub struct Router {
    planner: Arc<Planner>,
    events: Arc<dyn Queue>,
    dead_letter: Arc<dyn Queue>,
    batchers: Vec<Batcher>,
    discover: Arc<dyn Discover>,
    /// The alarms that halt tasks (none when no task has `halt_on_alarms`).
    halts: Option<AlarmHalts>,
    /// Where runs of tasks with `approve` ask for it (none when no task has it).
    approvals: Option<RunApprovals>,
    /// When events are received (those whose send time SQS does not say) and dead-lettered.
    clock: Clock,
}

impl Router {
    /// Opens the fleet's queues.
    pub async fn open(
        backend: &dyn Backend,
        planner: Arc<Planner>,
        discover: Arc<dyn Discover>,
    ) -> Result<Self, RouterError> {
        let fleet = planner.config().fleet.name.clone();
        let events = backend.queue(&names::events_queue(&fleet)).await?;
        let dead_letter = backend.queue(&names::events_dlq(&fleet)).await?;
        let mut batchers = Vec::new();
        for p in 0..planner.config().fleet.partitions.get() {
            batchers.push(Batcher::start(backend.queue(&names::jobs_queue(&fleet, p)).await?));
        }
        // The table, once, when a task's halting alarms or approvals are kept in it.
        let config = planner.config();
        let (mut halts, mut approvals) = (None, None);
        if config.tasks.iter().any(|t| !t.halt_on_alarms.is_empty() || t.approve.is_some()) {
            let store = backend.store(&names::table(&fleet)).await?;
            halts = AlarmHalts::of(&store, config);
            approvals = RunApprovals::of(&store, config);
        }
        Ok(Router { planner, events, dead_letter, batchers, discover, halts, approvals, clock: Clock::new() })
    }

    /// The same router reading time from another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the configured number of concurrent long-poll loops until `shutdown` is
    /// cancelled; each loop finishes the batches it holds before it stops.
    ///
    /// A loop receives again while the batches it received are being routed, up to
    /// [`BATCHES_IN_FLIGHT`] of them: a batch's jobs wait up to the batchers' linger for others
    /// to fill their requests, and that wait must not bound the events a loop takes in.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let pollers = self.planner.config().router.pollers.get();
        let mut tasks = tokio::task::JoinSet::new();
        for poller in 0..pollers {
            let router = Arc::clone(&self);
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let alive = liveness::LoopBeat::new(format!("router poller {poller}"));
                let mut failures = 0u32;
                let mut routing = tokio::task::JoinSet::new();
                let room = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
                while !shutdown.is_cancelled() {
                    alive.beat();
                    // Stop while waiting for room or messages, never in the middle of a batch.
                    let permit = tokio::select! {
                        permit = alive.waiting(Arc::clone(&room).acquire_owned()) => match permit { Ok(p) => p, Err(_) => break },
                        () = shutdown.cancelled() => break,
                    };
                    while routing.try_join_next().is_some() {}
                    let received = tokio::select! {
                        received = router.receive(LONG_POLL) => received,
                        () = shutdown.cancelled() => break,
                    };
                    let failed = match received {
                        Ok(messages) => {
                            failures = 0;
                            let router = Arc::clone(&router);
                            routing.spawn(async move {
                                if let Err(e) = router.route_batch(messages).await {
                                    PollFailed { queue: router.events.name(), error: &e.to_string() }.emit();
                                }
                                drop(permit);
                            });
                            None
                        }
                        Err(e) => Some(e),
                    };
                    if let Some(e) = failed {
                        PollFailed { queue: router.events.name(), error: &e.to_string() }.emit();
                        failures = (failures + 1).min(6);
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100 << failures)) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
                drop(alive);
                while routing.join_next().await.is_some() {}
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Receives one batch (waiting up to `wait`), routes every message, and deletes those that
    /// are done with. Returns the outcomes.
    pub async fn poll_once(&self, wait: Duration) -> Result<Vec<Outcome>, RouterError> {
        let messages = self.receive(wait).await?;
        self.route_batch(messages).await
    }

    fn visibility(&self) -> Duration {
        Duration::from_secs(u64::from(self.planner.config().router.visibility_secs.max(2)))
    }

    /// Receives up to ten events, waiting up to `wait`.
    async fn receive(&self, wait: Duration) -> Result<Vec<ReceivedMessage>, RouterError> {
        Ok(self.events.receive(10, wait, Some(self.visibility())).await?)
    }

    /// Routes a received batch and deletes the messages that are done with.
    async fn route_batch(&self, messages: Vec<ReceivedMessage>) -> Result<Vec<Outcome>, RouterError> {
        let visibility = self.visibility();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Keep the batch hidden while it is routed (a large discovery can take a while).
        let heartbeat = async {
            loop {
                tokio::time::sleep(visibility / 3).await;
                let entries: Vec<(String, Duration)> =
                    messages.iter().map(|m| (m.receipt.clone(), visibility)).collect();
                match self.events.change_visibility_batch(&entries).await {
                    Ok(failures) => {
                        for f in failures {
                            tracing::warn!(error = %f.message, "Extending an event's visibility failed.");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Extending the events' visibility failed."),
                }
            }
        };
        let outcomes = tokio::select! {
            // Every message at once: their jobs meet in the partitions' batchers, so they go
            // out ten to a request however few each event has.
            outcomes = join_all(messages.iter().map(|m| self.route(m))) => outcomes,
            () = heartbeat => Vec::new(),
        };
        let done: Vec<String> =
            messages.iter().zip(&outcomes).filter(|(_, o)| o.acknowledges()).map(|(m, _)| m.receipt.clone()).collect();
        if !done.is_empty() {
            for failure in self.events.delete_batch(&done).await? {
                tracing::warn!(queue = %self.events.name(), error = %failure.message, "Deleting a routed event failed; it will be routed again with the same job ids.");
            }
        }
        Ok(outcomes)
    }

    /// Routes one message: normalize, plan, discover, send. Never panics on input.
    pub async fn route(&self, message: &ReceivedMessage) -> Outcome {
        match self.prepare(message).await {
            Prepared::Done(outcome) => outcome,
            Prepared::Ready(ready) => {
                let sent = self.send(ready.jobs.iter()).await;
                self.complete(message, *ready, sent).await
            }
        }
    }

    /// Normalizes, plans and discovers one message: its jobs, ready to send, or its outcome.
    async fn prepare(&self, message: &ReceivedMessage) -> Prepared {
        let started = Instant::now();
        // A retry of a discovery's failed places carries the event it came from.
        let retry = match DiscoveryRetry::from_body(&message.body) {
            None => None,
            Some(Ok(retry)) => Some(retry),
            Some(Err(e)) => return Prepared::Done(self.reject(message, "not_an_event", e).await),
        };
        let body = retry.as_ref().map_or_else(|| message.body.clone(), |r| r.event.to_string());
        let event = match normalize(&body) {
            Ok(event) => event,
            Err(e) => return Prepared::Done(self.reject(message, "not_an_event", e.to_string()).await),
        };
        if retry.is_none() {
            EventReceived { event: &event }.emit();
            if let Some(halts) = &self.halts {
                if let Err(e) = halts.record(&event).await {
                    return Prepared::Done(self.defer(message, format!("recording an alarm's halt failed: {e}")));
                }
            }
        }
        let received_ms = match &retry {
            Some(r) => r.received_ms,
            None if message.sent_ms > 0 => message.sent_ms,
            None => self.clock.now_ms(),
        };
        let mut plan = match self.planner.plan(&event, received_ms) {
            Ok(plan) => plan,
            Err(e) => return Prepared::Done(self.reject(message, plan_error_kind(&e), e.to_string()).await),
        };
        if let Some(retry) = &retry {
            retry.narrow(&mut plan);
        }
        let mut jobs = plan.jobs;
        // Runs over their blast-radius limits send no jobs; the event is dead-lettered for them.
        let mut refused: Vec<Refusal> = Vec::new();
        let mut named: BTreeMap<&str, usize> = BTreeMap::new();
        for job in &jobs {
            *named.entry(job.task.as_str()).or_default() += 1;
        }
        for (task, count) in named {
            if let Some(Err(refusal)) = self.planner.config().task(task).map(|t| blast_radius::check_named(t, count)) {
                refused.push(refusal);
            }
        }
        jobs.retain(|j| !refused.iter().any(|r| r.task == j.task));
        // A discovery that fails does not hold back the jobs of the other tasks: they go out,
        // and the event comes again for the failed discovery (its jobs' ids are the same, so
        // what went out already is deduplicated), until its last receive, when it goes to the
        // DLQ with the reason.
        let mut failed_discovery: Option<String> = None;
        let mut failed_places = Vec::new();
        for discovery in &plan.discoveries {
            let resources = match self.discover.discover_places(discovery).await {
                Ok(found) => {
                    if !found.failed.is_empty() {
                        failed_places.push((discovery.task_name.clone(), found.failed));
                    }
                    found.resources
                }
                Err(e @ DiscoveryError::Unavailable { .. }) => {
                    return Prepared::Done(self.reject(message, "discovery", e.to_string()).await)
                }
                Err(e) => {
                    failed_discovery = Some(e.to_string());
                    continue;
                }
            };
            if let Some(task) = self.planner.config().task(&discovery.task_name) {
                match blast_radius::check_discovered(self.discover.as_ref(), discovery, task, resources.len()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refusal)) => {
                        refused.push(refusal);
                        continue;
                    }
                    Err(e) => {
                        failed_discovery = Some(format!("counting the population for max_targets_percent: {e}"));
                        continue;
                    }
                }
            }
            if let Err(e) = self.planner.check_cap(jobs.len() + resources.len()) {
                return Prepared::Done(self.reject(message, plan_error_kind(&e), e.to_string()).await);
            }
            match self.planner.jobs_for(&event, discovery.task, &resources, received_ms) {
                Ok(more) => jobs.extend(more),
                Err(e) => return Prepared::Done(self.reject(message, plan_error_kind(&e), e.to_string()).await),
            }
        }
        if plan.matched.is_empty() {
            EventUnmatched { event_id: &event.id }.emit();
            return Prepared::Done(Outcome::Unmatched { event_id: event.id });
        }
        // A task that matched and found nothing to act on is reported, not silently done.
        for task in plan.matched.iter().filter(|_| retry.is_none()) {
            let failed = failed_places.iter().any(|(t, _)| t == task) || refused.iter().any(|r| &r.task == task);
            if !failed && !jobs.iter().any(|j| &j.task == task) {
                TaskFoundNothing { event_id: &event.id, task }.emit();
            }
        }
        // A run whose max_errors is a percentage counts it of the run's size.
        let mut sizes: BTreeMap<String, u32> = BTreeMap::new();
        for job in &jobs {
            *sizes.entry(job.task.clone()).or_default() += 1;
        }
        for job in &mut jobs {
            if self.planner.config().task(&job.task).is_some_and(|t| t.max_errors_percent.is_some()) {
                job.run_size = sizes.get(&job.task).copied();
            }
        }
        if let Some(approvals) = &self.approvals {
            // Before any job of the run goes out: its jobs find it when they reach a worker.
            if let Err(e) = approvals.request(self.planner.config(), &jobs, self.clock.now_ms()).await {
                return Prepared::Done(self.defer(message, format!("asking for a run's approval failed: {e}")));
            }
        }
        Prepared::Ready(Box::new(Ready {
            event_id: event.id,
            jobs,
            failed_discovery,
            failed_places,
            refused,
            retry,
            body,
            received_ms,
            started,
        }))
    }

    /// What became of a message whose jobs were sent (or not).
    async fn complete(&self, message: &ReceivedMessage, ready: Ready, sent: Result<(), SendError>) -> Outcome {
        let Ready { event_id, jobs, failed_discovery, failed_places, refused, retry, body, received_ms, started } =
            ready;
        match sent {
            Ok(()) => {}
            Err(SendError::TooLarge(e)) => return self.reject(message, "job_too_large", e.to_string()).await,
            Err(e @ SendError::Refused { .. }) => return self.reject(message, "job_refused", e.to_string()).await,
            Err(e) => return self.defer(message, e.to_string()),
        }
        if let Some(error) = failed_discovery {
            if message.receive_count + 1 >= EVENTS_MAX_RECEIVE {
                return self.reject(message, "discovery", error).await;
            }
            return self.defer(message, error);
        }
        if !failed_places.is_empty() {
            // The places that answered have their jobs out; the failed ones go round again on
            // their own, or, past their retries, to the DLQ with each place's reason.
            let attempt = retry.as_ref().map_or(1, |r| r.attempt + 1);
            for (task, failed) in &failed_places {
                DiscoveryPlacesFailed { event_id: &event_id, task, failed, attempt: attempt - 1 }.emit();
            }
            if let Some(retry) = retry.as_ref().filter(|r| r.attempt >= DISCOVERY_RETRIES) {
                let failed: Vec<PlaceFailed> = failed_places.into_iter().flat_map(|(_, f)| f).collect();
                return self.reject(message, "discovery", retry.reason(&failed)).await;
            }
            let event: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            let retries: Vec<OutgoingMessage> = failed_places
                .iter()
                .flat_map(|(task, failed)| DiscoveryRetry::of(task, failed, attempt, received_ms, &event))
                .map(|r| OutgoingMessage { body: r.body(), delay: Some(r.delay()), ..Default::default() })
                .collect();
            if let Err(e) = send_all(self.events.as_ref(), retries).await {
                return self.defer(message, format!("sending the retry of a discovery's failed places failed: {e}"));
            }
        }
        for refusal in &refused {
            // The event, with the reason, for each refused run: redriven once the task is
            // fixed, it runs the refused task's jobs (the others' are done and deduplicated).
            if let Err(e) = self.dead_letter(message, &refusal.reason).await {
                return self.defer(message, format!("dead-lettering a refused run failed: {e}"));
            }
        }
        let mut per_task: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for job in &jobs {
            *per_task.entry((&job.task, &job.action)).or_default() += 1;
        }
        for ((task, action), count) in per_task {
            JobsEmitted { task, action, count }.emit();
        }
        EventRouted { event_id: &event_id, jobs: jobs.len(), took: started.elapsed() }.emit();
        Outcome::Routed { event_id, jobs }
    }

    /// Sends jobs through their partitions' batchers; an entry the queue refused wins over
    /// one it could not take now, so the event goes to the DLQ rather than round again.
    async fn send<'a>(&self, jobs: impl Iterator<Item = &'a Job>) -> Result<(), SendError> {
        let mut seen = HashSet::new();
        let mut sends = Vec::new();
        for job in jobs {
            if !seen.insert(job.id.as_str()) {
                continue;
            }
            let body = job.to_json().map_err(SendError::TooLarge)?;
            let batcher = &self.batchers[job.partition as usize % self.batchers.len()];
            sends.push(batcher.send(job.message(body)));
        }
        let mut first: Option<SendError> = None;
        for sent in join_all(sends).await {
            match sent {
                Ok(()) => {}
                Err(e @ SendError::Refused { .. }) if !matches!(first, Some(SendError::Refused { .. })) => {
                    first = Some(e)
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn reject(&self, message: &ReceivedMessage, kind: &'static str, reason: String) -> Outcome {
        if let Err(e) = self.dead_letter(message, &reason).await {
            return self.defer(message, format!("dead-lettering failed: {e}"));
        }
        EventRejected { message_id: &message.message_id, reason: kind, error: &reason }.emit();
        Outcome::DeadLettered { kind, reason }
    }

    /// Sends a copy of the message to the events DLQ with the reason.
    async fn dead_letter(&self, message: &ReceivedMessage, reason: &str) -> Result<(), SendError> {
        let letter = DeadLetter::of_received(message, reason, self.events.name(), self.clock.now_ms());
        let dead = letter.message(self.dead_letter.name(), &format!("message/{}", message.message_id));
        send_all(self.dead_letter.as_ref(), vec![dead]).await
    }

    fn defer(&self, message: &ReceivedMessage, error: String) -> Outcome {
        EventDeferred { message_id: &message.message_id, error: &error }.emit();
        Outcome::Deferred { error }
    }
}

/// A bounded label for a plan error.
fn plan_error_kind(error: &PlanError) -> &'static str {
    match error {
        PlanError::AccountNotAllowed { .. } | PlanError::ResourceAccountNotAllowed { .. } => "account_not_allowed",
        PlanError::NoAccount => "no_account",
        PlanError::Targets { error: TargetError::Invalid(_), .. } => "invalid_resource",
        PlanError::Targets { .. } => "targets",
        PlanError::TooManyJobs { .. } => "too_many_jobs",
        PlanError::Job(_) => "job_too_large",
    }
}
