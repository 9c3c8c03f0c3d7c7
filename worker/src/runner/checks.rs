//! How a check continues a job: a pending job's check renews its leases, runs the action's
//! check and records what it came to (done, failed, or pending again with the next check on
//! its way); a check that came after its leases lapsed takes the job over under new ones.

use super::awaiting::Standing;
use super::gate::{Entered, Entry};
use super::held::Held;
use super::permits::Running;
use super::recorder::{Checking, Subject};
use super::*;
use crate::ledger::{CheckLink, Checked};
use crate::telemetry::CheckRan;
use opsfleet_protocol::ports::MAX_DELAY;

/// What taking over a pending job came to.
enum TakeOver {
    /// The job is ours under new leases.
    Taken(Box<(Held, Running)>),
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
            self.recorder.send_check(&next, delay).await?;
            return Ok(Disposition::Delete);
        }
        let mut held = Held::of_check(self.gate.leases().clone(), &check, self.gate.lease(), self.clock);
        let (task, action) = match self.task_and_action(job) {
            Ok(found) => found,
            Err(reason) => {
                // A deploy renamed or removed its task: the job fails for good, recorded in the
                // ledger under its fence first, so that a redrive reopens and runs it once the
                // task is back.
                let fence = held.fence();
                let reason = format!("a pending job can no longer be checked: {reason}");
                let attempt = held.attempt_record(&self.clock, "FAILED", Some(&reason));
                let finished = self.ledger.finish(job, held.writer(Some(&attempt)), Status::Failed, &reason).await?;
                let released = held.release().await;
                if !finished {
                    // Another holder has the job: this check carries nothing on.
                    return Ok(released.then(Disposition::Delete));
                }
                return Ok(self.recorder.dead_letters().job(job, &reason, fence, Status::Failed).await);
            }
        };
        if let Some(why) = self.held_back(job, task, &check.state).await? {
            // A runbook halted between two steps, or waiting at an approval step, starts
            // nothing: its check comes back later, holding no worker and writing nothing (its
            // leases stay as its last pending renewed them; should they lapse meanwhile, the
            // check that goes on takes the job over).
            CheckRan { job_id: &job.id, result: why }.emit();
            self.recorder.send_check(&check, HELD_BACK_RECHECK).await?;
            held.leave_with_check();
            return Ok(Disposition::Delete);
        }
        let mut running = running;
        let mut took_over = false;
        if !held.renew(&job.id, self.gate.lease(), false).await? {
            // The check came after its leases lapsed and were taken: take the job over under
            // new leases and go on from its recorded state, never from the start.
            CheckRan { job_id: &job.id, result: "late" }.emit();
            drop(running);
            match self.take_over(job, task, held).await? {
                TakeOver::Taken(taken) => {
                    (held, running) = *taken;
                    took_over = true;
                }
                TakeOver::Gone => return self.dead_letter_if_failed(job).await,
                TakeOver::Stopped => return Ok(Disposition::Returned),
            }
        }
        // Held back since the look above (a halt that began just now): the check comes back with
        // the leases it holds now (new ones, when it took the job over).
        let mut why = None;
        if between_steps(job, &check.state) && self.gate.halted(&task.name).await?.is_some() {
            why = Some("halted");
        }
        let mut refused = None;
        if let Some((step, settings)) = approval_step(job, &check.state).filter(|_| why.is_none()) {
            match self.gate.step_approval(job, &step, &settings).await? {
                Standing::Go => {}
                Standing::Wait => why = Some("awaiting_approval"),
                // A redriven job goes on: someone chose to run it.
                Standing::Cancel(_) if self.ledger.job(&job.id).await?.is_some_and(|r| r.redriven) => {}
                Standing::Cancel(reason) => refused = Some(format!("step `{step}`: {reason}")),
            }
        }
        if let Some(why) = why {
            CheckRan { job_id: &job.id, result: why }.emit();
            let mut next = check.clone();
            next.lock = held.lock().clone();
            next.slots = held.slots().to_vec();
            self.recorder.send_check(&next, HELD_BACK_RECHECK).await?;
            held.leave_with_check();
            return Ok(Disposition::Delete);
        }
        let checks = check.checks + 1;
        let token = if check.token.is_empty() { token } else { check.token.as_str() };
        let claim = format!("{}/{:x}", self.id, rand::random::<u64>());
        let link = CheckLink { previous: check.checks, token, claim: &claim, hold: task.timeout + self.gate.lease() };
        match self.ledger.checked(job, held.fence(), &link).await? {
            Checked::Running => {}
            Checked::Busy(left) => {
                // Another delivery of the job's checks runs now, or its handler died and its
                // claim has not lapsed yet: this one comes back when it has.
                CheckRan { job_id: &job.id, result: "busy" }.emit();
                held.leave_with_check();
                return Ok(Disposition::Retry(left.min(MAX_DELAY)));
            }
            Checked::Stale => {
                // A duplicate of a check that already ran, or a job that finished meanwhile.
                CheckRan { job_id: &job.id, result: "stale" }.emit();
                if took_over {
                    // The leases just taken carry nothing on.
                    let _ = held.release().await;
                } else {
                    held.leave_with_check();
                }
                return self.dead_letter_if_failed(job).await;
            }
        }
        let started = tokio::time::Instant::now();
        let ctx = self.context(job, check.attempt, checks);
        let pending_for = Duration::from_millis(self.clock.now_ms().saturating_sub(check.started_ms));
        let step = if let Some(error) = refused {
            Guarded::Step(Step::Failed { retryable: false, error })
        } else if check.started_ms > 0 && pending_for > task.deadline {
            // Work that never completes (a start that fell back, a copy whose source failed,
            // a state the action does not know) must not hold the lock and the slot forever.
            Guarded::Step(Step::Failed {
                retryable: false,
                error: format!(
                    "not complete {} min after it started (the task's deadline_mins is {}); state: {}",
                    pending_for.as_secs() / 60,
                    task.deadline.as_secs() / 60,
                    one_line(&check.state.to_string()),
                ),
            })
        } else {
            self.guard.run(action.check(ctx, &check.state), &held, &job.id, task.timeout).await
        };
        CheckRan { job_id: &job.id, result: step.result() }.emit();
        let s = Subject { job, task, action: action.as_ref() };
        let checking = Checking { n: checks, state: &check.state, token };
        let settled = self.recorder.settle(&s, held, Some(checking), step, started.elapsed()).await;
        drop(running);
        settled
    }

    /// Why a runbook's check must not go on now, if it must not: its task is halted and its
    /// next step's start is due (`halted`), or it waits at an approval step nobody decided yet
    /// (`awaiting_approval`).
    async fn held_back(
        &self,
        job: &Job,
        task: &Task,
        state: &serde_json::Value,
    ) -> Result<Option<&'static str>, CallError> {
        if between_steps(job, state) {
            if let Some(halt) = self.gate.halted(&task.name).await? {
                tracing::debug!(job_id = %job.id, halt = %halt.line(), "The task is halted: the runbook's next step waits.");
                return Ok(Some("halted"));
            }
        }
        if let Some((step, settings)) = approval_step(job, state) {
            if self.gate.step_approval(job, &step, &settings).await? == Standing::Wait {
                return Ok(Some("awaiting_approval"));
            }
        }
        Ok(None)
    }

    /// Takes over a pending job whose check found its leases taken: when the ledger still
    /// shows it pending under the lapsed fence, takes the leases anew (waiting for them like
    /// any job) and moves the job to the new fence.
    async fn take_over(&self, job: &Job, task: &Task, lapsed: Held) -> Result<TakeOver, CallError> {
        let old_fence = lapsed.fence();
        let attempt = lapsed.attempt;
        // The job goes on under the same lock item as before, whatever its task says now.
        let job_lock = lapsed.lock().key.clone();
        // Free what the check still held, so that taking it again does not wait on itself.
        let _ = lapsed.release().await;
        let record = self.ledger.job(&job.id).await?;
        if !record.as_ref().is_some_and(|r| r.status == Status::Pending && r.fence == old_fence) {
            return Ok(TakeOver::Gone);
        }
        let entry = Entry { check_run: false, own_pending_ends: false, lock: Some(job_lock.as_str()) };
        match self.gate.enter(job, task, &self.check_permits, None, entry).await? {
            Entered::All { held: mut taken, running, .. } | Entered::Cancelled { held: mut taken, running, .. } => {
                if self.ledger.adopt(job, old_fence, taken.fence(), &taken.lock().owner).await? {
                    taken.begun = true;
                    taken.attempt = attempt;
                    // The job's check carries it on from here, as it did the lapsed leases.
                    taken.keep_for_check();
                    tracing::warn!(job_id = %job.id, old_fence, fence = taken.fence(), "A pending job's check came after its leases lapsed; it goes on under new ones from its recorded state.");
                    return Ok(TakeOver::Taken(Box::new((taken, running))));
                }
                let _ = taken.release().await;
                Ok(TakeOver::Gone)
            }
            Entered::OwnPending => Ok(TakeOver::Gone),
            Entered::HandBack => Ok(TakeOver::Stopped),
        }
    }

    /// A check that stops: when its job failed for good, make sure the job is in its DLQ (the
    /// dead-lettering may not have gone through before); otherwise nothing is left to do.
    async fn dead_letter_if_failed(&self, job: &Job) -> Result<Disposition, CallError> {
        match self.ledger.job(&job.id).await? {
            Some(record) if matches!(record.status, Status::Failed | Status::Cancelled) => {
                Ok(self.recorder.dead_letters().finished(job, &record).await)
            }
            _ => Ok(Disposition::Delete),
        }
    }
}

