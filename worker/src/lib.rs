//! The worker: jobs in, effects out, exactly once in effect, under DynamoDB lease locks and
//! fleet-wide limits, with an idempotent ledger, completion checks and graceful shutdown.

pub mod actions;

pub use actions::{Action, ActionContext, ActionRegistry, Step};
