//! The fleet's table, item by item: every key the worker, the ledger and the CLI read or write
//! is made here, so the layout is in one place.
//!
//! | partition key | sort key | what |
//! |---|---|---|
//! | `job#<job id>` | `job` | a job's record: status, fence, attempts (`ledger`) |
//! | `job#<job id>` | `attempt#…` | an attempt of the older layout, read by the audit (`ledger`) |
//! | `run#<run id>` | `run` | a run's cancellation, and its per-location failures and the jobs that finished well (`ledger`) |
//! | `run#<run id>` | `job#<job id>` | a failed or cancelled job of the run, which `max_errors` counts (`ledger`) |
//! | `lock#<lock key>` | `lease` | a resource lock (`lease`) |
//! | `slot#<limit>#<pool>` | `<index>` | a slot of a limit's pool, or of a run's `max_concurrency` (`lease`) |
//! | `fleet` | `<role>#<id>` | a process's heartbeat (`presence`) |
//! | `halts` | `<task>#alarm#<alarm>`, `<task>#hand` | a task's halt by an alarm or by hand (`opsfleet_protocol::halt`) |
//! | `approvals` | `<run id>`, `<run id>.<step>` | a run's approval request and decision (`opsfleet_protocol::approval`) |
//!
//! The secondary indexes over job records (`by-resource`, `by-task`, `by-status`, `by-run`) are
//! declared with the store port (`opsfleet_protocol::ports::INDEXES`).

use opsfleet_protocol::ports::Key;

/// The sort key of a job's record.
const JOB_SK: &str = "job";

/// The sort key of a run's own item.
const RUN_SK: &str = "run";

/// The prefix of job items' partition keys (and of a run's entries' sort keys).
pub const JOB_PREFIX: &str = "job#";

/// The prefix of the sort keys of attempts kept as items of their own (an older layout).
pub const ATTEMPT_PREFIX: &str = "attempt#";

/// The partition key of the processes' heartbeats.
pub const PRESENCE_PK: &str = "fleet";

/// The record of a job.
pub fn job(id: &str) -> Key {
    Key::new(format!("{JOB_PREFIX}{id}"), JOB_SK)
}

/// The job id of a job record's key, if it is one.
pub fn job_id(key: &Key) -> Option<&str> {
    key.pk.strip_prefix(JOB_PREFIX).filter(|_| key.sk == JOB_SK)
}

/// The partition key of a run's items.
pub fn run_pk(run: &str) -> String {
    format!("run#{run}")
}

/// A run's own item (its cancellation).
pub fn run(run: &str) -> Key {
    Key::new(run_pk(run), RUN_SK)
}

/// A run's entry for one of its jobs.
pub fn run_entry(run: &str, job_id: &str) -> Key {
    Key::new(run_pk(run), format!("{JOB_PREFIX}{job_id}"))
}

/// The partition key of a lock.
pub fn lock(key: &str) -> String {
    format!("lock#{key}")
}

/// The partition key of a limit's pool: its slots are the items under it, by index.
pub fn pool(limit: &str, pool: &str) -> String {
    format!("slot#{limit}#{pool}")
}

/// A process's heartbeat item.
pub fn presence(role: &str, id: &str) -> Key {
    Key::new(PRESENCE_PK, format!("{role}#{id}"))
}
