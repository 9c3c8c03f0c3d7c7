//! The Prometheus exporter of `router`, `worker` and `run`: histogram buckets set per metric
//! (seconds, from a route's microseconds to a pending job's hours), and gauges that nobody set
//! for a minute dropped, so a process that stops sampling queues stops showing old depths.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use metrics_util::MetricKindMask;
use std::time::Duration;

/// Each histogram's buckets, in seconds.
pub const BUCKETS: &[(&str, &[f64])] = &[
    ("opsfleet_route_duration_seconds", &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
    ("opsfleet_aws_request_duration_seconds", &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    (
        "opsfleet_job_duration_seconds",
        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
    ),
    ("opsfleet_event_to_start_seconds", &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
    ("opsfleet_job_wait_seconds", &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0]),
];

/// A metric's kind, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to a value.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// Every metric's kind and help text (the `# HELP` line `/metrics` shows).
pub const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    ("opsfleet_events_received_total", Kind::Counter, "Events the router read, by source and detail type."),
    ("opsfleet_events_rejected_total", Kind::Counter, "Events sent to the events DLQ, by reason."),
    ("opsfleet_events_unmatched_total", Kind::Counter, "Events no task matched."),
    ("opsfleet_events_deferred_total", Kind::Counter, "Events left for redelivery after a send or discovery failed."),
    ("opsfleet_tasks_found_nothing_total", Kind::Counter, "Tasks that matched an event and found no resource."),
    (
        "opsfleet_discovery_places_failed_total",
        Kind::Counter,
        "Places (account, region) a discovery could not search, by task and region; each is retried on its own.",
    ),
    (
        "opsfleet_discovery_unusable_total",
        Kind::Counter,
        "Resources a discovery found and left out because opsfleet cannot key them (a name over 64 characters), by type.",
    ),
    ("opsfleet_jobs_emitted_total", Kind::Counter, "Jobs the router sent, by task and action."),
    (
        "opsfleet_alarm_halt_changes_total",
        Kind::Counter,
        "State changes of halting alarms the router recorded: `alarm` halts their tasks, `other` ends that.",
    ),
    (
        "opsfleet_runs_over_limits_total",
        Kind::Counter,
        "Runs over max_targets or max_targets_percent, by task and outcome (`refused`, `allowed`).",
    ),
    (
        "opsfleet_approval_notices_total",
        Kind::Counter,
        "Notices of runs waiting for approval: `published`, `failed` (tried again), `logged` (no AWS clients).",
    ),
    ("opsfleet_task_halted", Kind::Gauge, "Halts in force on each task (0: it runs); sampled by one router or worker."),
    ("opsfleet_route_duration_seconds", Kind::Histogram, "Time to normalize, match, expand and send one event."),
    ("opsfleet_router_poll_errors_total", Kind::Counter, "Router queue or store calls that failed and were retried."),
    ("opsfleet_jobs_finished_total", Kind::Counter, "Jobs finished, by task, action and outcome."),
    ("opsfleet_job_duration_seconds", Kind::Histogram, "Time of one action step (start or check), by action."),
    (
        "opsfleet_event_to_start_seconds",
        Kind::Histogram,
        "Time from the router receiving an event to the action starting, by task.",
    ),
    ("opsfleet_lock_acquisitions_total", Kind::Counter, "Resource lock attempts, by result."),
    ("opsfleet_limit_waits_total", Kind::Counter, "Jobs that found a concurrency limit full, by limit."),
    ("opsfleet_jobs_waiting", Kind::Gauge, "Jobs this worker holds back, by what they wait for."),
    ("opsfleet_job_wait_seconds", Kind::Histogram, "How long jobs waited before running, by what they waited for."),
    ("opsfleet_jobs_duplicate_total", Kind::Counter, "Redelivered jobs acknowledged without running again."),
    ("opsfleet_jobs_dead_lettered_total", Kind::Counter, "Jobs moved to the jobs DLQ."),
    ("opsfleet_leases_lost_total", Kind::Counter, "Leases another worker took over."),
    (
        "opsfleet_lease_release_failures_total",
        Kind::Counter,
        "Lease releases that failed; `last` says the lease was left to lapse.",
    ),
    ("opsfleet_checks_total", Kind::Counter, "Completion checks, by result."),
    ("opsfleet_runs_cancelled_total", Kind::Counter, "Runs cancelled past their max_errors."),
    ("opsfleet_worker_errors_total", Kind::Counter, "Worker queue or store calls that failed and were retried."),
    ("opsfleet_jobs_in_flight", Kind::Gauge, "Jobs running an action in this worker."),
    ("opsfleet_queue_messages", Kind::Gauge, "Messages in each fleet queue, by state (sampled by one worker)."),
    ("opsfleet_poll_loops_stalled", Kind::Gauge, "Long-poll loops of this process that have not turned for 3 minutes (the health check fails on any)."),
    ("opsfleet_jobs_backlog", Kind::Gauge, "Job messages of every partition, visible or in flight: the autoscaling signal (sampled by one router or worker)."),
    ("opsfleet_backlog_per_worker", Kind::Gauge, "Visible job messages per live worker (for dashboards; autoscaling reads opsfleet_jobs_backlog)."),
    (
        "opsfleet_aws_requests_total",
        Kind::Counter,
        "AWS call attempts, retries included, by service, operation and outcome.",
    ),
    ("opsfleet_aws_request_duration_seconds", Kind::Histogram, "AWS call attempt time, by service and operation."),
    ("opsfleet_build_info", Kind::Gauge, "1, labelled with the running build's version."),
];

/// Registers every metric's help text with the installed recorder.
pub fn describe() {
    for (name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// How long a gauge nobody sets stays in the output.
pub const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// The exporter's builder, buckets and idle timeout set.
pub fn builder() -> anyhow::Result<PrometheusBuilder> {
    let mut builder = PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
    for (name, buckets) in BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .with_context(|| format!("buckets of {name}"))?;
    }
    Ok(builder)
}
