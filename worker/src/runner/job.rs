//! A job message: its ledger check, its leases (waiting for them as long as it takes), and its
//! action's first step.

use super::take::{Taken, Waiting};
use super::*;
use crate::ledger::Begin;
use crate::telemetry::{JobAlreadyFinished, JobFinished, JobStarted, SettleDelay};

impl Worker {
    pub(super) async fn run_job(
        &self,
        job: &Job,
        message: &ReceivedMessage,
        first: Running,
    ) -> Result<Disposition, CallError> {
        let (task, action) = match self.task_and_action(job) {
            Ok(found) => found,
            Err(reason) => return Ok(self.dead_letter_message(job.partition, message, &reason).await),
        };
        if let Some(left) = self.settling(job, task) {
            // Not yet: the message comes back when the task's settle delay is over, holding
            // no worker meanwhile (FIFO queues take no per-message delay).
            SettleDelay { left }.emit();
            return Ok(Disposition::Retry(left));
        }
        // Eventually consistent: a stale answer at worst runs a job that just finished, which
        // its lock and its fenced writes then settle, and its idempotent action makes harmless.
        let record = self.ledger.peek_job(&job.id).await?;
        if let Some(record) = &record {
            if record.status == Status::Failed || record.status == Status::Cancelled {
                return Ok(self.dead_letter_finished(job, record).await);
            }
            if record.status.is_final() {
                JobAlreadyFinished { job_id: &job.id, status: record.status.as_str() }.emit();
                return Ok(Disposition::Delete);
            }
            if record.status == Status::Pending {
                // A second delivery of a job waiting for its completion check: the check
                // carries the job on, so this message is done with.
                JobAlreadyFinished { job_id: &job.id, status: record.status.as_str() }.emit();
                return Ok(Disposition::Delete);
            }
        }
        let redriven = record.as_ref().is_some_and(|r| r.redriven);
        // A job the ledger has seen (a retry, a redrive) begins with a write of its own, fencing
        // out its older holders at once; a new one is begun by the write of its outcome.
        let seen = record.is_some();
        let owner = self.owner(job);
        let mut waiting = Waiting::new();
        let mut first = Some(first);
        let mut waited = false;
        loop {
            let running = match first.take() {
                Some(running) => running,
                None => match self.running(&self.run_permits).await {
                    Some(running) => running,
                    None => return Ok(Disposition::Returned),
                },
            };
            match self.take(job, task, &owner, waiting.watch(), !redriven).await? {
                Taken::All(holding) => {
                    drop(waiting);
                    // A job that waited, or whose lock was last released by a run of itself,
                    // may have been finished meanwhile: its attempt is begun with a write that
                    // says so.
                    let begin = seen || waited || holding.lock.last_job.as_deref() == Some(job.id.as_str());
                    return self.run_locked(job, task, &action, &owner, holding, begin, running).await;
                }
                Taken::Cancelled(holding, reason) => {
                    drop(waiting);
                    return self.cancel(job, &action, &owner, holding, &reason).await;
                }
                Taken::Busy { wanted, reason, holder } => {
                    drop(running);
                    if holder.is_some_and(|h| h.pending && h.job.as_deref() == Some(job.id.as_str()))
                        && self.ledger.job(&job.id).await?.is_some_and(|r| r.status == Status::Pending)
                    {
                        // Its own pending run holds the lock: the check carries it on.
                        JobAlreadyFinished { job_id: &job.id, status: Status::Pending.as_str() }.emit();
                        return Ok(Disposition::Delete);
                    }
                    if !waiting.wait(self, &wanted, reason).await? {
                        return Ok(Disposition::Returned);
                    }
                    waited = true;
                }
            }
        }
    }

