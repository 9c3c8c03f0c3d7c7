//! Completion checks: running one, scheduling the next, and taking over a pending job whose
//! check came after its leases lapsed.

use super::take::{Taken, Waiting};
use super::*;
use crate::telemetry::{CheckRan, LeaseLost};
use opsfleet_protocol::ports::{OutgoingMessage, MAX_DELAY};

/// What taking over a pending job came to.
enum TakeOver {
    /// The job is ours under new leases.
    Taken(Box<(Holding, Running)>),
    /// Someone else has it, or it is no longer pending.
    Gone,
    /// The worker is shutting down: the check comes back.
    Stopped,
}

impl Worker {
    pub(super) async fn run_check(
        &self,
        check: CheckMessage,
        token: &str,
        running: Running,
    ) -> Result<Disposition, CallError> {
        let job = &check.job;
        if check.wait_ms > 0 {
            // Chained past SQS's 15-minute delay: wait again.
            CheckRan { job_id: &job.id, result: "early" }.emit();
            let delay = Duration::from_millis(check.wait_ms).min(MAX_DELAY);
            let mut next = check.clone();
            next.wait_ms = check.wait_ms - delay.as_millis() as u64;
            self.send_check(&next, delay).await?;
            return Ok(Disposition::Delete);
        }
        let mut holding = Holding {
            lock: check.lock.clone(),
            slots: check.slots.clone(),
            locked_ms: check.locked_ms,
            started_ms: check.started_ms,
            renewed: tokio::time::Instant::now(),
            begun: true,
        };
        let (task, action) = match self.task_and_action(job) {
            Ok(found) => found,
            Err(reason) => {
                self.release(&holding).await;
                let reason = format!("a pending job can no longer be checked: {reason}");
                return Ok(self.dead_letter_job(job, &reason, holding.lock.fence, Status::Failed).await);
            }
        };
        let mut running = running;
        let sent = tokio::time::Instant::now();
        if self.renew(&holding, &job.id, self.lease, false).await? {
            holding.renewed = sent;
        } else {
            // The check came after its leases lapsed and were taken: take the job over under
            // new leases and go on from its recorded state, never from the start.
            CheckRan { job_id: &job.id, result: "late" }.emit();
            drop(running);
            match self.take_over(job, task, holding).await? {
                TakeOver::Taken(taken) => (holding, running) = *taken,
                TakeOver::Gone => return self.dead_letter_if_failed(job).await,
                TakeOver::Stopped => return Ok(Disposition::Returned),
            }
        }
        let checks = check.checks + 1;
        if !self.ledger.checked(job, holding.lock.fence, check.checks, checks, token).await? {
            // A duplicate of a check that already ran, or a job that finished meanwhile.
            CheckRan { job_id: &job.id, result: "stale" }.emit();
            return self.dead_letter_if_failed(job).await;
        }
        let started = tokio::time::Instant::now();
        let ctx = ActionContext {
            job,
            dry_run: self.dry_run,
            attempt: check.attempt,
            check: checks,
            aws: self.aws.as_deref(),
            now_ms: self.clock.now_ms(),
        };
        let step = self.guarded(action.check(ctx, &check.state), &holding, &job.id, task).await;
        let result = match &step {
            settle::Guarded::Step(Step::Done { .. }) => "done",
            settle::Guarded::Step(Step::Pending { .. }) => "pending",
            settle::Guarded::Step(Step::Failed { .. }) => "failed",
            settle::Guarded::Step(Step::Skipped { .. }) => "skipped",
            settle::Guarded::LeaseLost => "lease_lost",
            settle::Guarded::Interrupted => "interrupted",
        };
        CheckRan { job_id: &job.id, result }.emit();
        let settled = self
            .settle(job, task, &action, holding, check.attempt, Some((checks, &check.state)), step, started.elapsed())
            .await;
        drop(running);
        settled
    }

