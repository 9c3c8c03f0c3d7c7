//! What happens in the router, each as one struct that writes the log line and the metric, so
//! names and labels stay consistent. Labels are bounded: event sources other than `aws.*`
//! count as `other`, and so do their detail types.

use metrics::{counter, histogram};
use opsfleet_protocol::Event;
use std::time::Duration;

/// An event was received and normalized.
pub(crate) struct EventReceived<'a> {
    pub event: &'a Event,
}

impl EventReceived<'_> {
    pub fn emit(self) {
        let aws = self.event.source.starts_with("aws.") && self.event.source.len() <= 32;
        let source = if aws { self.event.source.clone() } else { "other".to_owned() };
        let detail_type =
            if aws && self.event.detail_type.len() <= 64 { self.event.detail_type.clone() } else { "other".to_owned() };
        tracing::debug!(event_id = %self.event.id, source = %self.event.source, detail_type = %self.event.detail_type, "Event received.");
        counter!("opsfleet_events_received_total", "source" => source, "detail_type" => detail_type).increment(1);
    }
}

/// An event was rejected and dead-lettered.
pub(crate) struct EventRejected<'a> {
    pub message_id: &'a str,
    pub reason: &'static str,
    pub error: &'a str,
}

impl EventRejected<'_> {
    pub fn emit(self) {
        tracing::warn!(message_id = %self.message_id, reason = self.reason, error = %self.error, "Event rejected to the dead-letter queue.");
        counter!("opsfleet_events_rejected_total", "reason" => self.reason).increment(1);
    }
}

/// An event matched no task.
pub(crate) struct EventUnmatched<'a> {
    pub event_id: &'a str,
}

impl EventUnmatched<'_> {
    pub fn emit(self) {
        tracing::debug!(event_id = %self.event_id, "Event matched no task.");
        counter!("opsfleet_events_unmatched_total").increment(1);
    }
}

/// A task matched an event and found no resource to act on (an event that names none, or a
/// discovery that found none).
pub(crate) struct TaskFoundNothing<'a> {
    pub event_id: &'a str,
    pub task: &'a str,
}

impl TaskFoundNothing<'_> {
    pub fn emit(self) {
        tracing::warn!(event_id = %self.event_id, task = %self.task, "A task matched the event and found no resource to act on.");
        counter!("opsfleet_tasks_found_nothing_total", "task" => self.task.to_owned()).increment(1);
    }
}

/// Jobs of one task were emitted.
pub(crate) struct JobsEmitted<'a> {
    pub task: &'a str,
    pub action: &'a str,
    pub count: usize,
}

impl JobsEmitted<'_> {
    pub fn emit(self) {
        counter!("opsfleet_jobs_emitted_total", "task" => self.task.to_owned(), "action" => self.action.to_owned())
            .increment(self.count as u64);
    }
}

/// An event was routed (or rejected) in this long.
pub(crate) struct EventRouted<'a> {
    pub event_id: &'a str,
    pub jobs: usize,
    pub took: Duration,
}

impl EventRouted<'_> {
    pub fn emit(self) {
        tracing::info!(event_id = %self.event_id, jobs = self.jobs, took_ms = self.took.as_millis() as u64, "Event routed.");
        histogram!("opsfleet_route_duration_seconds").record(self.took.as_secs_f64());
    }
}

/// An event could not be routed now and will be received again.
pub(crate) struct EventDeferred<'a> {
    pub message_id: &'a str,
    pub error: &'a str,
}

impl EventDeferred<'_> {
    pub fn emit(self) {
        tracing::warn!(message_id = %self.message_id, error = %self.error, "Event deferred; it will be received again.");
        counter!("opsfleet_events_deferred_total").increment(1);
    }
}

/// A queue call of the router's own loop failed.
pub(crate) struct PollFailed<'a> {
    pub queue: &'a str,
    pub error: &'a str,
}

impl PollFailed<'_> {
    pub fn emit(self) {
        tracing::error!(queue = %self.queue, error = %self.error, "Polling the events queue failed.");
        counter!("opsfleet_router_poll_errors_total").increment(1);
    }
}

/// Some places of a task's discovery failed; they are retried on their own.
pub(crate) struct DiscoveryPlacesFailed<'a> {
    pub event_id: &'a str,
    pub task: &'a str,
    pub failed: &'a [crate::discovery::PlaceFailed],
    pub attempt: u32,
}

impl DiscoveryPlacesFailed<'_> {
    pub fn emit(self) {
        for place in self.failed {
            tracing::warn!(event_id = %self.event_id, task = %self.task, account = %place.account, region = %place.region, attempt = self.attempt, error = %place.error, "A discovery failed in one place; the others' jobs went out and this place is retried on its own.");
            counter!("opsfleet_discovery_places_failed_total", "task" => self.task.to_owned(), "region" => place.region.clone())
                .increment(1);
        }
    }
}

/// A halting alarm changed state: the tasks it halts are halted (ALARM) or no longer halted by
/// it (any other state).
pub(crate) struct AlarmHaltChanged<'a> {
    pub alarm: &'a str,
    pub state: &'a str,
    pub tasks: &'a [&'a str],
}

impl AlarmHaltChanged<'_> {
    pub fn emit(self) {
        let halts = self.state == opsfleet_protocol::halt::ALARM;
        if halts {
            tracing::warn!(alarm = %self.alarm, tasks = ?self.tasks, "Alarm in ALARM: its tasks are halted; their jobs wait.");
        } else {
            tracing::info!(alarm = %self.alarm, state = %self.state, tasks = ?self.tasks, "Alarm no longer in ALARM: it halts its tasks no more.");
        }
        let state = if halts { "alarm" } else { "other" };
        counter!("opsfleet_alarm_halt_changes_total", "state" => state).increment(1);
    }
}

/// A run was over its task's `max_targets` or `max_targets_percent`: refused, or let go ahead
/// (`allow_over_max_targets`).
pub(crate) struct RunOverLimits<'a> {
    pub task: &'a str,
    pub reason: &'a str,
    pub allowed: bool,
}

impl RunOverLimits<'_> {
    pub fn emit(self) {
        if self.allowed {
            tracing::warn!(task = %self.task, reason = %self.reason, "Run over its blast-radius limits goes ahead (allow_over_max_targets).");
        } else {
            tracing::error!(task = %self.task, reason = %self.reason, "Run refused: over its blast-radius limits; the event goes to the DLQ.");
        }
        let outcome = if self.allowed { "allowed" } else { "refused" };
        counter!("opsfleet_runs_over_limits_total", "task" => self.task.to_owned(), "outcome" => outcome).increment(1);
    }
}
