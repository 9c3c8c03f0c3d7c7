//! Knowing when the run is over, and what it came to: the workers' own Prometheus counter of
//! finished jobs drives the wait (cheap to read every 100 ms), the ledger confirms it, and
//! afterwards every job's ledger item gives its event→start latency.

use crate::generator::Schedule;
use anyhow::{bail, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use metrics_exporter_prometheus::PrometheusHandle;
use opsfleet_worker::ledger::{Ledger, Status};
use std::time::Duration;
use tokio::time::Instant;

/// How often the counter is read.
const POLL: Duration = Duration::from_millis(100);

/// The counter the worker increments when a job finishes.
const FINISHED: &str = "opsfleet_jobs_finished_total";

/// Jobs of the `noop` action finished with `outcome` so far, read from rendered Prometheus
/// text (0 when the counter has not been touched yet).
pub fn finished_jobs(rendered: &str, outcome: &str) -> u64 {
    let action = "action=\"noop\"";
    let outcome = format!("outcome=\"{outcome}\"");
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix(FINISHED)?.strip_prefix('{')?.split_once('}'))
        .filter(|(labels, _)| labels.split(',').any(|l| l == action) && labels.split(',').any(|l| l == outcome))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Jobs the router emitted so far (sent to their partitions), read from rendered Prometheus text.
pub fn emitted_jobs(rendered: &str) -> u64 {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix("opsfleet_jobs_emitted_total")?.split_once(' '))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until the router emitted `total` jobs (a run without workers); fails when `timeout`
/// passes first.
pub async fn wait_until_emitted(metrics: &PrometheusHandle, total: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let emitted = emitted_jobs(&metrics.render());
        if emitted >= total {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s with {emitted} of {total} jobs emitted", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every job of `ids` is SUCCEEDED: polls the finished-jobs counter until it
/// reaches the job count, then checks the ledger for the jobs not yet done until none is
/// left. Fails when a job fails for good or `timeout` passes.
pub async fn wait_until_succeeded(
    metrics: &PrometheusHandle,
    ledger: &Ledger,
    ids: &[String],
    bar: &ProgressBar,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let total = ids.len() as u64;
    let mut remaining: Option<Vec<&String>> = None;
    loop {
        let rendered = metrics.render();
        let succeeded = finished_jobs(&rendered, "succeeded");
        bar.set_position(succeeded.min(total));
        let lost = finished_jobs(&rendered, "failed") + finished_jobs(&rendered, "cancelled");
        if lost > 0 {
            bail!("{lost} jobs failed or were cancelled; a noop load should not fail");
        }
        if succeeded >= total {
            let mut left = match remaining.take() {
                Some(left) => left,
                None => ids.iter().collect(),
            };
            let mut still = Vec::new();
            for id in left.drain(..) {
                match ledger.job(id).await?.map(|r| r.status) {
                    Some(Status::Succeeded) => {}
                    Some(status) if status.is_final() => bail!("job {id} ended {}", status.as_str()),
                    _ => still.push(id),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            remaining = Some(still);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s with {succeeded} of {total} jobs succeeded", timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What the ledger says of a finished run.
#[derive(Debug)]
pub struct Outcome {
    /// Event→start latency of every job, in ms: when the worker started the action minus when
    /// the event was due to be sent.
    pub event_to_start_ms: Histogram<u64>,
    /// Event→done latency of every job, in ms: when the job's outcome was written minus when
    /// the event was due to be sent.
    pub event_to_done_ms: Histogram<u64>,
    /// When the last job finished, Unix ms.
    pub last_finished_ms: u64,
}

/// Reads every job's ledger item (32 at a time) and records its latencies from its event's
/// due time in `schedule`.
pub async fn collect(ledger: &Ledger, ids: &[String], schedule: &Schedule) -> anyhow::Result<Outcome> {
    let mut event_to_start_ms = Histogram::<u64>::new(3).context("cannot make a histogram")?;
    let mut event_to_done_ms = Histogram::<u64>::new(3).context("cannot make a histogram")?;
    let mut last_finished_ms = 0u64;
    let mut records =
        futures::stream::iter(ids.iter().map(|id| async move { (id, ledger.job(id).await) })).buffer_unordered(32);
    while let Some((id, record)) = records.next().await {
        let record = record?.with_context(|| format!("job {id} is not in the ledger"))?;
        if record.status != Status::Succeeded {
            bail!("job {id} is {}", record.status.as_str());
        }
        let int = |name: &str| {
            record
                .attrs
                .get(name)
                .and_then(|v| v.as_i64())
                .map(|v| v.max(0) as u64)
                .with_context(|| format!("job {id} has no {name} in the ledger"))
        };
        let (started, finished) = (int("started_ms")?, int("finished_ms")?);
        let event = record.attrs.get("event_id").and_then(|v| v.as_str()).unwrap_or_default();
        let due = schedule.get(event).copied().with_context(|| format!("job {id}'s event {event} was not sent"))?;
        event_to_start_ms
            .record(started.saturating_sub(due))
            .with_context(|| format!("cannot record the latency of job {id}"))?;
        event_to_done_ms
            .record(finished.saturating_sub(due))
            .with_context(|| format!("cannot record the latency of job {id}"))?;
        last_finished_ms = last_finished_ms.max(finished);
    }
    Ok(Outcome { event_to_start_ms, event_to_done_ms, last_finished_ms })
}

#[cfg(test)]
mod tests {
    use super::finished_jobs;

    #[test]
    fn reads_the_noop_counter_of_one_outcome() {
        let text = "# TYPE opsfleet_jobs_finished_total counter\n\
            opsfleet_jobs_finished_total{action=\"noop\",outcome=\"succeeded\"} 42\n\
            opsfleet_jobs_finished_total{action=\"noop\",outcome=\"failed\"} 3\n\
            opsfleet_jobs_finished_total{action=\"other\",outcome=\"succeeded\"} 7\n\
            opsfleet_jobs_finished_total_x{action=\"noop\",outcome=\"succeeded\"} 9\n";
        assert_eq!(finished_jobs(text, "succeeded"), 42);
        assert_eq!(finished_jobs(text, "failed"), 3);
        assert_eq!(finished_jobs(text, "cancelled"), 0);
        assert_eq!(finished_jobs("", "succeeded"), 0);
    }

    #[test]
    fn reads_the_emitted_jobs_of_every_task() {
        let text = "opsfleet_jobs_emitted_total{action=\"noop\",task=\"a\"} 40\n\
            opsfleet_jobs_emitted_total{action=\"noop\",task=\"b\"} 2\n\
            opsfleet_jobs_finished_total{action=\"noop\",outcome=\"succeeded\"} 7\n";
        assert_eq!(super::emitted_jobs(text), 42);
        assert_eq!(super::emitted_jobs(""), 0);
    }
}
