//! The worker: jobs in, effects out, exactly once in effect, under DynamoDB lease locks and
//! fleet-wide limits, with an idempotent ledger, completion checks and graceful shutdown.
//!
//! The [`Consumer`] polls every job partition and the checks queue; the [`Worker`] runs one
//! message: ledger check, lock, slots, the action, the outcome. Actions (`actions/`) only say
//! what to do to one resource.

mod acker;
pub mod actions;
mod check;
mod consume;
pub mod lease;
pub mod ledger;
pub mod presence;
pub mod redrive;
mod runner;
pub mod sampler;
pub mod table;
pub mod task_protection;
mod telemetry;

pub use actions::{Action, ActionContext, ActionRegistry, AnyAction, Step};
pub use check::CheckMessage;
pub use consume::{ConsumeSummary, Consumer};
pub use runner::{Disposition, Worker, WorkerError, PENDING_SLACK};
pub use sampler::Sampler;
