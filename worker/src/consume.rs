//! The consume loop: one long-poll loop per queue (every job partition and the checks queue),
//! a bounded number of jobs in flight per process, a visibility heartbeat for running jobs,
//! batched deletes, and graceful shutdown.

use crate::runner::{Disposition, Worker};
use crate::telemetry::{jobs_in_flight, queue_messages, WorkerCallFailed};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, ReceivedMessage, MAX_BATCH};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one receive waits for messages.
const LONG_POLL: Duration = Duration::from_secs(20);

/// How often queue depths are exported.
const DEPTH_EVERY: Duration = Duration::from_secs(15);

/// Which queue a poller serves.
#[derive(Debug, Clone, Copy)]
enum Source {
    Partition(u32),
    Checks,
}

/// Consumes a fleet's job partitions and checks queue.
pub struct Consumer {
    worker: Arc<Worker>,
    queues: Vec<(Source, Arc<dyn Queue>)>,
    max_in_flight: usize,
    visibility: Duration,
    grace: Duration,
    long_poll: Duration,
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
        Ok(Consumer {
            worker,
            queues,
            max_in_flight: config.worker.max_in_flight.get() as usize,
            visibility: Duration::from_secs(u64::from(config.worker.visibility_secs.max(2))),
            grace: Duration::from_secs(u64::from(config.worker.shutdown_grace_secs)),
            long_poll: LONG_POLL,
        })
    }

    /// Sets the long-poll wait (shorter in tests and the demo).
    pub fn with_long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }

    /// Runs until `shutdown` is cancelled, then stops receiving, hands back messages it has
    /// not started, lets running jobs finish within the grace, cancels `hard_stop` (running
    /// actions stop and release what they hold) and returns.
    pub async fn run(self, shutdown: CancellationToken, hard_stop: CancellationToken) -> ConsumeSummary {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handled = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(AtomicUsize::new(0));
        let mut jobs: JoinSet<()> = JoinSet::new();
        let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel::<Work>();
        let mut pollers = JoinSet::new();
        let mut deleters = JoinSet::new();
        for (source, queue) in &self.queues {
            let (delete_tx, delete_rx) = mpsc::unbounded_channel::<String>();
            deleters.spawn(delete_batches(Arc::clone(queue), delete_rx));
            pollers.spawn(poll(
                *source,
                Arc::clone(queue),
                Arc::clone(&permits),
                self.long_poll,
                self.visibility,
                shutdown.clone(),
                spawn_tx.clone(),
                delete_tx,
                Arc::clone(&returned),
            ));
        }
        drop(spawn_tx);
        let depths =
            tokio::spawn(export_depths(self.queues.iter().map(|(_, q)| Arc::clone(q)).collect(), shutdown.clone()));

        // Start every received message as its own task until the pollers stop.
        while let Some(work) = spawn_rx.recv().await {
            let worker = Arc::clone(&self.worker);
            let in_flight = Arc::clone(&in_flight);
            let handled = Arc::clone(&handled);
            let visibility = self.visibility;
            jobs.spawn(async move {
                jobs_in_flight(in_flight.fetch_add(1, Ordering::SeqCst) + 1);
                work.run(&worker, visibility).await;
                jobs_in_flight(in_flight.fetch_sub(1, Ordering::SeqCst) - 1);
                handled.fetch_add(1, Ordering::SeqCst);
            });
            while jobs.try_join_next().is_some() {}
        }
        while pollers.join_next().await.is_some() {}

        // Shutdown: running jobs get the grace, then are told to stop and release.
        let finished = tokio::time::timeout(self.grace, async { while jobs.join_next().await.is_some() {} }).await;
        let mut interrupted = 0;
        if finished.is_err() {
            interrupted = jobs.len();
            hard_stop.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(3), async { while jobs.join_next().await.is_some() {} }).await;
            jobs.abort_all();
        }
        while deleters.join_next().await.is_some() {}
        depths.abort();
        ConsumeSummary {
            handled: handled.load(Ordering::SeqCst),
            returned: returned.load(Ordering::SeqCst),
            interrupted,
        }
    }
}

