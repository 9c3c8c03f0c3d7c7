//! Timeouts on every AWS call, so that a hung connection or a silent endpoint becomes a
//! retryable error instead of a job that holds its resource for hours.

use aws_config::timeout::TimeoutConfig;
use std::time::Duration;

/// Connecting to an endpoint.
pub const CONNECT: Duration = Duration::from_secs(3);

/// One attempt of an operation (long polls add their wait).
pub const ATTEMPT: Duration = Duration::from_secs(10);

/// An operation with all its retries (long polls add their wait).
pub const OPERATION: Duration = Duration::from_secs(30);

/// The timeouts every client of the fleet is built with. No read timeout: a long poll is
/// silent on purpose for up to 20 s, and a receive the client cuts off may still have taken
/// messages, which then stay hidden for their visibility timeout (long polls get the wait
/// added to their attempt timeout instead).
pub fn config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT)
        .operation_attempt_timeout(ATTEMPT)
        .operation_timeout(OPERATION)
        .build()
}
