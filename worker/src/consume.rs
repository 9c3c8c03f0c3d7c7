//! The consume loop: one long-poll loop per queue (every job partition and the checks queue),
//! a bounded number of messages held per process (running, and waiting for a lock or a slot),
//! one batched visibility heartbeat per queue, batched deletes and hand-backs, and graceful
//! shutdown.

use crate::acker::Acker;
use crate::runner::{Disposition, Worker};
use crate::sampler::Sampler;
use crate::telemetry::WorkerCallFailed;
use opsfleet_protocol::liveness::LoopBeat;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, ReceivedMessage, MAX_BATCH};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one receive waits for messages.
const LONG_POLL: Duration = Duration::from_secs(20);

/// How often a gathering poller looks at the permits again: short, so that permits freed
/// meanwhile are not left idle.
const GATHER_STEP: Duration = Duration::from_millis(1);

/// The longest a poller of a busy worker waits for more permits before a receive.
const RECEIVE_GATHER: Duration = Duration::from_millis(50);

/// Which queue a poller serves.
#[derive(Debug, Clone, Copy)]
enum Source {
    Partition(u32),
    Checks,
}

/// Consumes a fleet's job partitions and checks queue.
pub struct Consumer {
    worker: Arc<Worker>,
    sampler: Sampler,
    queues: Vec<(Source, Arc<dyn Queue>)>,
    max_in_flight: usize,
    max_waiting: usize,
    visibility: Duration,
    grace: Duration,
    long_poll: Duration,
    /// The queues' `maxReceiveCount`.
    max_receive: u32,
}

/// What a consumer did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeSummary {
    /// Messages handled to the end.
    pub handled: usize,
    /// Messages handed back unstarted at shutdown.
    pub returned: usize,
    /// Jobs still running when the grace ran out.
    pub interrupted: usize,
}

impl Consumer {
    /// Opens every partition and the checks queue.
    pub async fn open(
        backend: &dyn Backend,
        worker: Arc<Worker>,
        config: &opsfleet_protocol::Config,
    ) -> Result<Self, QueueError> {
        let fleet = &config.fleet.name;
        let mut queues = Vec::new();
        for p in 0..config.fleet.partitions.get() {
            queues.push((Source::Partition(p), backend.queue(&names::jobs_queue(fleet, p)).await?));
        }
        queues.push((Source::Checks, backend.queue(&names::checks_queue(fleet)).await?));
        let sampler = Sampler::open(backend, worker.store(), config, worker.id().to_owned()).await?;
        Ok(Consumer {
            worker,
            sampler,
            queues,
            max_in_flight: config.worker.max_in_flight.get() as usize,
            max_waiting: config.worker.max_waiting as usize,
            visibility: Duration::from_secs(u64::from(config.worker.visibility_secs.max(2))),
            grace: Duration::from_secs(u64::from(config.worker.shutdown_grace_secs)),
            long_poll: LONG_POLL,
            max_receive: config.worker.max_receive_count.max(1),
        })
    }

