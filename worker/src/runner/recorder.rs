//! How an outcome is recorded: what an action step came to goes into the job's record in the
//! ledger (fenced by the job's lock), the leases are let go, and a job that ended for good
//! without success goes to its DLQ. A step that came to pending is recorded by `pending`.

use super::dead_letters::DeadLetters;
use super::guarded::Guarded;
use super::held::Held;
use super::{failure_backoff, jitter, CallError, Disposition};
use crate::actions::{AnyAction, Step};
use crate::lease::Holder;
use crate::ledger::{Attempt, Ledger, Status};
use crate::telemetry::{JobFinished, RunCancelled, WorkerCallFailed};
use opsfleet_protocol::config::Task;
use opsfleet_protocol::ports::{Queue, StoreError};
use opsfleet_protocol::Clock;
use opsfleet_protocol::Job;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The job a step ran for: the job, its task and its action.
#[derive(Clone, Copy)]
pub(super) struct Subject<'a> {
    /// The job.
    pub job: &'a Job,
    /// Its task.
    pub task: &'a Task,
    /// Its action.
    pub action: &'a dyn AnyAction,
}

/// The completion check a step ran as: its number and the state it checked.
#[derive(Clone, Copy)]
pub(super) struct Checking<'a> {
    /// The check's number, from 1.
    pub n: u32,
    /// The action's state it checked.
    pub state: &'a Value,
    /// The token of its link of the chain.
    pub token: &'a str,
}

/// Records what jobs' steps came to.
pub(super) struct Recorder {
    pub(super) ledger: Ledger,
    pub(super) clock: Clock,
    pub(super) dead_letters: DeadLetters,
    /// Where checks of pending jobs go.
    pub(super) checks: Arc<dyn Queue>,
    /// The lease every holder states.
    pub(super) lease: Duration,
}

