//! Test support shared by the workspace's integration tests.
//!
//! [`ec2_realism`] puts EC2 as it really behaves in front of the emulator: eventual
//! consistency after creates and tag changes, snapshots and images that stay `pending` for a
//! while, per-API request-token buckets, retryable server errors, creates whose reply is lost,
//! instances that find no capacity, and whole (account, region) pairs that refuse every call;
//! and DynamoDB's control plane and the Tagging API as AWS serves them (tables `UPDATING`,
//! backups `CREATING` and missing from lists at first, a daily allowance of decreases).

pub mod ec2_realism;

pub use ec2_realism::{Ec2Plan, Ec2Realism, FailingPlace};