/// One received message with its permit and its queue.
struct Work {
    source: Source,
    queue: Arc<dyn Queue>,
    message: ReceivedMessage,
    deletes: mpsc::UnboundedSender<String>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Work {
    async fn run(self, worker: &Worker, visibility: Duration) {
        let handle = async {
            match self.source {
                Source::Partition(p) => worker.handle_job(&self.message, p).await,
                Source::Checks => worker.handle_check(&self.message).await,
            }
        };
        // Extend the message's visibility while it runs, before it expires.
        let heartbeat = async {
            loop {
                tokio::time::sleep(visibility / 3).await;
                if let Err(e) = self.queue.change_visibility(&self.message.receipt, visibility).await {
                    WorkerCallFailed { what: "visibility", error: &e.to_string() }.emit();
                }
            }
        };
        let disposition = tokio::select! {
            d = handle => d,
            () = heartbeat => Disposition::Retry(Duration::ZERO),
        };
        match disposition {
            Disposition::Delete => {
                let _ = self.deletes.send(self.message.receipt.clone());
            }
            Disposition::Retry(after) => {
                if let Err(e) = self.queue.change_visibility(&self.message.receipt, after).await {
                    WorkerCallFailed { what: "visibility", error: &e.to_string() }.emit();
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn poll(
    source: Source,
    queue: Arc<dyn Queue>,
    permits: Arc<Semaphore>,
    long_poll: Duration,
    visibility: Duration,
    shutdown: CancellationToken,
    spawn: mpsc::UnboundedSender<Work>,
    deletes: mpsc::UnboundedSender<String>,
    returned: Arc<AtomicUsize>,
) {
    let mut failures = 0u32;
    loop {
        // Wait for capacity, but hold none while long-polling: a poller waiting on an empty
        // queue must not keep permits from the pollers of busy ones.
        let capacity = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let want = (permits.available_permits() + 1).min(MAX_BATCH);
        drop(capacity);
        let received = tokio::select! {
            r = queue.receive(want, long_poll, Some(visibility)) => r,
            () = shutdown.cancelled() => return,
        };
        let messages = match received {
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
        // A receive may return several messages of one FIFO group (one resource): run only the
        // first, and hand the others back; the group stays blocked until the first is done,
        // so they come back in order.
        let mut groups = std::collections::HashSet::new();
        let (mut run, mut later) = (Vec::new(), Vec::new());
        for message in messages {
            match &message.group_id {
                Some(group) if !groups.insert(group.clone()) => later.push(message),
                _ => run.push(message),
            }
        }
        for message in later {
            let _ = queue.change_visibility(&message.receipt, Duration::ZERO).await;
        }
        let mut waiting = run.into_iter();
        while let Some(message) = waiting.next() {
            let permit = loop {
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => break permit.ok(),
                    () = shutdown.cancelled() => break None,
                    // Received messages waiting for a free slot keep their visibility.
                    () = tokio::time::sleep(visibility / 3) => {
                        for m in std::iter::once(&message).chain(waiting.as_slice()) {
                            let _ = queue.change_visibility(&m.receipt, visibility).await;
                        }
                    }
                }
            };
            let Some(permit) = permit else {
                // Not started: hand it back at once.
                let _ = queue.change_visibility(&message.receipt, Duration::ZERO).await;
                returned.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            let work = Work { source, queue: Arc::clone(&queue), message, deletes: deletes.clone(), _permit: permit };
            if let Err(mpsc::error::SendError(work)) = spawn.send(work) {
                let _ = work.queue.change_visibility(&work.message.receipt, Duration::ZERO).await;
                returned.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Deletes finished messages in batches of up to ten.
async fn delete_batches(queue: Arc<dyn Queue>, mut receipts: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = receipts.recv().await {
        let mut batch = vec![first];
        // Gather what is already waiting, or arrives within a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receipts.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        match queue.delete_batch(&batch).await {
            Ok(failures) => {
                for f in failures {
                    WorkerCallFailed { what: "delete", error: &f.message }.emit();
                }
            }
            Err(e) => WorkerCallFailed { what: "delete", error: &e.to_string() }.emit(),
        }
    }
}

async fn export_depths(queues: Vec<Arc<dyn Queue>>, shutdown: CancellationToken) {
    loop {
        for queue in &queues {
            if let Ok(depth) = queue.depth().await {
                queue_messages(queue.name(), depth.visible, depth.in_flight, depth.delayed);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DEPTH_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
