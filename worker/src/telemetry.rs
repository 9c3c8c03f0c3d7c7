//! What happens in the worker, each as one struct that writes the log line and the metric.
//! Labels are bounded: actions, outcomes, results, limit names, queue names; never a job or
//! resource id.

use metrics::{counter, gauge, histogram};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A job finished (for good, or for this attempt).
pub(crate) struct JobFinished<'a> {
    pub job_id: &'a str,
    /// The config's task (bounded by the config).
    pub task: &'a str,
    pub action: &'a str,
    pub outcome: &'static str,
    pub took: Duration,
    pub detail: &'a str,
}

impl JobFinished<'_> {
    pub fn emit(self) {
        if self.outcome == "failed" {
            tracing::warn!(job_id = %self.job_id, action = self.action, outcome = self.outcome, error = %self.detail, "Job failed.");
        } else {
            tracing::info!(job_id = %self.job_id, action = self.action, outcome = self.outcome, took_ms = self.took.as_millis() as u64, "Job finished.");
        }
        let labels =
            [("task", self.task.to_owned()), ("action", self.action.to_owned()), ("outcome", self.outcome.to_owned())];
        counter!("opsfleet_jobs_finished_total", &labels).increment(1);
        histogram!("opsfleet_job_duration_seconds", "action" => self.action.to_owned()).record(self.took.as_secs_f64());
    }
}

/// A job started its action, this long after its event was received.
pub(crate) struct JobStarted<'a> {
    pub job_id: &'a str,
    /// The config's task (bounded by the config).
    pub task: &'a str,
    pub since_event: Duration,
}

impl JobStarted<'_> {
    pub fn emit(self) {
        tracing::debug!(job_id = %self.job_id, since_event_ms = self.since_event.as_millis() as u64, "Job started.");
        histogram!("opsfleet_event_to_start_seconds", "task" => self.task.to_owned())
            .record(self.since_event.as_secs_f64());
    }
}

/// A lock acquisition came to `result` (`acquired`, `held`).
pub(crate) struct LockAcquisition<'a> {
    pub job_id: &'a str,
    pub result: &'static str,
    pub holder: &'a str,
}

impl LockAcquisition<'_> {
    pub fn emit(self) {
        tracing::debug!(job_id = %self.job_id, result = self.result, holder = %self.holder, "Lock acquisition.");
        counter!("opsfleet_lock_acquisitions_total", "result" => self.result).increment(1);
    }
}

/// Why jobs wait, and how many wait for each in this process (kept here so the gauges can be
/// refreshed: a gauge idle for a minute leaves the exporter).
const WAIT_REASONS: [&str; 5] = ["lock", "max_concurrency", "limit", "halted", "approval"];
static WAITING: [AtomicI64; 5] =
    [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)];

fn waiting(reason: &str) -> Option<&'static AtomicI64> {
    WAIT_REASONS.iter().position(|r| *r == reason).map(|i| &WAITING[i])
}

/// A job began waiting for a lock or a slot, or for its task's halt to end (`reason`: `lock`,
/// `max_concurrency`, `limit`, `halted`, `approval`).
pub(crate) struct JobWaitStarted {
    pub reason: &'static str,
}

impl JobWaitStarted {
    pub fn emit(self) {
        if let Some(n) = waiting(self.reason) {
            let now = n.fetch_add(1, Ordering::SeqCst) + 1;
            gauge!("opsfleet_jobs_waiting", "reason" => self.reason).set(now as f64);
        }
    }
}

/// A job stopped waiting (it got what it waited for, or handed its message back).
pub(crate) struct JobWaitEnded {
    pub reason: &'static str,
    pub waited: Duration,
}

impl JobWaitEnded {
    pub fn emit(self) {
        tracing::debug!(reason = self.reason, waited_ms = self.waited.as_millis() as u64, "Job stopped waiting.");
        if let Some(n) = waiting(self.reason) {
            let now = n.fetch_sub(1, Ordering::SeqCst) - 1;
            gauge!("opsfleet_jobs_waiting", "reason" => self.reason).set(now as f64);
        }
        histogram!("opsfleet_job_wait_seconds", "reason" => self.reason).record(self.waited.as_secs_f64());
    }
}

/// A job came before its task's settle delay was over and went back to its queue until then.
pub(crate) struct SettleDelay {
    pub left: Duration,
}

impl SettleDelay {
    pub fn emit(self) {
        tracing::debug!(left_ms = self.left.as_millis() as u64, "Job waits for its settle delay.");
        histogram!("opsfleet_job_wait_seconds", "reason" => "settle").record(self.left.as_secs_f64());
    }
}

/// A job found no free slot of a limit and waits.
pub(crate) struct SlotUnavailable<'a> {
    pub job_id: &'a str,
    pub limit: &'a str,
}

impl SlotUnavailable<'_> {
    pub fn emit(self) {
        tracing::debug!(job_id = %self.job_id, limit = %self.limit, "No free slot; the job waits.");
        counter!("opsfleet_limit_waits_total", "limit" => self.limit.to_owned()).increment(1);
    }
}

/// A message was already finished and was acknowledged without running.
pub(crate) struct JobAlreadyFinished<'a> {
    pub job_id: &'a str,
    pub status: &'static str,
}

impl JobAlreadyFinished<'_> {
    pub fn emit(self) {
        tracing::info!(job_id = %self.job_id, status = self.status, "Job already finished; acknowledged without running.");
        counter!("opsfleet_jobs_duplicate_total").increment(1);
    }
}

