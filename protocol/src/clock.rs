//! Wall-clock time, the one way the router and the workers read it: when an event was
//! received, when a job was locked, started, finished; when ledger items expire. No lease decision reads it (leases are timed on each process's own monotonic
//! clock, see `lease`), so two workers whose clocks disagree still never hold one lock.

use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The system's wall clock, read afresh every time (an NTP step shows at once), shifted by
    /// an offset that only tests set.
    Wall { offset_ms: i64 },
    /// A fixed start plus the time tokio says has passed: tests that pause time.
    Tokio { base_ms: u64, base: Instant },
}

impl Clock {
    /// The system's wall clock.
    pub fn new() -> Self {
        Clock { source: Source::Wall { offset_ms: 0 } }
    }

    /// The system's wall clock shifted by `offset_ms`: for tests of workers whose clocks
    /// disagree, nothing else.
    pub fn skewed(offset_ms: i64) -> Self {
        Clock { source: Source::Wall { offset_ms } }
    }

    /// A clock starting at a given Unix millisecond and advancing with tokio's clock (tests
    /// on a paused clock).
    pub fn starting_at(base_ms: u64) -> Self {
        Clock { source: Source::Tokio { base_ms, base: Instant::now() } }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self.source {
            Source::Wall { offset_ms } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                (now + offset_ms).max(0) as u64
            }
            Source::Tokio { base_ms, base } => base_ms + base.elapsed().as_millis() as u64,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
