//! The open-loop generator: sends events at a fixed rate whatever the fleet does, and remembers
//! when each was due, so latency counts from the schedule. A slow fleet cannot hide its latency
//! by slowing the sender (no coordinated omission): sends never wait for one another.

use crate::events::LoadEvent;
use anyhow::Context;
use opsfleet_protocol::ports::send_all;
use opsfleet_protocol::ports::{OutgoingMessage, Queue, MAX_BATCH};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often the generator sends what is due.
const TICK: Duration = Duration::from_millis(5);

/// When each event was due, Unix ms, by event id.
pub type Schedule = HashMap<String, u64>;

/// Sends every event at once, in batches of ten, eight batches at a time: the closed load that
/// measures saturation. Every event is due when the call starts.
pub async fn send_at_once(queue: Arc<dyn Queue>, events: Vec<LoadEvent>) -> anyhow::Result<Schedule> {
    let now = unix_ms();
    let schedule = events.iter().map(|e| (e.id.clone(), now)).collect();
    let mut batches: Vec<Vec<OutgoingMessage>> = Vec::new();
    for chunk in events.chunks(MAX_BATCH) {
        batches.push(chunk.iter().map(|e| OutgoingMessage { body: e.body.clone(), ..Default::default() }).collect());
    }
    let mut sending = JoinSet::new();
    for batch in batches {
        while sending.len() >= 8 {
            sending.join_next().await.context("a send task vanished")?.context("a send task panicked")??;
        }
        let queue = Arc::clone(&queue);
        sending.spawn(async move { send_all(queue.as_ref(), batch).await });
    }
    while let Some(sent) = sending.join_next().await {
        sent.context("a send task panicked")??;
    }
    Ok(schedule)
}

/// Sends the events at `rate` a second from now, each batch of what is due as a task of its
/// own. Returns when the last was sent, with the schedule and how far behind it the sends
/// fell at worst.
pub async fn send_open_loop(
    queue: Arc<dyn Queue>,
    events: Vec<LoadEvent>,
    rate: f64,
) -> anyhow::Result<(Schedule, Duration)> {
    let start = Instant::now();
    let start_ms = unix_ms();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut schedule = Schedule::with_capacity(events.len());
    let mut sending = JoinSet::new();
    let mut next = 0usize;
    let mut worst_lag = Duration::ZERO;
    let mut pending = events.into_iter().peekable();
    while pending.peek().is_some() {
        let elapsed = start.elapsed();
        let due = ((elapsed.as_secs_f64() * rate) as usize + 1).saturating_sub(next);
        let mut batch = Vec::new();
        for event in pending.by_ref().take(due) {
            let due_at = interval.mul_f64(next as f64);
            worst_lag = worst_lag.max(elapsed.saturating_sub(due_at));
            schedule.insert(event.id.clone(), start_ms + due_at.as_millis() as u64);
            batch.push(OutgoingMessage { body: event.body, ..Default::default() });
            next += 1;
        }
        for chunk in batch.chunks(MAX_BATCH) {
            let queue = Arc::clone(&queue);
            let chunk = chunk.to_vec();
            sending.spawn(async move { send_all(queue.as_ref(), chunk).await });
        }
        while let Some(done) = sending.try_join_next() {
            done.context("a send task panicked")??;
        }
        // Wake when the next event is due, but no more often than every tick.
        tokio::time::sleep_until((start + interval.mul_f64(next as f64)).max(Instant::now() + TICK)).await;
    }
    while let Some(sent) = sending.join_next().await {
        sent.context("a send task panicked")??;
    }
    Ok((schedule, worst_lag))
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