impl Recorder {
    /// The same recorder with another wall clock.
    pub(super) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
        self.ledger = self.ledger.clone().with_clock(clock);
        self.dead_letters.set_clock(clock);
    }

    /// The dead-letter queues.
    pub(super) fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Records what a step came to and decides the message's fate.
    pub(super) async fn settle(
        &self,
        s: &Subject<'_>,
        held: Held,
        checking: Option<Checking<'_>>,
        step: Guarded,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let step = match step {
            Guarded::Step(step) => step,
            // The check comes back, finds its leases gone and takes the job over.
            Guarded::LeaseLost => {
                held.lost();
                return Ok(Disposition::Retry(Duration::ZERO));
            }
            // A check keeps its leases: whoever takes the check message next holds them.
            Guarded::Interrupted if checking.is_some() => {
                held.leave_with_check();
                return Ok(Disposition::Retry(Duration::ZERO));
            }
            Guarded::Interrupted => return Ok(held.release().await.then(Disposition::Retry(Duration::ZERO))),
        };
        match step {
            Step::Done { summary } => self.finished(s, held, Status::Succeeded, &summary, took).await,
            Step::Skipped { reason } => self.finished(s, held, Status::Skipped, &reason, took).await,
            Step::Pending { check_after, state } => {
                let checks = checking.map_or(0, |c| c.n);
                let ran = checking.map(|c| c.token.to_owned());
                self.pending(s.job, held, super::pending::Due { checks, state, after: check_after, ran }, true).await
            }
            Step::Failed { retryable, error } => self.failed(s, held, checking, retryable, error, took).await,
        }
    }

    /// Finishes a job as succeeded or skipped.
    async fn finished(
        &self,
        s: &Subject<'_>,
        held: Held,
        status: Status,
        text: &str,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let (outcome, error) = match status {
            Status::Skipped => ("skipped", Some(text)),
            _ => ("succeeded", None),
        };
        let record = held.attempt_record(&self.clock, status.as_str(), error);
        let finished = self.ledger.finish(s.job, held.writer(Some(&record)), status, text).await;
        let mut held = held;
        if matches!(finished, Ok(true)) {
            held.recorded = true;
            job_finished(s, outcome, took, text);
            if s.task.ramp_up && s.task.max_concurrency.is_some() {
                // A count that fails to go up only slows the run's ramp.
                if let Err(e) = self.ledger.run_finished_well(&s.job.run_id()).await {
                    WorkerCallFailed { what: "ramp", error: &e.to_string() }.emit();
                }
            }
        }
        let released = held.release().await;
        Ok(released.then(if finished? { Disposition::Delete } else { Disposition::Retry(Duration::ZERO) }))
    }

    /// Counts a failed step: retried (a start through its message's visibility, a check by
    /// the next check) while the task's `retries` last, else the job fails for good.
    async fn failed(
        &self,
        s: &Subject<'_>,
        mut held: Held,
        checking: Option<Checking<'_>>,
        retryable: bool,
        error: String,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let step = match checking {
            Some(c) => format!("check/{}", c.n),
            None => format!("start/{}", held.attempt),
        };
        // A failed start is an attempt that will be retried unless this failure is its last
        // (then its finish records it again, failed); a failed check is no attempt.
        let record = held.attempt_record(&self.clock, "RETRY", Some(&error));
        let recorded = checking.is_none().then_some(&record);
        // On an error, a start's leases are released and a check's stay with its message.
        let failures = match self.ledger.failure(s.job, held.writer(recorded), &error, &step).await? {
            Some(n) => {
                held.recorded = true;
                n
            }
            // A newer holder has the job: write nothing more, dead-letter nothing.
            None => return Ok(held.release().await.then(Disposition::Retry(Duration::ZERO))),
        };
        held.begun = true;
        if retryable && failures <= s.task.retries {
            job_finished(s, "retried", took, &error);
            if let Some(c) = checking {
                // A failed check is checked again later, the job keeping its leases.
                let after = failure_backoff(failures);
                let due =
                    super::pending::Due { checks: c.n, state: c.state.clone(), after, ran: Some(c.token.to_owned()) };
                return self.pending(s.job, held, due, false).await;
            }
            return Ok(held.release().await.then(Disposition::Retry(failure_backoff(failures))));
        }
        let reason =
            if retryable { format!("{error} (failure {failures}, over retries = {})", s.task.retries) } else { error };
        self.fail(s, held, &reason, took).await
    }

    /// Finishes a job as failed for good, cancels its run when it passes `max_errors`, and
    /// dead-letters it. A holder whose fenced write is refused (a newer holder has the job)
    /// dead-letters nothing.
    async fn fail(&self, s: &Subject<'_>, held: Held, reason: &str, took: Duration) -> Result<Disposition, CallError> {
        let fence = held.fence();
        let record = held.attempt_record(&self.clock, "FAILED", Some(reason));
        let finished = self.ledger.finish(s.job, held.writer(Some(&record)), Status::Failed, reason).await;
        let mut held = held;
        held.recorded = matches!(finished, Ok(true));
        let released = held.release().await;
        if !finished? {
            return Ok(released.then(Disposition::Retry(Duration::ZERO)));
        }
        job_finished(s, "failed", took, reason);
        if let Some(max) = s.task.max_errors_for(s.job.run_size) {
            // When this fails, the message is tried again: the job's record says FAILED without
            // its dead letter, and the next try checks the run again before dead-lettering it.
            self.check_max_errors(s.job, max).await?;
        }
        if let Some(max) = s.task.max_errors_per_location {
            let location = super::gate::location(s.job);
            if self.ledger.location_failed(&s.job.run_id(), &s.job.id, &location, max).await?.is_some() {
                RunCancelled { run: &s.job.run_id(), task: &s.job.task, failed: max + 1 }.emit();
            }
        }
        Ok(self.dead_letters.job(s.job, reason, fence, Status::Failed).await)
    }

    /// Cancels the job's run when its failures (derived from its jobs' entries) pass `max`.
    pub(super) async fn check_max_errors(&self, job: &Job, max: u32) -> Result<(), StoreError> {
        let failed = self.ledger.run_failures(&job.run_id()).await?;
        if failed > max && self.ledger.run_cancelled(&job.run_id()).await?.is_none() {
            let why = format!("run failed {failed} jobs, over max_errors = {max}");
            self.ledger.cancel_run(&job.run_id(), &why).await?;
            RunCancelled { run: &job.run_id(), task: &job.task, failed }.emit();
        }
        Ok(())
    }

    /// Cancels a job of a cancelled run (as the holder of its lock) and dead-letters it with
    /// the reason, so that `opsfleet dlq redrive` can run it later.
    pub(super) async fn cancelled(&self, s: &Subject<'_>, held: Held, reason: &str) -> Result<Disposition, CallError> {
        let mut held = held;
        let reason = format!("cancelled: {reason}");
        held.attempt = 0;
        let fence = held.fence();
        let record = held.attempt_record(&self.clock, "CANCELLED", Some(&reason));
        let cancelled = self.ledger.cancel(s.job, &held.lock().owner, fence, &reason, &record).await;
        held.recorded = matches!(cancelled, Ok(true));
        let released = held.release().await;
        if !cancelled? {
            return Ok(released.then(Disposition::Retry(jitter(Duration::from_secs(2)))));
        }
        let took = Duration::ZERO;
        job_finished(s, "cancelled", took, &reason);
        Ok(self.dead_letters.job(s.job, &reason, fence, Status::Cancelled).await)
    }

    /// Records in the ledger the attempt of a holder whose lease on this lock lapsed and was
    /// taken over by `held` (it crashed or hung), so that its job's audit trail keeps it.
    pub(super) async fn lapsed(&self, held: &Held, lapsed: &Holder) {
        let Some(job_id) = lapsed.job.as_deref() else { return };
        let attempt = Attempt {
            number: 0,
            owner: lapsed.owner.clone(),
            fence: held.fence() - 1,
            locked_ms: 0,
            started_ms: 0,
            released_ms: self.clock.now_ms(),
            outcome: "LAPSED".to_owned(),
            error: Some(format!("its lease lapsed and {} took the lock over", held.lock().owner)),
        };
        if let Err(e) = self.ledger.lapsed(job_id, &attempt).await {
            WorkerCallFailed { what: "attempt", error: &e.to_string() }.emit();
        }
    }
}

/// Logs and counts a job's end (or a retried attempt).
fn job_finished(s: &Subject<'_>, outcome: &'static str, took: Duration, detail: &str) {
    JobFinished { job_id: &s.job.id, task: &s.task.name, action: s.action.name(), outcome, took, detail }.emit();
}