/// A message was dead-lettered by the worker.
pub(crate) struct MessageDeadLettered<'a> {
    pub queue: &'a str,
    pub reason: &'a str,
}

impl MessageDeadLettered<'_> {
    pub fn emit(self) {
        tracing::warn!(queue = %self.queue, reason = %self.reason, "Message dead-lettered.");
        counter!("opsfleet_jobs_dead_lettered_total").increment(1);
    }
}

/// A lease (lock or slot) was lost while the job held it; the job stops.
pub(crate) struct LeaseLost<'a> {
    pub job_id: &'a str,
    pub key: &'a str,
}

impl LeaseLost<'_> {
    pub fn emit(self) {
        tracing::warn!(job_id = %self.job_id, key = %self.key, "Lease lost; the job stops before its next write.");
        counter!("opsfleet_leases_lost_total").increment(1);
    }
}

/// Releasing a lease failed; after the last try it is left to lapse by itself.
pub(crate) struct ReleaseFailed<'a> {
    pub key: &'a str,
    pub error: &'a str,
    pub last: bool,
}

impl ReleaseFailed<'_> {
    pub fn emit(self) {
        if self.last {
            tracing::error!(key = %self.key, error = %self.error, "Lease release failed; it lapses by itself after its lease.");
        } else {
            tracing::warn!(key = %self.key, error = %self.error, "Lease release failed; trying again.");
        }
        counter!("opsfleet_lease_release_failures_total", "last" => if self.last { "true" } else { "false" })
            .increment(1);
    }
}

/// A completion check ran with `result` (`done`, `pending`, `failed`, `stale`, `early`).
pub(crate) struct CheckRan<'a> {
    pub job_id: &'a str,
    pub result: &'static str,
}

impl CheckRan<'_> {
    pub fn emit(self) {
        tracing::debug!(job_id = %self.job_id, result = self.result, "Completion check.");
        counter!("opsfleet_checks_total", "result" => self.result).increment(1);
    }
}

/// A run passed `max_errors` and was cancelled.
pub(crate) struct RunCancelled<'a> {
    pub run: &'a str,
    pub task: &'a str,
    pub failed: u32,
}

impl RunCancelled<'_> {
    pub fn emit(self) {
        tracing::warn!(run = %self.run, task = %self.task, failed = self.failed, "Run passed max_errors; its remaining jobs are cancelled.");
        counter!("opsfleet_runs_cancelled_total").increment(1);
    }
}

/// A store or queue call of the worker failed; the message will be retried.
pub(crate) struct WorkerCallFailed<'a> {
    pub what: &'static str,
    pub error: &'a str,
}

impl WorkerCallFailed<'_> {
    pub fn emit(self) {
        tracing::error!(what = self.what, error = %self.error, "Worker call failed; the message will be retried.");
        counter!("opsfleet_worker_errors_total", "what" => self.what).increment(1);
    }
}

/// Jobs in flight in this process.
pub(crate) fn jobs_in_flight(n: usize) {
    gauge!("opsfleet_jobs_in_flight").set(n as f64);
}

/// Messages in a queue by state.
pub(crate) fn queue_messages(queue: &str, visible: u64, in_flight: u64, delayed: u64) {
    for (state, n) in [("visible", visible), ("in_flight", in_flight), ("delayed", delayed)] {
        gauge!("opsfleet_queue_messages", "queue" => queue.to_owned(), "state" => state).set(n as f64);
    }
}

/// The job messages of every partition, visible or in flight: what autoscaling targets.
pub(crate) fn jobs_backlog(n: u64) {
    gauge!("opsfleet_jobs_backlog").set(n as f64);
}

/// The halts in force on a task (0: it runs).
pub(crate) fn task_halted(task: &str, halts: usize) {
    gauge!("opsfleet_task_halted", "task" => task.to_owned()).set(halts as f64);
}

/// Visible job messages per live worker (for dashboards; autoscaling reads the backlog).
pub(crate) fn backlog_per_worker(value: f64) {
    gauge!("opsfleet_backlog_per_worker").set(value);
}

/// Sets this process's gauges again (jobs in flight, jobs waiting by reason), so that they
/// stay in the exporter while nothing changes them.
pub(crate) fn refresh_gauges(in_flight: usize) {
    jobs_in_flight(in_flight);
    for (reason, n) in WAIT_REASONS.iter().zip(&WAITING) {
        gauge!("opsfleet_jobs_waiting", "reason" => *reason).set(n.load(Ordering::SeqCst) as f64);
    }
}

/// The notice of a run waiting for approval was published, logged (no AWS clients), or failed
/// to publish (another worker tries again).
pub(crate) struct ApprovalNotice<'a> {
    pub run: &'a str,
    pub outcome: &'static str,
    pub detail: &'a str,
}

impl ApprovalNotice<'_> {
    pub fn emit(self) {
        match self.outcome {
            "failed" => {
                tracing::warn!(run = %self.run, error = %self.detail, "Publishing a run's approval notice failed; it is tried again.")
            }
            "logged" => {
                tracing::info!(run = %self.run, notice = %self.detail, "A run waits for approval (no AWS clients: the notice is logged, not published).")
            }
            _ => {
                tracing::info!(run = %self.run, topic = %self.detail, "A run waits for approval: its notice is published.")
            }
        }
        counter!("opsfleet_approval_notices_total", "outcome" => self.outcome).increment(1);
    }
}
