//! Runs (one per event and task): their jobs, their counts, their cancellation.

use super::{run_key, Ledger, RunRecord, Status};
use crate::table;
use opsfleet_protocol::ports::{Cond, Index, IndexQuery, StoreError, Update, INDEXES};
use std::collections::BTreeSet;

/// The index of jobs by run.
const BY_RUN: Index = INDEXES[3];

/// The most jobs of one run listed (a run is one event's jobs of one task, bounded by the
/// router's cap per event).
const MAX_RUN_JOBS: usize = 100_000;

impl Ledger {
    /// The counts of a run, derived from its jobs' records (so they cannot drift from the
    /// jobs), and whether it was cancelled.
    pub async fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        let mut counts = RunRecord { cancelled_because: self.run_cancelled(run).await?, ..RunRecord::default() };
        for id in self.run_jobs(run).await? {
            match self.job(&id).await?.map(|r| r.status) {
                Some(Status::Succeeded) => counts.succeeded += 1,
                Some(Status::Failed) => counts.failed += 1,
                Some(Status::Cancelled) => counts.cancelled += 1,
                Some(Status::Skipped) => counts.skipped += 1,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// The jobs of a run that failed for good, from the run's entries (strongly consistent),
    /// each confirmed by the job's record: an entry whose job ran again and succeeded after a
    /// crash is not counted.
    pub async fn run_failures(&self, run: &str) -> Result<u32, StoreError> {
        let mut failed = 0;
        for entry in self.store.query_prefix(&table::run_pk(run), table::JOB_PREFIX).await? {
            if entry.str("status") != Some(Status::Failed.as_str()) {
                continue;
            }
            let Some(id) = entry.key.sk.strip_prefix(table::JOB_PREFIX) else { continue };
            if self.job(id).await?.is_some_and(|r| r.status == Status::Failed) {
                failed += 1;
            }
        }
        Ok(failed)
    }

    /// The ids of the jobs of a run that have an outcome: its entries (failed and cancelled
    /// jobs), and the `by-run` index (every job with a record; eventually consistent, so a
    /// job finished in the last second may be missing).
    pub async fn run_jobs(&self, run: &str) -> Result<Vec<String>, StoreError> {
        let mut ids: BTreeSet<String> = self
            .store
            .query_prefix(&table::run_pk(run), table::JOB_PREFIX)
            .await?
            .into_iter()
            .filter_map(|i| i.key.sk.strip_prefix(table::JOB_PREFIX).map(str::to_owned))
            .collect();
        let query = IndexQuery { index: BY_RUN, value: run.to_owned(), since: None, limit: MAX_RUN_JOBS };
        for key in self.store.query_index(&query).await? {
            if let Some(id) = table::job_id(&key) {
                ids.insert(id.to_owned());
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Whether a run was cancelled, and why.
    pub async fn run_cancelled(&self, run: &str) -> Result<Option<String>, StoreError> {
        Ok(self.store.get(&run_key(run)).await?.and_then(|i| i.str("cancelled_because").map(str::to_owned)))
    }

    /// Cancels a run (once) with a reason.
    pub async fn cancel_run(&self, run: &str, reason: &str) -> Result<(), StoreError> {
        let update = Update::default().set("cancelled_because", reason).set("expires_at", self.expires_at());
        match self.store.update(&run_key(run), update, Cond::Lacks("cancelled_because".into())).await {
            Ok(_) | Err(StoreError::ConditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
