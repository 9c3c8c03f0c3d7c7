//! Load generator for opsfleet: the pieces of the `opsfleet-loadtest` binary.
//!
//! The binary pushes generated CloudWatch alarm events through the router and workers on the
//! embedded backend with `noop` actions, and reports jobs/s and event→start latency against
//! the raw throughput of one embedded FIFO queue measured in the same run.
//!
//! - [`events`]: the generated events, the fleet config, the expected job ids;
//! - [`completion`]: waiting until every job succeeded, and reading latencies from the ledger;
//! - [`baseline`]: the raw queue throughput on the same job messages;
//! - [`report`]: the figures as text or JSON.

pub mod baseline;
pub mod completion;
pub mod events;
pub mod report;
