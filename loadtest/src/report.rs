//! The report: throughput, latency percentiles, requests per job, memory and the baseline, as
//! text or as one JSON object.

use crate::baseline::{per_sec, Baseline};
use crate::counting::Counts;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// The settings a run used.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `embedded` or `aws`.
    pub backend: &'static str,
    /// Events sent.
    pub events: usize,
    /// Instances (jobs) per event.
    pub resources_per_event: usize,
    /// Job queue partitions.
    pub partitions: u32,
    /// Worker consumers in the process.
    pub workers: u32,
    /// Router long-poll loops.
    pub routers: u32,
    /// Jobs in flight per worker.
    pub max_in_flight: u32,
    /// The `noop` sleep, in ms.
    pub sleep_ms: u64,
    /// The offered load in events/s (open loop), or `None` when every event was sent at once.
    pub rate: Option<f64>,
}

/// Latency percentiles, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// The percentiles of a histogram of ms.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }

    fn json(&self) -> Value {
        json!({ "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max })
    }

    fn text(&self) -> String {
        format!("p50 {} ms, p90 {} ms, p99 {} ms, max {} ms", self.p50, self.p90, self.p99, self.max)
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The settings.
    pub settings: Settings,
    /// Jobs run (events × resources per event).
    pub jobs: usize,
    /// From the first event due until the last job finished.
    pub elapsed: Duration,
    /// How far behind its schedule the open-loop sender fell at worst.
    pub send_lag: Duration,
    /// Event→start and event→done latency (none when the router ran alone).
    pub latency: Option<(Latency, Latency)>,
    /// The requests router and workers made (not the generator's sends).
    pub requests: Counts,
    /// The name of the events queue, to tell its requests from the job queues'.
    pub events_queue: String,
    /// The process's peak resident memory, in MiB.
    pub peak_rss_mib: f64,
    /// What the baseline is.
    pub baseline_kind: &'static str,
    /// The baseline.
    pub baseline: Baseline,
}

impl Report {
    /// Jobs per second end to end.
    pub fn jobs_per_sec(&self) -> f64 {
        per_sec(self.jobs, self.elapsed)
    }

    /// Events per second end to end.
    pub fn events_per_sec(&self) -> f64 {
        per_sec(self.settings.events, self.elapsed)
    }

    /// End-to-end jobs/s over the baseline's messages/s.
    pub fn ratio(&self) -> f64 {
        let base = self.baseline.messages_per_sec();
        if base > 0.0 {
            self.jobs_per_sec() / base
        } else {
            0.0
        }
    }

    fn per_job(&self, n: u64) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            n as f64 / self.jobs as f64
        }
    }

    /// Requests per job: DynamoDB writes, strong and eventual reads, SQS requests on the job
    /// and checks queues, SQS requests on the events queue, all SQS requests.
    pub fn requests_per_job(&self) -> Value {
        let r = &self.requests;
        let events = r.sqs_requests_to(|q| q == self.events_queue);
        let jobs = r.sqs_requests_to(|q| q != self.events_queue);
        json!({
            "dynamodb_writes": self.per_job(r.writes()),
            "dynamodb_strong_reads": self.per_job(r.strong_reads()),
            "dynamodb_eventual_reads": self.per_job(r.eventual_reads()),
            "sqs_job_queues": self.per_job(jobs),
            "sqs_events_queue": self.per_job(events),
            "sqs_all": self.per_job(r.sqs_requests()),
            "by_operation": r.by_operation.iter().map(|(op, n)| (op.to_string(), json!(self.per_job(*n)))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// The report as lines of text.
    pub fn text(&self) -> String {
        let s = &self.settings;
        let b = &self.baseline;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "opsfleet load test: {} backend, noop sleep_ms = {}, {} partitions, {} workers × {} in flight, {} router pollers",
            s.backend, s.sleep_ms, s.partitions, s.workers, s.max_in_flight, s.routers
        );
        let offered = match s.rate {
            Some(rate) => format!("open loop at {rate:.0} events/s (worst send lag {} ms)", self.send_lag.as_millis()),
            None => "all at once (saturation)".to_owned(),
        };
        let _ = writeln!(
            out,
            "  events            {} ({} instances per event), {offered}",
            s.events, s.resources_per_event
        );
        let _ = writeln!(out, "  jobs              {}", self.jobs);
        let _ = writeln!(
            out,
            "  elapsed           {:.3} s (first event due → last job finished)",
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  throughput        {:.0} jobs/s, {:.0} events/s",
            self.jobs_per_sec(),
            self.events_per_sec()
        );
        match &self.latency {
            Some((start, done)) => {
                let _ = writeln!(out, "  event→start       {}", start.text());
                let _ = writeln!(out, "  event→done        {}", done.text());
            }
            None => {
                let _ = writeln!(out, "  router alone      no workers: elapsed until every job was sent");
            }
        }
        let r = self.requests_per_job();
        let _ = writeln!(
            out,
            "  per job           {:.2} DynamoDB writes, {:.2} strong + {:.2} eventual reads, {:.3} SQS requests on job queues + {:.3} on the events queue",
            r["dynamodb_writes"].as_f64().unwrap_or(0.0),
            r["dynamodb_strong_reads"].as_f64().unwrap_or(0.0),
            r["dynamodb_eventual_reads"].as_f64().unwrap_or(0.0),
            r["sqs_job_queues"].as_f64().unwrap_or(0.0),
            r["sqs_events_queue"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(
            out,
            "  peak RSS          {:.1} MiB (the whole process: generator, router and workers)",
            self.peak_rss_mib
        );
        let _ = writeln!(
            out,
            "  baseline          {:.0} messages/s ({}, {} messages)",
            b.messages_per_sec(),
            self.baseline_kind,
            b.messages,
        );
        let _ = writeln!(out, "  fleet/baseline    {:.3}", self.ratio());
        out
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let s = &self.settings;
        let b = &self.baseline;
        json!({
            "backend": s.backend,
            "events": s.events,
            "resources_per_event": s.resources_per_event,
            "jobs": self.jobs,
            "partitions": s.partitions,
            "workers": s.workers,
            "routers": s.routers,
            "max_in_flight": s.max_in_flight,
            "sleep_ms": s.sleep_ms,
            "offered_events_per_sec": s.rate,
            "send_lag_ms": self.send_lag.as_millis() as u64,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "jobs_per_sec": self.jobs_per_sec(),
            "events_per_sec": self.events_per_sec(),
            "event_to_start_ms": self.latency.map(|(start, _)| start.json()),
            "event_to_done_ms": self.latency.map(|(_, done)| done.json()),
            "requests_per_job": self.requests_per_job(),
            "peak_rss_mib": self.peak_rss_mib,
            "baseline": {
                "kind": self.baseline_kind,
                "messages": b.messages,
                "secs": (b.send + b.drain).as_secs_f64(),
                "messages_per_sec": b.messages_per_sec(),
            },
            "ratio_to_baseline": self.ratio(),
        })
    }
}

/// The peak resident memory of this process, in MiB (`VmHWM`; 0 where `/proc` has none).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
