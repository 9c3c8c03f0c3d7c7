//! The ledger, the audit trail: a `job#<id>` item per job whose status moves with conditional
//! writes fenced by the job's lock, holding every attempt of the job as an `attempt#NNNN#fence`
//! attribute, and under `run#<id>` (one per event and task) the run's cancellation and an entry
//! for each of its jobs that failed or was cancelled.
//!
//! A job that runs once costs one write here: its first attempt is not begun with a write of
//! its own; the write of its outcome begins it too, under the same condition ([`Writer`]).
//! Only a job seen in the ledger before (a retry, a redrive, a lapsed lease taken over) is begun
//! with [`Ledger::begin`], so that its older holders are fenced out at once.

use opsfleet_protocol::ports::{Attrs, Cond, Item, Key, Store, StoreError, Update, OPEN_STATUS};
use opsfleet_protocol::Clock;
use opsfleet_protocol::Job;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Running, or waiting to be retried after a failure.
    InProgress,
    /// Started and waiting for completion checks.
    Pending,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled because its run passed `max_errors`.
    Cancelled,
    /// Not acted on: the resource opted out (`opsfleet:skip = true`).
    Skipped,
}

impl Status {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Pending => "PENDING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
            Status::Skipped => "SKIPPED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "IN_PROGRESS" => Status::InProgress,
            "PENDING" => Status::Pending,
            "SUCCEEDED" => Status::Succeeded,
            "FAILED" => Status::Failed,
            "CANCELLED" => Status::Cancelled,
            "SKIPPED" => Status::Skipped,
            _ => return None,
        })
    }

    /// Whether the job is finished for good.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled | Status::Skipped)
    }
}

/// What the ledger holds of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The status.
    pub status: Status,
    /// Attempts begun.
    pub attempts: u32,
    /// Real failures so far.
    pub failures: u32,
    /// The lock fence of the latest attempt.
    pub fence: i64,
    /// The key of the lock item its attempts take, once one began.
    pub lock: Option<String>,
    /// The error of the latest failure.
    pub error: Option<String>,
    /// The result summary.
    pub summary: Option<String>,
    /// Completion checks run.
    pub checks: u32,
    /// Whether the job was redriven from a DLQ (it runs even when its run was cancelled).
    pub redriven: bool,
    /// Whether the dead letter of its final failure or cancellation went out.
    pub dead_lettered: bool,
    /// Every attribute, for the audit trail.
    pub attrs: Attrs,
}

/// One attempt, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt's number (1 for the first; 0 for a cancellation).
    pub number: u32,
    /// Who ran it (`worker/job`).
    pub owner: String,
    /// The lock fence.
    pub fence: i64,
    /// When the lock was taken, Unix ms.
    pub locked_ms: u64,
    /// When the action started (every slot held), Unix ms.
    pub started_ms: u64,
    /// When the lock was released (or the work handed to a check), Unix ms.
    pub released_ms: u64,
    /// `SUCCEEDED`, `PENDING`, `FAILED`, `RETRY`, `CANCELLED`.
    pub outcome: String,
    /// The error, if any.
    pub error: Option<String>,
}

/// What beginning an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The attempt is recorded; its number.
    Started(u32),
    /// The job is already finished with this status.
    Finished(Status),
    /// The job is pending: its completion check carries it on.
    Pending,
    /// A newer holder owns the job record.
    Stale,
}

/// A run's counts, derived from its jobs' entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunRecord {
    /// Jobs succeeded.
    pub succeeded: u32,
    /// Jobs failed.
    pub failed: u32,
    /// Jobs cancelled.
    pub cancelled: u32,
    /// Jobs skipped.
    pub skipped: u32,
    /// Why the run was cancelled, if it was.
    pub cancelled_because: Option<String>,
}

/// The holder of a job's lock writing the job's record: its fence, whether its attempt was
/// begun with [`Ledger::begin`], and the attempt to record with the write.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The lock fence.
    pub fence: i64,
    /// Set to the holder's owner when the attempt was not begun: the write begins it too, under
    /// [`Ledger::begin`]'s condition (a new job, or one in progress under an older fence).
    pub unbegun: Option<&'a str>,
    /// The attempt to record in the job's audit trail.
    pub attempt: Option<&'a Attempt>,
    /// The key of the lock item the holder holds, recorded by a write that begins the attempt,
    /// so that the job's later attempts take the same item whatever its task's `lock` says by
    /// then.
    pub lock: Option<&'a str>,
}

