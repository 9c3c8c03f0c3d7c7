//! How a pending outcome is recorded: the job keeps its leases for the wait, a delayed check
//! goes out to continue it, and the ledger says pending with the action's state.

use super::held::Held;
use super::recorder::Recorder;
use super::{CallError, Disposition, PENDING_SLACK};
use crate::check::{new_token, CheckMessage, CHECK_VERSION};
use crate::ledger::Begin;
use crate::telemetry::LeaseLost;
use opsfleet_protocol::ports::{OutgoingMessage, QueueError, MAX_DELAY};
use opsfleet_protocol::Job;
use serde_json::Value;
use std::time::Duration;

/// The check a pending job is due.
pub(super) struct Due {
    /// Checks run so far.
    pub checks: u32,
    /// The action's state the check reads.
    pub state: Value,
    /// How long until the check.
    pub after: Duration,
    /// The token of the check that came to this (none for a job's first step).
    pub ran: Option<String>,
}

/// The longest a pending job waits for its next check: an action asking for more (a bug, or a
/// param in the wrong unit) is checked after this long, and its leases kept no longer.
pub(super) const MAX_CHECK_WAIT: Duration = Duration::from_secs(7 * 86_400);

impl Recorder {
    /// Keeps the leases for the wait (until the check is due plus [`PENDING_SLACK`]), sends the
    /// check that continues the job and, when `mark_pending` (a step that came to `Pending`),
    /// records the job pending with its state. The check goes out before the ledger says
    /// pending, so a pending job always has a check on its way. When the check cannot be sent,
    /// a job's first step releases its leases and its message comes back; a check keeps them
    /// and comes back.
    pub(super) async fn pending(
        &self,
        job: &Job,
        held: Held,
        due: Due,
        mark_pending: bool,
    ) -> Result<Disposition, CallError> {
        let mut held = held;
        let due = Due { after: due.after.min(MAX_CHECK_WAIT), ..due };
        if mark_pending && !held.begun {
            // The check about to go out needs the job's record to hold this fence (the check
            // runs under it): begin the attempt first, which a job that finishes at once never
            // needs.
            let lock = Some(held.lock().key.as_str());
            match self.ledger.begin(job, &held.lock().owner, held.fence(), None, lock).await? {
                Begin::Started(_) => held.begun = true,
                Begin::Stale => return Ok(held.release().await.then(Disposition::Retry(Duration::ZERO))),
                // Finished or pending under another holder: nothing is left to do here.
                Begin::Finished(_) | Begin::Pending => return Ok(held.release().await.then(Disposition::Delete)),
            }
        }
        if !held.renew(&job.id, due.after + self.lease + PENDING_SLACK, true).await? {
            LeaseLost { job_id: &job.id, key: &held.lock().name() }.emit();
            return Ok(let_go(held).await.then(Disposition::Retry(Duration::ZERO)));
        }
        let first = due.after.min(MAX_DELAY);
        let check = CheckMessage {
            v: CHECK_VERSION,
            job: job.clone(),
            lock: held.lock().clone(),
            slots: held.slots().to_vec(),
            state: due.state.clone(),
            wait_ms: (due.after - first).as_millis() as u64,
            due_ms: None,
            checks: due.checks,
            token: new_token(),
            attempt: held.attempt,
            locked_ms: held.locked_ms,
            started_ms: held.started_ms,
        };
        if let Err(e) = self.send_check(&check, first).await {
            // A start's leases are released (its message comes back); a check's stay with it.
            let _ = let_go(held).await;
            return Err(e);
        }
        // From here on the check message carries the leases.
        if mark_pending {
            let pending =
                self.ledger.pending(job, held.writer(None), &due.state, due.checks, due.ran.as_deref(), &check.token);
            match pending.await {
                Ok(true) => held.leave_with_check(),
                // A newer holder has the job; the check just sent will find that and stop.
                Ok(false) => {
                    let _ = held.release().await;
                }
                Err(e) => {
                    held.leave_with_check();
                    return Err(e.into());
                }
            }
        } else {
            held.leave_with_check();
        }
        Ok(Disposition::Delete)
    }

    /// Sends a check, delayed by `delay` (rounded up to whole seconds, at most SQS's 15
    /// minutes).
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

/// Lets go as the message comes back: a job's leases are released, a check's stay with it.
async fn let_go(held: Held) -> super::held::Released {
    if held.kept_by_check() {
        held.leave_with_check();
        super::held::Released::Freed
    } else {
        held.release().await
    }
}
