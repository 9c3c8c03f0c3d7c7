//! Pure types and logic of opsfleet, with no I/O: events in, tasks and config, EventBridge
//! pattern matching, the resources an event names, jobs out, partitioning, and the ports
//! (traits) through which the router and workers reach queues and the store.

pub mod approval;
pub mod clock;
pub mod config;
pub mod dead_letter;
pub mod event;
pub mod halt;
pub mod job;
pub mod liveness;
pub mod names;
pub mod pattern;
pub mod plan;
pub mod ports;
pub mod resource;
pub mod setup;
pub mod template;

pub use clock::Clock;
pub use config::{Config, ConfigError, Problem};
pub use dead_letter::DeadLetter;
pub use event::{Event, EventError};
pub use job::{Job, JobError};
pub use pattern::{Pattern, PatternError, PatternSet};
pub use plan::{Plan, PlanError, Planner};
pub use resource::{Resource, ResourceType};