impl From<i64> for Writer<'_> {
    /// A holder whose attempt was begun, recording no attempt.
    fn from(fence: i64) -> Self {
        Writer { fence, unbegun: None, attempt: None, lock: None }
    }
}

/// The ledger in one table.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
    clock: Clock,
    retention: Duration,
}

fn job_key(id: &str) -> Key {
    crate::table::job(id)
}

fn run_key(run: &str) -> Key {
    crate::table::run(run)
}

/// The condition of beginning an attempt under `fence`: the job never began, or is in
/// progress (retrying, or its last holder's lease lapsed) under an older fence. Fences are
/// unique per acquisition, so "older than mine" also refuses a retry of this very write, which
/// is then recognised by its fence and owner.
fn beginnable(fence: i64) -> Cond {
    Cond::Or(vec![
        Cond::Lacks("status".into()),
        Cond::And(vec![Cond::eq("status", Status::InProgress.as_str()), Cond::lt("fence", fence)]),
    ])
}

/// The chain of checks is at `checks` (a job that never had a check is at 0).
fn at_check(checks: u32) -> Cond {
    if checks == 0 {
        Cond::Or(vec![Cond::Lacks("checks".into()), Cond::eq("checks", 0i64)])
    } else {
        Cond::eq("checks", i64::from(checks))
    }
}

fn fenced(fence: i64) -> Cond {
    Cond::And(vec![
        Cond::eq("fence", fence),
        Cond::Or(vec![Cond::eq("status", Status::InProgress.as_str()), Cond::eq("status", Status::Pending.as_str())]),
    ])
}

impl Ledger {
    /// A ledger in a store; items expire `retention` after their last write.
    pub fn new(store: Arc<dyn Store>, clock: Clock, retention: Duration) -> Self {
        Ledger { store, clock, retention }
    }

    fn expires_at(&self) -> i64 {
        ((self.clock.now_ms() + self.retention.as_millis() as u64) / 1000) as i64
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// The record of a job, if any.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.store.get(&job_key(id)).await?.and_then(record))
    }

