//! Wall-clock time for leases, on tokio's clock so tests can pause and advance it.

use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Unix milliseconds that advance with tokio's clock: the wall clock read once, plus the time
/// tokio says has passed since. Leases are compared across processes in these units.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    /// A clock starting at the current wall-clock time.
    pub fn new() -> Self {
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { base_ms, base: Instant::now() }
    }

    /// A clock starting at a given Unix millisecond (tests).
    pub fn starting_at(base_ms: u64) -> Self {
        Clock { base_ms, base: Instant::now() }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
