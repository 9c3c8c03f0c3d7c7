//! Adapters behind opsfleet's ports: SQS and DynamoDB through the official AWS SDK, and the
//! embedded in-process queue and store with the same semantics (visibility, receive counts,
//! redrive, FIFO groups and deduplication, delays, conditional writes) for `demo` and fast
//! tests. One conformance suite (`tests/conformance`) runs against both so they cannot drift;
//! `realism` layers around either what AWS does and the emulators do not (stale reads, lost
//! replies, second deliveries).

pub mod aws;
pub mod embedded;
pub mod realism;

pub use aws::AwsBackend;
pub use embedded::EmbeddedBackend;
