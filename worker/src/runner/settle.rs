//! Running an action step under heartbeats and the task's deadline, and recording what it came
//! to.

use super::*;
use crate::telemetry::{JobFinished, LeaseLost, RunCancelled};

/// How an action step ended, seen from the worker.
pub(super) enum Guarded {
    Step(Step),
    /// A lease lapsed and was taken over: stop, write nothing.
    LeaseLost,
    /// The shutdown grace ran out.
    Interrupted,
}

impl Worker {
    /// Runs an action step while heartbeating every lease held; stops when one is lost, when
    /// the shutdown grace runs out, or when the task's `timeout_secs` passes (a retryable
    /// failure: the job's group moves on instead of waiting on a hung call).
    pub(super) async fn guarded(
        &self,
        step: impl std::future::Future<Output = Step>,
        holding: &Holding,
        job_id: &str,
        task: &Task,
    ) -> Guarded {
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
                        match self.leases.heartbeat(lease, self.lease, false).await {
                            Ok(true) => {}
                            Ok(false) => return Err(lease.name()),
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
                            LeaseLost { job_id, key: &holding.lock.name() }.emit();
                            return;
                        }
                        tokio::time::sleep((self.lease / 20).max(Duration::from_millis(100))).await;
                    }
                    Ok(Err(key)) => {
                        LeaseLost { job_id, key: &key }.emit();
                        return;
                    }
                    Err(_) => {
                        LeaseLost { job_id, key: &holding.lock.name() }.emit();
                        return;
                    }
                }
            }
        };
        let deadline = task.timeout;
        tokio::select! {
            step = tokio::time::timeout(deadline, step) => Guarded::Step(step.unwrap_or_else(|_| Step::Failed {
                retryable: true,
                error: format!("the step did not finish within timeout_secs = {}", deadline.as_secs()),
            })),
            () = beat => Guarded::LeaseLost,
            () = self.hard_stop.cancelled() => Guarded::Interrupted,
        }
    }

    /// Records what an action step came to and decides the message's fate.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle(
        &self,
        job: &Job,
        task: &Task,
        action: &Arc<dyn Action>,
        mut holding: Holding,
        attempt: u32,
        checking: Option<(u32, &serde_json::Value)>,
        step: Guarded,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let checks = checking.map_or(0, |(n, _)| n);
        let step = match step {
            Guarded::Step(step) => step,
            // The check comes back, finds its leases gone and takes the job over.
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
                let record = self.attempt(&holding, attempt, "SUCCEEDED", None);
                let finished =
                    self.ledger.finish(job, holding.writer(Some(&record)), Status::Succeeded, &summary).await;
                if matches!(finished, Ok(true)) {
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
                Ok(if finished? { Disposition::Delete } else { Disposition::Retry(Duration::ZERO) })
            }
            Step::Skipped { reason } => {
                let record = self.attempt(&holding, attempt, "SKIPPED", Some(&reason));
                let finished = self.ledger.finish(job, holding.writer(Some(&record)), Status::Skipped, &reason).await;
                if matches!(finished, Ok(true)) {
                    JobFinished { job_id: &job.id, action: action.name(), outcome: "skipped", took, detail: &reason }
                        .emit();
                }
                self.release(&holding).await;
                Ok(if finished? { Disposition::Delete } else { Disposition::Retry(Duration::ZERO) })
            }
            Step::Pending { check_after, state } => {
                self.schedule_check(job, holding, attempt, checks, state, check_after, true).await
            }
            Step::Failed { retryable, error } => {
                let step = match checking {
                    Some((n, _)) => format!("check/{n}"),
                    None => format!("start/{attempt}"),
                };
                // A failed start is an attempt that will be retried unless this failure is its
                // last (then its finish records it again, failed); a failed check is no attempt.
                let record = self.attempt(&holding, attempt, "RETRY", Some(&error));
                let recorded = checking.is_none().then_some(&record);
                let failures = match self.ledger.failure(job, holding.writer(recorded), &error, &step).await {
                    Ok(Some(n)) => {
                        holding.begun = true;
                        n
                    }
                    Ok(None) => {
                        // A newer holder has the job: write nothing more, dead-letter nothing.
                        self.release(&holding).await;
                        return Ok(Disposition::Retry(Duration::ZERO));
                    }
                    Err(e) => {
                        if checking.is_none() {
                            self.release(&holding).await;
                        }
                        return Err(e.into());
                    }
                };
                if retryable && failures <= task.retries {
                    JobFinished { job_id: &job.id, action: action.name(), outcome: "retried", took, detail: &error }
                        .emit();
                    if let Some((_, state)) = checking {
                        // A failed check is checked again later, the job keeping its leases.
                        let backoff = failure_backoff(failures);
                        return self.schedule_check(job, holding, attempt, checks, state.clone(), backoff, false).await;
                    }
                    self.release(&holding).await;
                    return Ok(Disposition::Retry(failure_backoff(failures)));
                }
                let reason = if retryable {
                    format!("{error} (failure {failures}, over retries = {})", task.retries)
                } else {
                    error
                };
                self.fail(job, task, action, holding, attempt, &reason, took).await
            }
        }
    }

    /// Finishes a job as failed for good, cancels its run when it passes `max_errors`, and
    /// dead-letters it. A holder whose fenced write is refused (a newer holder has the job)
    /// dead-letters nothing.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        job: &Job,
        task: &Task,
        action: &Arc<dyn Action>,
        holding: Holding,
        attempt: u32,
        reason: &str,
        took: Duration,
    ) -> Result<Disposition, CallError> {
        let fence = holding.lock.fence;
        let record = self.attempt(&holding, attempt, "FAILED", Some(reason));
        let finished = match self.ledger.finish(job, holding.writer(Some(&record)), Status::Failed, reason).await {
            Ok(finished) => finished,
            Err(e) => {
                self.release(&holding).await;
                return Err(e.into());
            }
        };
        if !finished {
            self.release(&holding).await;
            return Ok(Disposition::Retry(Duration::ZERO));
        }
        JobFinished { job_id: &job.id, action: action.name(), outcome: "failed", took, detail: reason }.emit();
        self.release(&holding).await;
        if let Some(max) = task.max_errors {
            if let Err(e) = self.check_max_errors(job, max).await {
                // The next failure of the run counts again (the counts are derived).
                WorkerCallFailed { what: "max_errors", error: &e.to_string() }.emit();
            }
        }
        Ok(self.dead_letter_job(job, reason, fence, Status::Failed).await)
    }

    /// Cancels the job's run when its failures (derived from its jobs' entries) pass `max`.
    async fn check_max_errors(&self, job: &Job, max: u32) -> Result<(), StoreError> {
        let failed = self.ledger.run_failures(&job.run_id()).await?;
        if failed > max && self.ledger.run_cancelled(&job.run_id()).await?.is_none() {
            let why = format!("run failed {failed} jobs, over max_errors = {max}");
            self.ledger.cancel_run(&job.run_id(), &why).await?;
            RunCancelled { run: &job.run_id(), task: &job.task, failed }.emit();
        }
        Ok(())
    }
}
