//! The ledger, the audit trail: a `job#<id>` item per job whose status moves with conditional
//! writes fenced by the job's lock, an `attempt#NNNN` item per attempt under it, and a
//! `run#<id>` item per (event, task) counting outcomes.

use crate::clock::Clock;
use opsfleet_protocol::ports::{Attrs, Cond, Item, Key, Store, StoreError, Update, OPEN_STATUS};
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

/// The ledger in one table.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
    clock: Clock,
    retention: Duration,
}

fn job_key(id: &str) -> Key {
    Key::new(format!("job#{id}"), "job")
}

fn run_key(run: &str) -> Key {
    Key::new(format!("run#{run}"), "run")
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

    /// Records the start of an attempt by the holder of the job's lock with `fence`: only when
    /// the job never began, or is in progress (retrying, or its last holder's lease lapsed)
    /// under this fence or an older one. A pending job never begins again: its completion
    /// check carries it on.
    pub async fn begin(&self, job: &Job, owner: &str, fence: i64) -> Result<Begin, StoreError> {
        let update = Update::default()
            .set("task", job.task.as_str())
            .set("action", job.action.as_str())
            .set("resource", job.resource.key())
            .set("resource_id", job.resource.id.as_str())
            .set("event_id", job.event_id.as_str())
            .set("run", job.run_id())
            .set("received_ms", job.received_ms as i64)
            .set("owner", owner)
            .set("fence", fence)
            .set("started_ms", self.now())
            .set("expires_at", self.expires_at())
            .add("attempts", 1);
        let update = with_status(update, Status::InProgress);
        // Fences are unique per acquisition, so "older than mine" also refuses a retry of this
        // very write, which is then recognised by its fence and owner.
        let cond = Cond::Or(vec![
            Cond::Lacks("status".into()),
            Cond::And(vec![Cond::eq("status", Status::InProgress.as_str()), Cond::lt("fence", fence)]),
        ]);
        match self.store.update(&job_key(&job.id), update, cond).await {
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

    /// Marks the job pending completion checks, keeping the check state; false when the fence
    /// is no longer current.
    pub async fn pending(&self, job: &Job, fence: i64, state: &Value, checks: u32) -> Result<bool, StoreError> {
        let update = with_status(Update::default(), Status::Pending)
            .set("state", state.to_string())
            .set("checks", i64::from(checks))
            .set("expires_at", self.expires_at());
        self.fenced(job, fence, update).await
    }

    /// Counts a real failure; returns the failures so far, or `None` when the fence is no
    /// longer current.
    ///
    /// `step` names the step that failed (`start/<attempt>`, `check/<n>`): a failure is
    /// counted once per step, so a write the SDK retried after its first try went through
    /// does not count twice.
    pub async fn failure(&self, job: &Job, fence: i64, error: &str, step: &str) -> Result<Option<u32>, StoreError> {
        // The status stays: IN_PROGRESS for a start, PENDING for a check.
        let update = Update::default()
            .set("error", error)
            .set("failed_step", step)
            .set("expires_at", self.expires_at())
            .add("failures", 1);
        let cond = Cond::And(vec![fenced(fence), Cond::missing_or_not("failed_step", step)]);
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
    /// The job's entry in its run (`run#<run>` / `job#<id>`, with the status, from which the
    /// run's counts are derived) is written first, so a crash between the two writes leaves
    /// an unfinished job that runs again and writes both, never a count without its job or
    /// a job without its count. Both writes are idempotent and fenced.
    pub async fn finish(&self, job: &Job, fence: i64, status: Status, text: &str) -> Result<bool, StoreError> {
        let mut attrs = Attrs::new();
        attrs.insert("resource".into(), job.resource.key().into());
        attrs.insert("status".into(), status.as_str().into());
        attrs.insert("fence".into(), fence.into());
        attrs.insert("finished_ms".into(), self.now().into());
        attrs.insert("expires_at".into(), self.expires_at().into());
        let entry = Item { key: Key::new(format!("run#{}", job.run_id()), format!("job#{}", job.id)), attrs };
        let not_newer = Cond::Or(vec![Cond::Lacks("fence".into()), Cond::Le("fence".into(), fence.into())]);
        match self.store.put(entry, not_newer).await {
            Ok(()) => {}
            Err(StoreError::ConditionFailed { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        let field = if matches!(status, Status::Succeeded | Status::Skipped) { "summary" } else { "error" };
        let update = with_status(Update::default(), status)
            .set(field, text)
            .set("finished_ms", self.now())
            .set("expires_at", self.expires_at())
            .remove("state");
        match self.store.update(&job_key(&job.id), update, fenced(fence)).await {
            Ok(_) => Ok(true),
            // A retried write whose first try went through.
            Err(StoreError::ConditionFailed { current: Some(item), .. }) => {
                Ok(item.int("fence") == Some(fence) && item.str("status") == Some(status.as_str()))
            }
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records that check number `next` runs, only when the previous one was `previous`, or
    /// when this very check message (`token`) recorded it already and comes again: a
    /// duplicated check message cannot fork the chain of checks, and a handed-back one goes on.
    pub async fn checked(
        &self,
        job: &Job,
        fence: i64,
        previous: u32,
        next: u32,
        token: &str,
    ) -> Result<bool, StoreError> {
        let mut same = vec![
            Cond::eq("checks", i64::from(previous)),
            Cond::And(vec![Cond::eq("checks", i64::from(next)), Cond::eq("check_token", token)]),
        ];
        if previous == 0 {
            same.push(Cond::Lacks("checks".into()));
        }
        let cond = Cond::And(vec![fenced(fence), Cond::Or(same)]);
        let update = Update::default().set("checks", i64::from(next)).set("check_token", token);
        match self.store.update(&job_key(&job.id), update, cond).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn fenced(&self, job: &Job, fence: i64, update: Update) -> Result<bool, StoreError> {
        match self.store.update(&job_key(&job.id), update, fenced(fence)).await {
            Ok(_) => Ok(true),
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
            .remove("finished_ms");
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

    /// Records one attempt under the job.
    pub async fn attempt(&self, job_id: &str, number: u32, attempt: &Attempt) -> Result<(), StoreError> {
        let mut attrs = Attrs::new();
        attrs.insert("owner".into(), attempt.owner.as_str().into());
        attrs.insert("fence".into(), attempt.fence.into());
        attrs.insert("locked_ms".into(), (attempt.locked_ms as i64).into());
        attrs.insert("started_ms".into(), (attempt.started_ms as i64).into());
        attrs.insert("released_ms".into(), (attempt.released_ms as i64).into());
        attrs.insert("outcome".into(), attempt.outcome.as_str().into());
        attrs.insert("expires_at".into(), self.expires_at().into());
        if let Some(error) = &attempt.error {
            attrs.insert("error".into(), error.as_str().into());
        }
        let key = Key::new(format!("job#{job_id}"), format!("attempt#{number:04}#{}", attempt.fence));
        self.store.put(Item { key, attrs }, Cond::Always).await
    }

    /// Every attempt of a job, in order.
    pub async fn attempts(&self, job_id: &str) -> Result<Vec<Attempt>, StoreError> {
        Ok(self
            .store
            .query_prefix(&format!("job#{job_id}"), "attempt#")
            .await?
            .into_iter()
            .map(|i| Attempt {
                owner: i.str("owner").unwrap_or_default().to_owned(),
                fence: i.int("fence").unwrap_or(0),
                locked_ms: i.int("locked_ms").unwrap_or(0).max(0) as u64,
                started_ms: i.int("started_ms").unwrap_or(0).max(0) as u64,
                released_ms: i.int("released_ms").unwrap_or(0).max(0) as u64,
                outcome: i.str("outcome").unwrap_or_default().to_owned(),
                error: i.str("error").map(str::to_owned),
            })
            .collect())
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
            let Some(id) = key.pk.strip_prefix("job#").filter(|_| key.sk == "job") else { continue };
            // The index holds keys only, and may be a moment behind: the item says what is now.
            if let Some(record) = self.store.get(&key).await?.and_then(record) {
                jobs.push((id.to_owned(), record));
            }
        }
        Ok(jobs)
    }

    /// The counts of a run, derived from its jobs' entries (so they cannot drift from the
    /// jobs), and whether it was cancelled.
    pub async fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        let mut counts = RunRecord {
            cancelled_because: self
                .store
                .get(&run_key(run))
                .await?
                .and_then(|i| i.str("cancelled_because").map(str::to_owned)),
            ..RunRecord::default()
        };
        for entry in self.store.query_prefix(&format!("run#{run}"), "job#").await? {
            match entry.str("status").and_then(Status::parse) {
                Some(Status::Succeeded) => counts.succeeded += 1,
                Some(Status::Failed) => counts.failed += 1,
                Some(Status::Cancelled) => counts.cancelled += 1,
                Some(Status::Skipped) => counts.skipped += 1,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Whether a run was cancelled, and why.
    pub async fn run_cancelled(&self, run: &str) -> Result<Option<String>, StoreError> {
        Ok(self.store.get(&run_key(run)).await?.and_then(|i| i.str("cancelled_because").map(str::to_owned)))
    }

    /// The ids of the jobs of a run that have finished.
    pub async fn run_jobs(&self, run: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .query_prefix(&format!("run#{run}"), "job#")
            .await?
            .into_iter()
            .filter_map(|i| i.key.sk.strip_prefix("job#").map(str::to_owned))
            .collect())
    }

    /// Cancels a run (once) with a reason.
    pub async fn cancel_run(&self, run: &str, reason: &str) -> Result<(), StoreError> {
        let update = Update::default().set("cancelled_because", reason).set("expires_at", self.expires_at());
        match self.store.update(&run_key(run), update, Cond::Lacks("cancelled_because".into())).await {
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancels a job of a cancelled run, as the holder of its lock.
    pub async fn cancel(&self, job: &Job, owner: &str, fence: i64, reason: &str) -> Result<bool, StoreError> {
        match self.begin(job, owner, fence).await? {
            Begin::Started(_) => self.finish(job, fence, Status::Cancelled, reason).await,
            _ => Ok(false),
        }
    }
}

fn record(item: Item) -> Option<JobRecord> {
    let status = Status::parse(item.str("status")?)?;
    Some(JobRecord {
        status,
        attempts: item.int("attempts").unwrap_or(0) as u32,
        failures: item.int("failures").unwrap_or(0) as u32,
        fence: item.int("fence").unwrap_or(0),
        error: item.str("error").map(str::to_owned),
        summary: item.str("summary").map(str::to_owned),
        checks: item.int("checks").unwrap_or(0) as u32,
        redriven: matches!(item.attrs.get("redriven"), Some(opsfleet_protocol::ports::AttrValue::Bool(true))),
        dead_lettered: item.int("dead_lettered").is_some_and(|f| Some(f) == item.int("fence")),
        attrs: item.attrs,
    })
}

#[cfg(test)]
mod tests;

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