    /// Takes over a pending job whose check found its leases taken: when the ledger still
    /// shows it pending under the lapsed fence, takes the leases anew (waiting for them like
    /// any job) and moves the job to the new fence. `None` when someone else has the job.
    async fn take_over(&self, job: &Job, task: &Task, lapsed: Holding) -> Result<TakeOver, CallError> {
        let old_fence = lapsed.lock.fence;
        // Free what the check still held, so that taking it again does not wait on itself.
        self.release(&lapsed).await;
        let record = self.ledger.job(&job.id).await?;
        if !record.as_ref().is_some_and(|r| r.status == Status::Pending && r.fence == old_fence) {
            return Ok(TakeOver::Gone);
        }
        let owner = self.owner(job);
        let mut waiting = Waiting::new();
        loop {
            let Some(running) = self.running(&self.check_permits).await else {
                return Ok(TakeOver::Stopped);
            };
            match self.take(job, task, &owner, waiting.watch(), false).await? {
                Taken::All(mut holding) | Taken::Cancelled(mut holding, _) => {
                    if self.ledger.adopt(job, old_fence, holding.lock.fence, &owner).await? {
                        holding.begun = true;
                        tracing::warn!(job_id = %job.id, old_fence, fence = holding.lock.fence, "A pending job's check came after its leases lapsed; it goes on under new ones from its recorded state.");
                        return Ok(TakeOver::Taken(Box::new((holding, running))));
                    }
                    self.release(&holding).await;
                    return Ok(TakeOver::Gone);
                }
                Taken::Busy { wanted, reason, .. } => {
                    drop(running);
                    if !waiting.wait(self, &wanted, reason).await? {
                        return Ok(TakeOver::Stopped);
                    }
                }
            }
        }
    }

    /// A check that stops: when its job failed for good, make sure the job is in its DLQ (the
    /// dead-lettering may not have gone through before); otherwise nothing is left to do.
    pub(super) async fn dead_letter_if_failed(&self, job: &Job) -> Result<Disposition, CallError> {
        match self.ledger.job(&job.id).await? {
            Some(record) if matches!(record.status, Status::Failed | Status::Cancelled) => {
                Ok(self.dead_letter_finished(job, &record).await)
            }
            _ => Ok(Disposition::Delete),
        }
    }

    /// Keeps the leases for the wait (until the check is due plus [`PENDING_SLACK`]), sends the
    /// check that continues the job and, for a step that came to `Pending`, records the job
    /// pending with its state. The check goes out before the ledger says pending, so a pending
    /// job always has a check on its way. When the check cannot be sent, a job's first step
    /// releases its leases and its message comes back; a check keeps them and comes back.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn schedule_check(
        &self,
        job: &Job,
        holding: Holding,
        attempt: u32,
        checks: u32,
        state: serde_json::Value,
        after: Duration,
        mark_pending: bool,
    ) -> Result<Disposition, CallError> {
        let from_start = checks == 0;
        let mut holding = holding;
        if mark_pending && !holding.begun {
            // The check about to go out needs the job's record to hold this fence (the check
            // runs under it): begin the attempt first, which a job that finishes at once never
            // needs.
            match self.ledger.begin(job, &holding.lock.owner, holding.lock.fence).await {
                Ok(crate::ledger::Begin::Started(_)) => holding.begun = true,
                Ok(crate::ledger::Begin::Stale) => {
                    self.release(&holding).await;
                    return Ok(Disposition::Retry(Duration::ZERO));
                }
                Ok(_) => {
                    // Finished or pending under another holder: nothing is left to do here.
                    self.release(&holding).await;
                    return Ok(Disposition::Delete);
                }
                Err(e) => {
                    self.release(&holding).await;
                    return Err(e.into());
                }
            }
        }
        if !self.renew(&holding, &job.id, after + self.lease + PENDING_SLACK, true).await? {
            LeaseLost { job_id: &job.id, key: &holding.lock.name() }.emit();
            if from_start {
                self.release(&holding).await;
            }
            return Ok(Disposition::Retry(Duration::ZERO));
        }
        let first = after.min(MAX_DELAY);
        let check = CheckMessage {
            v: CHECK_VERSION,
            job: job.clone(),
            lock: holding.lock.clone(),
            slots: holding.slots.clone(),
            state: state.clone(),
            wait_ms: (after - first).as_millis() as u64,
            due_ms: None,
            checks,
            attempt,
            locked_ms: holding.locked_ms,
            started_ms: holding.started_ms,
        };
        if let Err(e) = self.send_check(&check, first).await {
            if from_start {
                self.release(&holding).await;
            }
            return Err(e);
        }
        if mark_pending && !self.ledger.pending(job, holding.writer(None), &state, checks).await? {
            // A newer holder has the job; the check just sent will find that and stop.
            self.release(&holding).await;
        }
        Ok(Disposition::Delete)
    }

    pub(super) async fn send_check(&self, check: &CheckMessage, delay: Duration) -> Result<(), CallError> {
        let body = serde_json::to_string(check).map_err(|e| QueueError::Invalid {
            queue: self.checks.name().to_owned(),
            operation: "SendMessageBatch",
            message: e.to_string(),
        })?;
        // SQS delays are whole seconds: round up, so a check never arrives before it is due.
        let delay = Duration::from_secs(delay.as_millis().div_ceil(1000) as u64).min(MAX_DELAY);
        let message = OutgoingMessage { body, delay: Some(delay), ..Default::default() };
        Ok(self.checks.send_one(message).await?)
    }
}
