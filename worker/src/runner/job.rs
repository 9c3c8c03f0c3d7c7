//! A job message: its ledger check, its leases (waiting for them as long as it takes), and its
//! action's first step.

use super::gate::{Entered, Entry};
use super::held::Held;
use super::permits::Running;
use super::recorder::Subject;
use super::*;
use crate::ledger::Begin;
use crate::telemetry::{JobAlreadyFinished, JobStarted, SettleDelay};

impl Worker {
    pub(super) async fn run_job(
        &self,
        job: &Job,
        message: &ReceivedMessage,
        first: Running,
    ) -> Result<Disposition, CallError> {
        let (task, action) = match self.task_and_action(job) {
            Ok(found) => found,
            Err(reason) => return Ok(self.recorder.dead_letters().message(job.partition, message, &reason).await),
        };
        if let Some(left) = self.settling(job, task) {
            // Not yet: the message comes back when the task's settle delay is over, holding
            // no worker meanwhile (FIFO queues take no per-message delay).
            SettleDelay { left }.emit();
            return Ok(Disposition::Retry(left));
        }
        // Eventually consistent (the happy path's one read). A stale answer of no record or of
        // a job in progress at worst runs a job that just finished, which its lock and fenced
        // writes then settle. An answer that would end this message is read again strongly
        // first: FAILED, CANCELLED and PENDING are not final for good (a redrive reopens the
        // first two; a pending job can fail and be reopened), and a stale one would delete a
        // redriven job unrun.
        let mut record = self.ledger.peek_job(&job.id).await?;
        if record.as_ref().is_some_and(|r| matches!(r.status, Status::Failed | Status::Cancelled | Status::Pending)) {
            record = self.ledger.job(&job.id).await?;
        }
        if let Some(record) = &record {
            if record.status == Status::Failed || record.status == Status::Cancelled {
                if let (Status::Failed, false, Some(max)) =
                    (record.status, record.dead_lettered, task.max_errors_for(job.run_size))
                {
                    // Its failure may not have been counted against its run yet.
                    self.recorder.check_max_errors(job, max).await?;
                }
                return Ok(self.recorder.dead_letters().finished(job, record).await);
            }
            if record.status.is_final() || record.status == Status::Pending {
                // Finished; or a second delivery of a job waiting for its completion check,
                // which carries the job on: this message is done with.
                JobAlreadyFinished { job_id: &job.id, status: record.status.as_str() }.emit();
                return Ok(Disposition::Delete);
            }
        }
        let redriven = record.as_ref().is_some_and(|r| r.redriven);
        // A job the ledger has seen (a retry, a redrive) begins with a write of its own, fencing
        // out its older holders at once; a new one is begun by the write of its outcome.
        let seen = record.is_some();
        let s = Subject { job, task, action: action.as_ref() };
        // A job that began takes the lock item it began under, whatever its task's `lock`
        // says now (a deploy may have changed it): its fences compare within one item.
        let lock = record.as_ref().and_then(|r| r.lock.as_deref());
        let entry = Entry { check_run: !redriven, own_pending_ends: true, lock };
        match self.gate.enter(job, task, &self.run_permits, Some(first), entry).await? {
            Entered::All { held, running, waited } => {
                // A job that waited, or whose lock was last released by a run of itself, may
                // have been finished meanwhile: its attempt is begun with a write that says so.
                let begin = seen || waited || held.lock().last_job.as_deref() == Some(job.id.as_str());
                self.run_locked(&s, held, begin, running).await
            }
            Entered::Cancelled { held, reason, running: _running } => self.recorder.cancelled(&s, held, &reason).await,
            Entered::OwnPending => {
                // Its own pending run holds the lock: the check carries it on.
                JobAlreadyFinished { job_id: &job.id, status: Status::Pending.as_str() }.emit();
                Ok(Disposition::Delete)
            }
            Entered::HandBack => Ok(Disposition::Returned),
        }
    }

    /// The part of a job run that holds its leases: begin the attempt (when `begin`, or its
    /// lock was taken over from a lapsed holder of it), start the action, record the outcome.
    async fn run_locked(
        &self,
        s: &Subject<'_>,
        mut held: Held,
        begin: bool,
        _running: Running,
    ) -> Result<Disposition, CallError> {
        let job = s.job;
        let took_over = held.lock().took_over.clone();
        if let Some(lapsed) = &took_over {
            self.recorder.lapsed(&held, lapsed).await;
        }
        let ours_lapsed = took_over.as_ref().is_some_and(|h| h.job.as_deref() == Some(job.id.as_str()));
        if begin || ours_lapsed {
            // The job's own attempt before this one, if its lock kept it unrecorded.
            let last_ours = held.lock().last_job.as_deref() == Some(job.id.as_str());
            let earlier = held.lock().last_attempt.clone().filter(|_| last_ours);
            let lock = Some(held.lock().key.as_str());
            match self.ledger.begin(job, &held.lock().owner, held.fence(), earlier.as_deref(), lock).await? {
                Begin::Started(n) => {
                    held.begun = true;
                    held.attempt = n;
                }
                Begin::Finished(status) => {
                    JobAlreadyFinished { job_id: &job.id, status: status.as_str() }.emit();
                    let released = held.release().await;
                    if matches!(status, Status::Failed | Status::Cancelled) {
                        // Make sure its dead letter went out before this message goes.
                        if let Some(record) = self.ledger.job(&job.id).await? {
                            return Ok(released.then(self.recorder.dead_letters().finished(job, &record).await));
                        }
                    }
                    return Ok(released.then(Disposition::Delete));
                }
                Begin::Pending => {
                    JobAlreadyFinished { job_id: &job.id, status: Status::Pending.as_str() }.emit();
                    return Ok(held.release().await.then(Disposition::Delete));
                }
                Begin::Stale => {
                    return Ok(held.release().await.then(Disposition::Retry(jitter(Duration::from_secs(2)))));
                }
            }
        }
        // Never start an action on a lease that may have lapsed: renew what is older than a
        // third of a lease (a slow set-up) before starting.
        if held.renewed.elapsed() > self.gate.lease() / 3 && !held.renew(&job.id, self.gate.lease(), false).await? {
            return Ok(held.release().await.then(Disposition::Retry(Duration::ZERO)));
        }
        held.started_ms = self.clock.now_ms();
        held.acted = true;
        let since_event = Duration::from_millis(self.clock.now_ms().saturating_sub(job.received_ms));
        JobStarted { job_id: &job.id, task: &s.task.name, since_event }.emit();
        let started = tokio::time::Instant::now();
        let ctx = self.context(job, held.attempt, 0);
        let step = if self.dry_run && s.action.mutates() {
            Guarded::Step(Step::Done { summary: format!("dry run: {}", s.action.describe(ctx)) })
        } else {
            self.guard.run(s.action.start(ctx), &held, &job.id, s.task.timeout).await
        };
        self.recorder.settle(s, held, None, step, started.elapsed()).await
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
}
