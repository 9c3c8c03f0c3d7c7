//! Load generator for opsfleet: the pieces of the `opsfleet-loadtest` binary.
//!
//! The binary pushes generated CloudWatch alarm events through the router and workers (on the
//! embedded backend, or on SQS and DynamoDB endpoints) with `noop` actions, and reports jobs/s,
//! latencies and requests per job against a baseline measured in the same run.
//!
//! - [`events`]: the generated events, the fleet config, the expected job ids;
//! - [`generator`]: sending the events, all at once or open loop at a fixed rate;
//! - [`completion`]: waiting until every job succeeded, and reading latencies from the ledger;
//! - [`baseline`]: the raw embedded queue throughput on the same job messages;
//! - [`sdk_baseline`]: the bare-SDK minimum of an exactly-once worker on the wire;
//! - [`counting`]: a layer around any backend counting its calls, for the requests per job;
//! - [`report`]: the figures as text or JSON.

pub mod baseline;
pub mod completion;
pub mod counting;
pub mod events;
pub mod generator;
pub mod report;
pub mod sdk_baseline;
