//! The report: throughput, latency percentiles and the queue baseline, as text or as one JSON
//! object.

use crate::baseline::{per_sec, Baseline};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// The settings a run used.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
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
}

/// Event→start latency percentiles, in ms.
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
}

/// Everything a run measured.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The settings.
    pub settings: Settings,
    /// Jobs run (events × resources per event).
    pub jobs: usize,
    /// Time to send the events to the events queue.
    pub send: Duration,
    /// From starting router and workers until the last job finished.
    pub elapsed: Duration,
    /// Event→start latency.
    pub latency: Latency,
    /// The raw queue baseline.
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

    /// The report as lines of text.
    pub fn text(&self) -> String {
        let s = &self.settings;
        let l = &self.latency;
        let b = &self.baseline;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "opsfleet load test: embedded backend, noop sleep_ms = {}, {} partitions, {} workers × {} in flight, {} router pollers",
            s.sleep_ms, s.partitions, s.workers, s.max_in_flight, s.routers
        );
        let _ = writeln!(out, "  events            {} ({} instances per event)", s.events, s.resources_per_event);
        let _ = writeln!(out, "  jobs              {}", self.jobs);
        let _ = writeln!(
            out,
            "  send events       {:.1} ms ({:.0} events/s)",
            self.send.as_secs_f64() * 1000.0,
            per_sec(s.events, self.send)
        );
        let _ = writeln!(
            out,
            "  elapsed           {:.3} s (router and workers start → last job finished)",
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  throughput        {:.0} jobs/s, {:.0} events/s",
            self.jobs_per_sec(),
            self.events_per_sec()
        );
        let _ =
            writeln!(out, "  event→start       p50 {} ms, p90 {} ms, p99 {} ms, max {} ms", l.p50, l.p90, l.p99, l.max);
        let _ = writeln!(
            out,
            "  queue baseline    {:.0} messages/s ({} job messages on one FIFO queue: send {:.3} s, receive+delete {:.3} s)",
            b.messages_per_sec(),
            b.messages,
            b.send.as_secs_f64(),
            b.drain.as_secs_f64()
        );
        let _ = writeln!(out, "  end-to-end/queue  {:.3}", self.ratio());
        out
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let s = &self.settings;
        let l = &self.latency;
        let b = &self.baseline;
        json!({
            "backend": "embedded",
            "events": s.events,
            "resources_per_event": s.resources_per_event,
            "jobs": self.jobs,
            "partitions": s.partitions,
            "workers": s.workers,
            "routers": s.routers,
            "max_in_flight": s.max_in_flight,
            "sleep_ms": s.sleep_ms,
            "send_secs": self.send.as_secs_f64(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "jobs_per_sec": self.jobs_per_sec(),
            "events_per_sec": self.events_per_sec(),
            "event_to_start_ms": { "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max },
            "baseline": {
                "messages": b.messages,
                "send_secs": b.send.as_secs_f64(),
                "drain_secs": b.drain.as_secs_f64(),
                "messages_per_sec": b.messages_per_sec(),
            },
            "ratio_to_baseline": self.ratio(),
        })
    }
}