    /// Sets the long-poll wait (shorter in tests and the demo).
    pub fn with_long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }

    /// Runs until `shutdown` is cancelled, then stops receiving (a long poll under way
    /// finishes, and what it brings is handed back), hands back the messages of jobs waiting
    /// for a lock or a slot, lets running jobs finish within the grace, cancels `hard_stop`
    /// (running actions stop and release what they hold) and returns.
    pub async fn run(self, shutdown: CancellationToken, hard_stop: CancellationToken) -> ConsumeSummary {
        // Messages held at once: running jobs plus waiting ones; checks apart.
        let job_room = Arc::new(Semaphore::new(self.max_in_flight + self.max_waiting));
        let check_room = Arc::new(Semaphore::new(self.max_in_flight));
        // A long poll never outlasts the grace: one under way at shutdown finishes within it
        // and hands back what it brings, instead of being cut off with messages in it.
        let long_poll =
            self.long_poll.min(self.grace.saturating_sub(Duration::from_secs(1)).max(Duration::from_secs(1)));
        let handled = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(AtomicUsize::new(0));
        let mut jobs: JoinSet<()> = JoinSet::new();
        let (spawn_tx, mut spawn_rx) = tokio::sync::mpsc::unbounded_channel::<Work>();
        let mut pollers = JoinSet::new();
        let mut ackers = Vec::new();
        let mut acker_tasks = Vec::new();
        for (source, queue) in &self.queues {
            let (acker, task) = Acker::start(Arc::clone(queue));
            acker_tasks.push(task);
            ackers.push(acker.clone());
            let (room, capacity) = match source {
                Source::Partition(_) => (Arc::clone(&job_room), self.worker.run_capacity()),
                Source::Checks => (Arc::clone(&check_room), self.worker.check_capacity()),
            };
            pollers.spawn(poll(Poller {
                source: *source,
                acker,
                room,
                capacity,
                long_poll,
                visibility: self.visibility,
                shutdown: shutdown.clone(),
                spawn: spawn_tx.clone(),
                returned: Arc::clone(&returned),
            }));
        }
        drop(spawn_tx);
        // At shutdown, jobs waiting for a lock or a slot hand their messages back at once, and
        // the grace starts.
        let stopper = {
            let (worker, shutdown) = (Arc::clone(&self.worker), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                worker.stop_waiting();
                tokio::time::Instant::now()
            })
        };
        let keeper = tokio::spawn(keep_hidden(ackers.clone(), self.visibility, hard_stop.clone()));
        let max_receive = self.max_receive;
        let in_flight = self.worker.in_flight_counter();
        let sampler = tokio::spawn(self.sampler.run(shutdown.clone(), move || in_flight.load(Ordering::SeqCst)));

        // Start every received message as its own task until the pollers stop.
        while let Some(work) = spawn_rx.recv().await {
            let worker = Arc::clone(&self.worker);
            let (handled, returned) = (Arc::clone(&handled), Arc::clone(&returned));
            jobs.spawn(async move {
                let (done, back) = work.run(worker, max_receive).await;
                handled.fetch_add(done, Ordering::SeqCst);
                returned.fetch_add(back, Ordering::SeqCst);
            });
            while jobs.try_join_next().is_some() {}
        }
        while pollers.join_next().await.is_some() {}

        // Shutdown: running jobs get the grace, counted from the signal, then are told to stop
        // and release.
        let stopped_at = stopper.await.unwrap_or_else(|_| tokio::time::Instant::now());
        let finished =
            tokio::time::timeout_at(stopped_at + self.grace, async { while jobs.join_next().await.is_some() {} }).await;
        let mut interrupted = 0;
        if finished.is_err() {
            interrupted = jobs.len();
            hard_stop.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(3), async { while jobs.join_next().await.is_some() {} }).await;
            jobs.abort_all();
        }
        keeper.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), sampler).await;
        drop(ackers);
        for task in acker_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        ConsumeSummary {
            handled: handled.load(Ordering::SeqCst),
            returned: returned.load(Ordering::SeqCst),
            interrupted,
        }
    }
}