    /// The record of a job read eventually consistently (half a strong read's cost; may miss a
    /// write of the last second): a worker's look before it takes a job's lock, where a stale
    /// answer costs at most a run that the job's lock and fenced writes then settle.
    pub async fn peek_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.store.peek(&job_key(id)).await?.and_then(record))
    }

    /// What a job's first write sets besides its status: who runs it, under which fence, and
    /// what it is (the audit indexes' keys).
    fn started(&self, update: Update, job: &Job, holder: (&str, i64, Option<&str>), started_ms: i64) -> Update {
        let (owner, fence, lock) = holder;
        let update = match lock {
            Some(lock) => update.set("lock", lock),
            None => update,
        };
        update
            .set("task", job.task.as_str())
            .set("action", job.action.as_str())
            .set("resource", job.resource.key())
            .set("resource_id", job.resource.id.as_str())
            .set("event_id", job.event_id.as_str())
            .set("run", job.run_id())
            .set("received_ms", job.received_ms as i64)
            .set("owner", owner)
            .set("fence", fence)
            .set("started_ms", started_ms)
            .remove("checks")
            .remove("check_token")
            .remove("check_claimed_ms")
            .add("attempts", 1)
    }

    /// Records the start of an attempt by the holder of the job's lock with `fence`: only when
    /// the job never began, or is in progress (retrying, or its last holder's lease lapsed)
    /// under an older fence. A pending job never begins again: its completion check carries it
    /// on.
    ///
    /// `earlier` is an attempt of the job whose outcome was never recorded, as its lock kept it
    /// ([`remembered_json`]): it goes into the audit trail with this write, and is counted when it
    /// was not begun.
    pub async fn begin(
        &self,
        job: &Job,
        owner: &str,
        fence: i64,
        earlier: Option<&str>,
        lock: Option<&str>,
    ) -> Result<Begin, StoreError> {
        let mut update =
            self.started(Update::default(), job, (owner, fence, lock), self.now()).set("expires_at", self.expires_at());
        if let Some((attempt, counted)) = earlier.and_then(remembered) {
            update = update.set(&attempt_attribute(&attempt), attempt_json(&attempt));
            if !counted {
                update = update.add("attempts", 1);
            }
        }
        let update = with_status(update, Status::InProgress);
        match self.store.update(&job_key(&job.id), update, beginnable(fence)).await {
            Ok(item) => Ok(Begin::Started(item.int("attempts").unwrap_or(1) as u32)),
            Err(StoreError::ConditionFailed { current, .. }) => {
                let current = match current {
                    Some(item) => record(*item),
                    None => self.job(&job.id).await?,
                };
                Ok(match current {
                    Some(r)
                        if r.status == Status::InProgress
                            && r.fence == fence
                            && r.attrs.get("owner") == Some(&owner.into()) =>
                    {
                        Begin::Started(r.attempts)
                    }
                    Some(r) if r.status.is_final() => Begin::Finished(r.status),
                    Some(r) if r.status == Status::Pending => Begin::Pending,
                    _ => Begin::Stale,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The update and condition of a writer's write: a begun attempt's writes are fenced on its
    /// fence; an unbegun one's begin it too, under [`Ledger::begin`]'s condition. The attempt,
    /// if any, goes into the same write.
    fn written_by(&self, job: &Job, writer: &Writer<'_>, update: Update, also: Option<Cond>) -> (Update, Cond) {
        let mut update = update;
        if let Some(attempt) = writer.attempt {
            update = update.set(&attempt_attribute(attempt), attempt_json(attempt));
        }
        let (update, cond) = match writer.unbegun {
            None => (update, fenced(writer.fence)),
            Some(owner) => {
                // The action started before this write: the attempt says when.
                let started_ms = writer.attempt.map_or_else(|| self.now(), |a| a.started_ms as i64);
                (self.started(update, job, (owner, writer.fence, writer.lock), started_ms), beginnable(writer.fence))
            }
        };
        match also {
            Some(also) => (update, Cond::And(vec![cond, also])),
            None => (update, cond),
        }
    }

    /// Moves a pending job whose leases lapsed (its check came late) to a new holder, so that
    /// its checks go on under the new fence from the recorded state; false when the job is no
    /// longer pending under the old fence.
    pub async fn adopt(&self, job: &Job, old_fence: i64, new_fence: i64, owner: &str) -> Result<bool, StoreError> {
        let update = Update::default().set("fence", new_fence).set("owner", owner).set("expires_at", self.expires_at());
        let cond = Cond::And(vec![Cond::eq("status", Status::Pending.as_str()), Cond::eq("fence", old_fence)]);
        match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(_) => Ok(true),
            // A retried write whose first try went through.
            Err(StoreError::ConditionFailed { current: Some(item), .. }) => {
                Ok(item.int("fence") == Some(new_fence) && item.str("owner") == Some(owner))
            }
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks the job pending completion checks, keeping the check state and the token of the
    /// check just sent (`next`); false when the fence is no longer current.
    ///
    /// The write is pinned to the chain's position: `checks` (the checks run so far) and, for
    /// a check's outcome, the token of the link that ran (`ran`). A late SDK retry of this write
    /// that lands after the next check began is refused instead of setting the chain back.
    pub async fn pending<'a>(
        &self,
        job: &Job,
        writer: impl Into<Writer<'a>>,
        state: &Value,
        checks: u32,
        ran: Option<&str>,
        next: &str,
    ) -> Result<bool, StoreError> {
        let writer = writer.into();
        let update = with_status(Update::default(), Status::Pending)
            .set("state", state.to_string())
            .set("checks", i64::from(checks))
            .set("check_token", next)
            .set("check_claimed_ms", 0i64)
            .set("expires_at", self.expires_at());
        let mut pins = vec![at_check(checks)];
        if let Some(ran) = ran {
            pins.push(Cond::eq("check_token", ran));
        }
        let (update, cond) = self.written_by(job, &writer, update, Some(Cond::And(pins)));
        match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(_) => Ok(true),
            // A retried write whose first try went through, or one the chain has moved past
            // under this very fence (its check came first): either way the chain is this
            // holder's, carried on by the check just sent or the one that moved it on.
            Err(StoreError::ConditionFailed { current: Some(item), .. }) => Ok(item.int("fence") == Some(writer.fence)
                && writer.unbegun.is_none_or(|owner| item.str("owner") == Some(owner))),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Counts a real failure; returns the failures so far, or `None` when the fence is no
    /// longer current.
    ///
    /// `step` names the step that failed (`start/<attempt>`, `check/<n>`): a failure is
    /// counted once per step, so a write the SDK retried after its first try went through
    /// does not count twice.
    pub async fn failure<'a>(
        &self,
        job: &Job,
        writer: impl Into<Writer<'a>>,
        error: &str,
        step: &str,
    ) -> Result<Option<u32>, StoreError> {
        let writer = writer.into();
        let fence = writer.fence;
        // The status stays: IN_PROGRESS for a start, PENDING for a check.
        let mut update = Update::default()
            .set("error", error)
            .set("failed_step", step)
            .set("expires_at", self.expires_at())
            .add("failures", 1);
        if writer.unbegun.is_some() {
            update = with_status(update, Status::InProgress);
        }
        if step.starts_with("check/") {
            // The check is over: its claim no longer holds off the next one.
            update = update.set("check_claimed_ms", 0i64);
        }
        let (update, cond) = self.written_by(job, &writer, update, Some(Cond::missing_or_not("failed_step", step)));
        match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(item) => Ok(Some(item.int("failures").unwrap_or(1) as u32)),
            Err(StoreError::ConditionFailed { current: Some(item), .. })
                if item.int("fence") == Some(fence) && item.str("failed_step") == Some(step) =>
            {
                Ok(Some(item.int("failures").unwrap_or(1) as u32))
            }
            Err(StoreError::ConditionFailed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finishes the job with a final status and its summary or error; false when the fence
    /// is no longer current.
    ///
    /// A failed or cancelled job also gets an entry in its run (`run#<run>` / `job#<id>`, with
    /// the status), from which `max_errors` counts the run's failures. It is written first, so a
    /// crash between the two writes leaves an unfinished job that runs again, never a failure
    /// the run does not count; an entry whose job then succeeded is not counted (the job's
    /// record is the truth). Both writes are idempotent and fenced. A job that succeeds or is
    /// skipped is found in its run through the `by-run` index instead, at no extra write.
    pub async fn finish<'a>(
        &self,
        job: &Job,
        writer: impl Into<Writer<'a>>,
        status: Status,
        text: &str,
    ) -> Result<bool, StoreError> {
        let writer = writer.into();
        let fence = writer.fence;
        if matches!(status, Status::Failed | Status::Cancelled) {
            let mut attrs = Attrs::new();
            attrs.insert("resource".into(), job.resource.key().into());
            attrs.insert("status".into(), status.as_str().into());
            attrs.insert("fence".into(), fence.into());
            attrs.insert("finished_ms".into(), self.now().into());
            attrs.insert("expires_at".into(), self.expires_at().into());
            let entry = Item { key: crate::table::run_entry(&job.run_id(), &job.id), attrs };
            let not_newer = Cond::Or(vec![Cond::Lacks("fence".into()), Cond::Le("fence".into(), fence.into())]);
            match self.store.put(entry, not_newer).await {
                Ok(()) => {}
                Err(StoreError::ConditionFailed { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let field = if matches!(status, Status::Succeeded | Status::Skipped) { "summary" } else { "error" };
        let update = with_status(Update::default(), status)
            .set(field, text)
            .set("finished_ms", self.now())
            .set("expires_at", self.expires_at())
            .remove("state");
        let (update, cond) = self.written_by(job, &writer, update, None);
        match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(_) => Ok(true),
            // A retried write whose first try went through.
            Err(StoreError::ConditionFailed { current: Some(item), .. }) => {
                Ok(item.int("fence") == Some(fence) && item.str("status") == Some(status.as_str()))
            }
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reopens a job that failed for good or was cancelled, so that it runs again when it is
    /// redriven from the DLQ (a redriven job of a cancelled run runs); false when it is
    /// neither.
    pub async fn reopen(&self, job_id: &str) -> Result<bool, StoreError> {
        let update = with_status(Update::default(), Status::InProgress)
            .set("failures", 0i64)
            .set("redriven", true)
            .set("expires_at", self.expires_at())
            .remove("error")
            .remove("dead_lettered")
            .remove("finished_ms")
            .remove("checks")
            .remove("check_token")
            .remove("check_claimed_ms")
            .remove("state");
        let cond =
            Cond::Or(vec![Cond::eq("status", Status::Failed.as_str()), Cond::eq("status", Status::Cancelled.as_str())]);
        match self.store.update(&job_key(job_id), update, cond).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records that the dead letter of a job that ended under `fence` went out.
    pub async fn dead_lettered(&self, job_id: &str, fence: i64) -> Result<(), StoreError> {
        let update = Update::default().set("dead_lettered", fence);
        match self.store.update(&job_key(job_id), update, Cond::eq("fence", fence)).await {
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The same ledger with another wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The jobs of a secondary index's key (a resource id, a task, an open status), newest
    /// first by when their event arrived, at least `since_ms` when given, as they are now.
    pub async fn jobs_by(
        &self,
        index: opsfleet_protocol::ports::Index,
        value: &str,
        since_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, JobRecord)>, StoreError> {
        let query = opsfleet_protocol::ports::IndexQuery {
            index,
            value: value.to_owned(),
            since: since_ms.map(|s| s as i64),
            limit,
        };
        let mut jobs = Vec::new();
        for key in self.store.query_index(&query).await? {
            let Some(id) = crate::table::job_id(&key) else { continue };
            // The index holds keys only, and may be a moment behind: the item says what is now.
            if let Some(record) = self.store.get(&key).await?.and_then(record) {
                jobs.push((id.to_owned(), record));
            }
        }
        Ok(jobs)
    }

    /// Cancels a job of a cancelled run, as the holder of its lock, recording `attempt`.
    pub async fn cancel(
        &self,
        job: &Job,
        owner: &str,
        fence: i64,
        reason: &str,
        attempt: &Attempt,
    ) -> Result<bool, StoreError> {
        let writer = Writer { fence, unbegun: Some(owner), attempt: Some(attempt), lock: None };
        self.finish(job, writer, Status::Cancelled, reason).await
    }
}

fn record(item: Item) -> Option<JobRecord> {
    let status = Status::parse(item.str("status")?)?;
    Some(JobRecord {
        status,
        attempts: item.int("attempts").unwrap_or(0) as u32,
        failures: item.int("failures").unwrap_or(0) as u32,
        fence: item.int("fence").unwrap_or(0),
        lock: item.str("lock").map(str::to_owned),
        error: item.str("error").map(str::to_owned),
        summary: item.str("summary").map(str::to_owned),
        checks: item.int("checks").unwrap_or(0) as u32,
        redriven: matches!(item.attrs.get("redriven"), Some(opsfleet_protocol::ports::AttrValue::Bool(true))),
        dead_lettered: item.int("dead_lettered").is_some_and(|f| Some(f) == item.int("fence")),
        attrs: item.attrs,
    })
}

mod attempts;
mod checks;
mod runs;
#[cfg(test)]
mod tests;

pub(crate) use attempts::{attempt_attribute, attempt_json, remembered, remembered_json};
pub use checks::{CheckLink, Checked};
pub use runs::ramped;

/// Sets a job's status, and its [`OPEN_STATUS`] (the sparse `by-status` index's key) while it
/// is not done well.
fn with_status(update: Update, status: Status) -> Update {
    let update = update.set("status", status.as_str());
    if matches!(status, Status::Succeeded | Status::Skipped) {
        update.remove(OPEN_STATUS)
    } else {
        update.set(OPEN_STATUS, status.as_str())
    }
}
