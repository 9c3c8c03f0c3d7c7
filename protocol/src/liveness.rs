//! The beats of a process's long-running loops (the router's and the workers' long polls), so
//! that a loop stuck in a call that never returns shows, and the container's health check can
//! fail on it while `/metrics` still answers.
//!
//! A loop beats at every turn and, while it waits for room on purpose (every permit taken by
//! running jobs), at least every [`BEAT_WHILE_WAITING`]; only a loop stuck inside a call stops
//! beating. The registry is process-wide, so loops beat without being handed anything.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often a loop waiting on purpose says it is alive.
pub const BEAT_WHILE_WAITING: Duration = Duration::from_secs(30);

/// How long a loop may go without a beat before it counts as stalled: well past a long poll
/// (20 s) and the SDK's retries of one call.
pub const STALL: Duration = Duration::from_secs(180);

fn beats() -> &'static Mutex<BTreeMap<String, Instant>> {
    static BEATS: OnceLock<Mutex<BTreeMap<String, Instant>>> = OnceLock::new();
    BEATS.get_or_init(Mutex::default)
}

/// Says the loop `name` is turning.
pub fn beat(name: &str) {
    if let Ok(mut beats) = beats().lock() {
        beats.insert(name.to_owned(), Instant::now());
    }
}

/// Forgets the loop `name`: it ended (at shutdown) and is not stalled.
pub fn end(name: &str) {
    if let Ok(mut beats) = beats().lock() {
        beats.remove(name);
    }
}

/// The loops whose last beat is older than `after`.
pub fn stalled(after: Duration) -> Vec<String> {
    let Ok(beats) = beats().lock() else { return Vec::new() };
    beats.iter().filter(|(_, at)| at.elapsed() > after).map(|(name, _)| name.clone()).collect()
}

/// A loop's registration: beats under its name, and ends it when dropped (however the loop
/// returns).
pub struct LoopBeat(String);

impl LoopBeat {
    /// Registers the loop `name`, beating once.
    pub fn new(name: String) -> Self {
        beat(&name);
        LoopBeat(name)
    }

    /// Says the loop turned.
    pub fn beat(&self) {
        beat(&self.0);
    }

    /// Awaits a purposeful wait, beating meanwhile.
    pub async fn waiting<F: Future>(&self, wait: F) -> F::Output {
        beating(&self.0, wait).await
    }
}

impl Drop for LoopBeat {
    fn drop(&mut self) {
        end(&self.0);
    }
}

/// Awaits `wait` (a purposeful wait, such as for a permit), beating for `name` meanwhile.
pub async fn beating<F: Future>(name: &str, wait: F) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    loop {
        tokio::select! {
            out = &mut wait => return out,
            () = tokio::time::sleep(BEAT_WHILE_WAITING) => beat(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_is_stalled_and_one_that_ended_is_not() {
        beat("test-a");
        beat("test-b");
        tokio::time::sleep(Duration::from_millis(30)).await;
        beat("test-b");
        let stalled_now = stalled(Duration::from_millis(20));
        assert!(stalled_now.contains(&"test-a".to_owned()) && !stalled_now.contains(&"test-b".to_owned()));
        end("test-a");
        assert!(!stalled(Duration::from_millis(20)).contains(&"test-a".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_purposeful_wait_keeps_beating_and_a_stuck_call_does_not() {
        beat("test-waits");
        beat("test-stuck");
        let (waiting, stuck) = (tokio::time::sleep(BEAT_WHILE_WAITING * 4), tokio::time::sleep(BEAT_WHILE_WAITING * 4));
        tokio::join!(beating("test-waits", waiting), stuck);
        let stalled_now = stalled(BEAT_WHILE_WAITING + Duration::from_secs(1));
        assert!(!stalled_now.contains(&"test-waits".to_owned()), "{stalled_now:?}");
        assert!(stalled_now.contains(&"test-stuck".to_owned()), "{stalled_now:?}");
    }
}