/// One received message with its room and its queue, and the messages of its FIFO group that
/// the same receive brought after it.
struct Work {
    source: Source,
    acker: Acker,
    message: ReceivedMessage,
    /// The run (or check) permit the message starts with.
    start: OwnedSemaphorePermit,
    _room: OwnedSemaphorePermit,
    /// Later messages of the same group, in order: each runs once the one before it is done,
    /// so none spends a receive waiting for its turn.
    rest: Vec<ReceivedMessage>,
    /// Where the later messages' start permits come from.
    capacity: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Work {
    /// Handles the message, then the later ones of its group; how many were handled, and how
    /// many handed back unstarted. Once one is not done with (retried or handed back), the later
    /// ones go back too: the group stays blocked behind it, so they come back in order.
    async fn run(self, worker: Arc<Worker>, max_receive: u32) -> (usize, usize) {
        let Work { source, acker, message, start, _room, rest, capacity, shutdown } = self;
        let mut handled = 0;
        let mut disposition = handle(&worker, source, &acker, &message, start, max_receive).await;
        let mut rest = rest.into_iter();
        loop {
            match disposition {
                Disposition::Returned => break,
                Disposition::Retry(_) => {
                    handled += 1;
                    break;
                }
                Disposition::Delete => handled += 1,
            }
            let Some(next) = rest.next() else { break };
            let start = tokio::select! {
                permit = Arc::clone(&capacity).acquire_owned() => permit.ok(),
                () = shutdown.cancelled() => None,
            };
            let Some(start) = start else {
                acker.hand_back(&next.receipt, Duration::ZERO);
                disposition = Disposition::Returned;
                break;
            };
            disposition = handle(&worker, source, &acker, &next, start, max_receive).await;
        }
        let mut returned = usize::from(disposition == Disposition::Returned);
        for later in rest {
            acker.hand_back(&later.receipt, Duration::ZERO);
            returned += 1;
        }
        (handled, returned)
    }
}

/// Handles one message and tells its queue what came of it. A handling that panics (a bug)
/// never strands the message: it is handed back after a pause, and dead-lettered with the
/// panic's message before SQS would move it to the DLQ without a reason.
async fn handle(
    worker: &Arc<Worker>,
    source: Source,
    acker: &Acker,
    message: &ReceivedMessage,
    start: OwnedSemaphorePermit,
    max_receive: u32,
) -> Disposition {
    let handling = {
        let (worker, message) = (Arc::clone(worker), message.clone());
        tokio::spawn(async move {
            match source {
                Source::Partition(p) => worker.handle_job(&message, p, start).await,
                Source::Checks => worker.handle_check(&message, start).await,
            }
        })
    };
    // Aborting this task (the grace ran out) aborts the handling too.
    let mut handling = AbortOnDrop(handling);
    let disposition = match (&mut handling.0).await {
        Ok(disposition) => disposition,
        Err(e) => {
            let reason = format!("handling the message panicked: {}", panic_message(e));
            WorkerCallFailed { what: "panic", error: &reason }.emit();
            if message.receive_count + 1 >= max_receive {
                let partition = match source {
                    Source::Partition(p) => Some(p),
                    Source::Checks => None,
                };
                worker.dead_letter_panicked(message, partition, &reason).await
            } else {
                Disposition::Retry(PANIC_PAUSE)
            }
        }
    };
    match disposition {
        Disposition::Delete => acker.delete(&message.receipt),
        Disposition::Retry(after) => acker.hand_back(&message.receipt, after),
        Disposition::Returned => acker.hand_back(&message.receipt, Duration::ZERO),
    }
    disposition
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a message whose handling panicked stays hidden before it is tried again.
const PANIC_PAUSE: Duration = Duration::from_secs(30);

/// The message of a task's panic (or why it has none).
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// One queue's long-poll loop and what it works with.
struct Poller {
    source: Source,
    acker: Acker,
    /// Messages of the queue's kind this process may hold (running, and waiting for a lock or
    /// a slot).
    room: Arc<Semaphore>,
    /// Permits to start a job (or check) now.
    capacity: Arc<Semaphore>,
    long_poll: Duration,
    visibility: Duration,
    shutdown: CancellationToken,
    /// Where received work goes to be run.
    spawn: tokio::sync::mpsc::UnboundedSender<Work>,
    /// Counts messages handed back unstarted at shutdown.
    returned: Arc<AtomicUsize>,
}

/// Receives from one queue until shutdown, handing each message that can start to the runner.
async fn poll(poller: Poller) {
    let Poller { source, acker, room, capacity, long_poll, visibility, shutdown, spawn, returned } = poller;
    let queue = Arc::clone(acker.queue());
    let alive = LoopBeat::new(format!("worker poller {source:?}"));
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        alive.beat();
        // Wait for room and for a job to be able to run now, but hold neither while
        // long-polling: a poller waiting on an empty queue must not keep them from the pollers
        // of busy ones. Messages are taken for jobs that can start, never hoarded while others'
        // workers idle; the room beyond `max_in_flight` fills only with jobs that wait for a
        // lock or a slot (they give their run permit back while they wait).
        let first = tokio::select! {
            permit = alive.waiting(Arc::clone(&room).acquire_owned()) => match permit { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let runnable = tokio::select! {
            permit = alive.waiting(Arc::clone(&capacity).acquire_owned()) => match permit { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let free = || (room.available_permits() + 1).min(capacity.available_permits() + 1).min(MAX_BATCH);
        let mut want = free();
        // A receive for one message costs as much as one for ten: a busy worker gives its
        // running jobs a moment to free more permits first, at most RECEIVE_GATHER.
        let gather_until = tokio::time::Instant::now() + RECEIVE_GATHER;
        while want < MAX_BATCH && tokio::time::Instant::now() < gather_until && !shutdown.is_cancelled() {
            tokio::time::sleep(GATHER_STEP).await;
            want = free();
        }
        drop((first, runnable));
        // A long poll under way at shutdown is not dropped: what it brings is handed back.
        let messages = match queue.receive(want, long_poll, Some(visibility)).await {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(e) => {
                WorkerCallFailed { what: "receive", error: &e.to_string() }.emit();
                failures = (failures + 1).min(6);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100 << failures)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        // A receive may return several messages of one FIFO group (one resource), in order: the
        // first runs, and the others wait in line behind it, held, spending no receive.
        let mut groups: Vec<(ReceivedMessage, Vec<ReceivedMessage>)> = Vec::new();
        for message in messages {
            acker.hold(&message.receipt);
            let group = message.group_id.clone();
            match groups.iter_mut().find(|(first, _)| group.is_some() && first.group_id == group) {
                Some((_, rest)) => rest.push(message),
                None => groups.push((message, Vec::new())),
            }
        }
        for (message, rest) in groups {
            if shutdown.is_cancelled() {
                for m in std::iter::once(&message).chain(&rest) {
                    acker.hand_back(&m.receipt, Duration::ZERO);
                    returned.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            // Received messages waiting for room and a permit to start keep their visibility
            // (the keeper extends every message held).
            let permits = tokio::select! {
                permits = async {
                    let room = Arc::clone(&room).acquire_owned().await.ok()?;
                    let start = Arc::clone(&capacity).acquire_owned().await.ok()?;
                    Some((room, start))
                } => permits,
                () = shutdown.cancelled() => None,
            };
            let Some((room_permit, start)) = permits else {
                // Not started: hand them back at once.
                for m in std::iter::once(&message).chain(&rest) {
                    acker.hand_back(&m.receipt, Duration::ZERO);
                    returned.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            };
            let work = Work {
                source,
                acker: acker.clone(),
                message,
                start,
                _room: room_permit,
                rest,
                capacity: Arc::clone(&capacity),
                shutdown: shutdown.clone(),
            };
            if let Err(tokio::sync::mpsc::error::SendError(work)) = spawn.send(work) {
                for m in std::iter::once(&work.message).chain(&work.rest) {
                    work.acker.hand_back(&m.receipt, Duration::ZERO);
                    returned.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Extends the visibility of every message held, a third of the way through its visibility
/// timeout, in batches per queue, until the hard stop.
async fn keep_hidden(ackers: Vec<Acker>, visibility: Duration, hard_stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(visibility / 3) => {}
            () = hard_stop.cancelled() => return,
        }
        for acker in &ackers {
            if acker.len() > 0 {
                acker.extend_all(visibility);
            }
        }
    }
}
