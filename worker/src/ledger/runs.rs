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

    /// Counts a job of a ramping run that finished well (succeeded or skipped): its run's
    /// concurrency grows with these ([`ramped`]).
    pub async fn run_finished_well(&self, run: &str) -> Result<(), StoreError> {
        let update = Update::default().add("finished_well", 1).set("expires_at", self.expires_at());
        self.store.update(&run_key(run), update, Cond::Always).await.map(|_| ())
    }

    /// The jobs of a run that finished well so far, as counted by [`Ledger::run_finished_well`]
    /// (eventually consistent: a ramp may lag a job behind for a second).
    pub async fn run_finished_well_count(&self, run: &str) -> Result<u32, StoreError> {
        Ok(self.store.peek(&run_key(run)).await?.and_then(|i| i.int("finished_well")).unwrap_or(0).max(0) as u32)
    }

    /// Why a run was cancelled in one location (`account/region`), or as a whole.
    pub async fn run_cancelled_in(&self, run: &str, location: &str) -> Result<Option<String>, StoreError> {
        let item = self.store.get(&run_key(run)).await?;
        Ok(item.and_then(|i| {
            i.str("cancelled_because").or_else(|| i.str(&format!("cancelled_in@{location}"))).map(str::to_owned)
        }))
    }

    /// Counts job `job` of a run as failed in a location, once: the count goes up in the same
    /// conditional write that marks the job counted, so a write the SDK sends again after it was
    /// applied, or a second delivery, counts nothing twice. Past `max` there, cancels the run's
    /// jobs in that location (once) and returns the reason.
    pub async fn location_failed(
        &self,
        run: &str,
        job: &str,
        location: &str,
        max: u32,
    ) -> Result<Option<String>, StoreError> {
        let counter = format!("failed_in@{location}");
        let marker = format!("failed_job@{job}");
        let update = Update::default().add(&counter, 1).set(&marker, true).set("expires_at", self.expires_at());
        let item = match self.store.update(&run_key(run), update, Cond::Lacks(marker)).await {
            Ok(item) => item,
            Err(StoreError::ConditionFailed { current: Some(item), .. }) => *item,
            Err(StoreError::ConditionFailed { current: None, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let failed = item.int(&counter).unwrap_or(0);
        if failed <= i64::from(max) {
            return Ok(None);
        }
        let reason = format!("run failed {failed} jobs in {location}, over max_errors_per_location = {max}");
        let cancel = Update::default().set(&format!("cancelled_in@{location}"), reason.as_str());
        match self.store.update(&run_key(run), cancel, Cond::Lacks(format!("cancelled_in@{location}"))).await {
            Ok(_) => Ok(Some(reason)),
            Err(StoreError::ConditionFailed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
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

/// The concurrency a ramping run of at most `max` jobs at once may have after `done` of its
/// jobs finished well: 1, then 2 after one, 4 after three, 8 after seven (doubling each time
/// the jobs run so far all finished well), up to `max`.
pub fn ramped(max: u32, done: u32) -> u32 {
    let allowed = 1u32 << (u32::BITS - 1 - (done.saturating_add(1)).leading_zeros()).min(31);
    allowed.min(max).max(1)
}

#[cfg(test)]
mod ramp_tests {
    use super::ramped;

    #[test]
    fn ramps_one_two_then_doubling_up_to_max() {
        let seq: Vec<u32> = (0..16).map(|done| ramped(10, done)).collect();
        assert_eq!(seq, [1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 10]);
        assert_eq!(ramped(1, 100), 1);
        assert_eq!(ramped(u32::MAX, u32::MAX), 1 << 31);
    }
}
