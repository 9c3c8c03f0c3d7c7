//! The router: events in, partitioned per-resource jobs out.
//!
//! It long-polls `<name>-events`, normalizes each body into an event, checks the account,
//! matches every task, expands matched tasks into one job per resource (the resources the
//! event names, or a discovery), and sends the jobs in batches to `<name>-jobs-<p>.fifo`
//! (group id = resource key, deduplication id = job id), ten to a request across the events
//! being routed (a batch waits at most 10 ms to fill). The input message is deleted only
//! after every job of it was accepted. Bodies that are not events, and events the fleet must
//! not act on, go to `<name>-events-dlq` at once with the reason as a message attribute.

mod approving;
mod asg_discovery;
mod aws_discovery;
mod batcher;
mod blast_radius;
mod discovery;
mod discovery_retry;
mod ec2_discovery;
mod halting;
mod ingest;
mod inventory;
mod tagged_discovery;
mod telemetry;

pub use asg_discovery::AsgDiscovery;
pub use aws_discovery::AwsDiscovery;
pub use discovery::{search_places, Discover, Discovered, DiscoveryError, NoDiscovery, PlaceFailed};
pub use discovery_retry::{DiscoveryRetry, DISCOVERY_RETRIES};
pub use ec2_discovery::Ec2Discovery;
pub use ingest::{Outcome, Router, RouterError};
pub use inventory::{InventoryItem, StaticInventory};
pub use tagged_discovery::TaggedDiscovery;