    /// The part of a job run that holds its leases: begin the attempt (when the ledger has seen
    /// the job before, or its lock was taken over from a lapsed holder of it), start the action.
    /// `begin` says the job must begin with a write of its own (see `run_job`).
    #[allow(clippy::too_many_arguments)]
    async fn run_locked(
        &self,
        job: &Job,
        task: &Task,
        action: &Arc<dyn Action>,
        owner: &str,
        mut holding: Holding,
        begin: bool,
        _running: Running,
    ) -> Result<Disposition, CallError> {
        let took_over = holding.lock.took_over.clone();
        if let Some(lapsed) = &took_over {
            self.record_lapsed(&holding, lapsed).await;
        }
        let ours_lapsed = took_over.as_ref().is_some_and(|h| h.job.as_deref() == Some(job.id.as_str()));
        let attempt = if !begin && !ours_lapsed {
            1
        } else {
            match self.ledger.begin(job, owner, holding.lock.fence).await {
                Ok(Begin::Started(n)) => {
                    holding.begun = true;
                    n
                }
                Ok(Begin::Finished(status)) => {
                    JobAlreadyFinished { job_id: &job.id, status: status.as_str() }.emit();
                    self.release(&holding).await;
                    return Ok(Disposition::Delete);
                }
                Ok(Begin::Pending) => {
                    JobAlreadyFinished { job_id: &job.id, status: Status::Pending.as_str() }.emit();
                    self.release(&holding).await;
                    return Ok(Disposition::Delete);
                }
                Ok(Begin::Stale) => {
                    self.release(&holding).await;
                    return Ok(Disposition::Retry(jitter(Duration::from_secs(2))));
                }
                Err(e) => {
                    self.release(&holding).await;
                    return Err(e.into());
                }
            }
        };
        // Never start an action on a lease that may have lapsed: renew what is older than a
        // third of a lease (a slow set-up) before starting.
        if holding.renewed.elapsed() > self.lease / 3 {
            match self.renew(&holding, &job.id, self.lease, false).await {
                Ok(true) => holding.renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    self.release(&holding).await;
                    return Ok(Disposition::Retry(Duration::ZERO));
                }
                Err(e) => {
                    self.release(&holding).await;
                    return Err(e.into());
                }
            }
        }
        holding.started_ms = self.clock.now_ms();
        JobStarted {
            job_id: &job.id,
            since_event: Duration::from_millis(self.clock.now_ms().saturating_sub(job.received_ms)),
        }
        .emit();
        let started = tokio::time::Instant::now();
        let ctx = ActionContext {
            job,
            dry_run: self.dry_run,
            attempt,
            check: 0,
            aws: self.aws.as_deref(),
            now_ms: self.clock.now_ms(),
        };
        let step = if self.dry_run && action.mutates() {
            settle::Guarded::Step(Step::Done { summary: format!("dry run: {}", action.describe(ctx)) })
        } else {
            self.guarded(action.start(ctx), &holding, &job.id, task).await
        };
        self.settle(job, task, action, holding, attempt, None, step, started.elapsed()).await
    }

    /// Records in the ledger the attempt of a holder whose lease on this lock lapsed and was
    /// taken over (it crashed or hung), so that its job's audit trail keeps it.
    async fn record_lapsed(&self, holding: &Holding, lapsed: &crate::lease::Holder) {
        let Some(job_id) = lapsed.job.as_deref() else { return };
        let attempt = Attempt {
            number: 0,
            owner: lapsed.owner.clone(),
            fence: holding.lock.fence - 1,
            locked_ms: 0,
            started_ms: 0,
            released_ms: self.clock.now_ms(),
            outcome: "LAPSED".to_owned(),
            error: Some(format!("its lease lapsed and {} took the lock over", holding.lock.owner)),
        };
        if let Err(e) = self.ledger.lapsed(job_id, &attempt).await {
            WorkerCallFailed { what: "attempt", error: &e.to_string() }.emit();
        }
    }

    /// Cancels a job of a cancelled run (as the holder of its lock) and dead-letters it with
    /// the reason, so that `opsfleet dlq redrive` can run it later.
    async fn cancel(
        &self,
        job: &Job,
        action: &Arc<dyn Action>,
        owner: &str,
        holding: Holding,
        reason: &str,
    ) -> Result<Disposition, CallError> {
        let reason = format!("cancelled: {reason}");
        let fence = holding.lock.fence;
        let attempt = self.attempt(&holding, 0, "CANCELLED", Some(&reason));
        let cancelled = self.ledger.cancel(job, owner, fence, &reason, &attempt).await;
        self.release(&holding).await;
        if !cancelled? {
            return Ok(Disposition::Retry(jitter(Duration::from_secs(2))));
        }
        JobFinished {
            job_id: &job.id,
            action: action.name(),
            outcome: "cancelled",
            took: Duration::ZERO,
            detail: &reason,
        }
        .emit();
        Ok(self.dead_letter_job(job, &reason, fence, Status::Cancelled).await)
    }

    /// How much of the task's settle delay (`delay_secs`, from when the event was received)
    /// is left, if any.
    fn settling(&self, job: &Job, task: &Task) -> Option<Duration> {
        if task.delay.is_zero() {
            return None;
        }
        let due = job.received_ms + task.delay.as_millis() as u64;
        let now = self.clock.now_ms();
        (due > now).then(|| Duration::from_millis(due - now))
    }

    /// Heartbeats every lease held; false when one was taken over.
    pub(super) async fn renew(
        &self,
        holding: &Holding,
        job_id: &str,
        lease: Duration,
        pending: bool,
    ) -> Result<bool, StoreError> {
        for held in holding.all() {
            if !self.leases.heartbeat(held, lease, pending).await? {
                crate::telemetry::LeaseLost { job_id, key: &held.name() }.emit();
                return Ok(false);
            }
        }
        Ok(true)
    }
}