/// How long a held-back runbook's check waits before it looks again: one SQS round trip per
/// waiting job this often, and no write.
const HELD_BACK_RECHECK: Duration = Duration::from_secs(15);

/// The approval step a runbook's check waits at, if it does: its name and settings.
fn approval_step(job: &Job, state: &serde_json::Value) -> Option<(String, opsfleet_protocol::config::ApproveSettings)> {
    if job.action != opsfleet_protocol::config::RUNBOOK || state.get("started") != Some(&serde_json::Value::Bool(true))
    {
        return None;
    }
    let step = job.params.get("steps")?.get(usize::try_from(state.get("at")?.as_u64()?).ok()?)?;
    if step.get("action")?.as_str()? != crate::actions::APPROVE {
        return None;
    }
    let settings = crate::actions::approval_params(step.get("params")?).ok()?;
    Some((step.get("name")?.as_str()?.to_owned(), settings))
}

/// Whether a check is a runbook's between two steps: its next step's start is due.
fn between_steps(job: &Job, state: &serde_json::Value) -> bool {
    job.action == opsfleet_protocol::config::RUNBOOK && state.get("started") == Some(&serde_json::Value::Bool(false))
}

/// The first 200 characters of a text, for a one-line reason.
fn one_line(text: &str) -> String {
    text.chars().take(200).collect()
}
