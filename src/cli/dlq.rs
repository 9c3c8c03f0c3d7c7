//! `opsfleet dlq`: list what the fleet dead-lettered, with the reasons, and send it back.

use anyhow::Context;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage, Queue, ReceivedMessage};
use opsfleet_protocol::{Config, Job};
use opsfleet_worker::clock::Clock;
use opsfleet_worker::ledger::Ledger;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which dead-letter queues a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// `<name>-events-dlq`: events the router rejected.
    Events,
    /// `<name>-jobs-<p>-dlq.fifo`: jobs that failed for good, and bodies that were not jobs.
    Jobs,
    /// `<name>-checks-dlq`: completion checks that kept failing.
    Checks,
    /// All of them.
    All,
}

/// A dead-letter queue and the queue its messages go back to.
struct Pair {
    dead: Arc<dyn Queue>,
    live: Arc<dyn Queue>,
}

async fn pairs(backend: &dyn Backend, config: &Config, which: Which) -> anyhow::Result<Vec<Pair>> {
    let fleet = &config.fleet.name;
    let mut names = Vec::new();
    if matches!(which, Which::Events | Which::All) {
        names.push((names::events_dlq(fleet), names::events_queue(fleet)));
    }
    if matches!(which, Which::Jobs | Which::All) {
        for p in 0..config.fleet.partitions.get() {
            names.push((names::jobs_dlq(fleet, p), names::jobs_queue(fleet, p)));
        }
    }
    if matches!(which, Which::Checks | Which::All) {
        names.push((names::checks_dlq(fleet), names::checks_queue(fleet)));
    }
    let mut out = Vec::new();
    for (dead, live) in names {
        out.push(Pair { dead: backend.queue(&dead).await?, live: backend.queue(&live).await? });
    }
    Ok(out)
}

/// Receives up to `max` messages of a queue, hiding each for `hide` so that each is seen once.
async fn take(queue: &dyn Queue, max: usize, hide: Duration) -> anyhow::Result<Vec<ReceivedMessage>> {
    let mut out = Vec::new();
    while out.len() < max {
        let got = queue.receive((max - out.len()).min(10), Duration::from_secs(1), Some(hide)).await?;
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    Ok(out)
}

/// Prints up to `max` dead-lettered messages per queue as JSON lines (`queue`, `message_id`,
/// `reason`, `receive_count`, `body`); they stay in their queue. A jobs DLQ (FIFO, one group
/// per resource) shows the oldest dead letter of each resource: SQS shows no more of a FIFO
/// group until that one is gone.
pub async fn list(path: &Path, which: Which, max: usize) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    for pair in pairs(&backend, &config, which).await? {
        let messages = take(pair.dead.as_ref(), max, Duration::from_secs(30)).await?;
        for m in &messages {
            // First seen: when the fleet first got it; last seen: when it was dead-lettered.
            let first_seen: u64 =
                m.attributes.get(names::FIRST_SEEN_ATTRIBUTE).and_then(|v| v.parse().ok()).unwrap_or(m.sent_ms);
            let line = json!({
                "queue": pair.dead.name(),
                "message_id": m.message_id,
                "reason": m.attributes.get(names::REASON_ATTRIBUTE),
                "receive_count": m.receive_count,
                "first_seen": opsfleet_protocol::template::iso(first_seen),
                "last_seen": opsfleet_protocol::template::iso(m.sent_ms),
                "body": m.body,
            });
            println!("{line}");
        }
        for m in messages {
            pair.dead.change_visibility(&m.receipt, Duration::ZERO).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends up to `max` dead-lettered messages per queue back where they came from, then deletes
/// them from the dead-letter queue. A job goes back to its partition in its resource's group
/// with a new deduplication id, so FIFO deduplication does not swallow it, and a job that
/// failed for good is reopened in the ledger so that it runs again.
pub async fn redrive(path: &Path, which: Which, max: usize) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let ledger = Ledger::new(
        backend.store(&names::table(&config.fleet.name)).await?,
        Clock::new(),
        Duration::from_secs(u64::from(config.worker.ledger_retention_days) * 86_400),
    );
    let mut total = 0;
    for pair in pairs(&backend, &config, which).await? {
        let fifo = pair.live.name().ends_with(".fifo");
        let mut left = std::collections::HashSet::new();
        let mut redriven = 0;
        // What is there now, not what comes back meanwhile (a redriven event the router
        // rejects again lands here anew).
        let there = pair.dead.depth().await?.visible as usize;
        let limit = max.min(there);
        // Batch by batch: a FIFO DLQ shows more only once what it showed is gone.
        while redriven < limit {
            let batch = take(pair.dead.as_ref(), (limit - redriven).min(10), Duration::from_secs(60)).await?;
            let mut progressed = false;
            for m in batch {
                let mut out = OutgoingMessage { body: m.body.clone(), ..Default::default() };
                if fifo {
                    let Ok(job) = Job::from_json(&m.body) else {
                        if left.insert(m.message_id.clone()) {
                            eprintln!("{}: {} is not a job; left in place", pair.dead.name(), m.message_id);
                        }
                        pair.dead.change_visibility(&m.receipt, Duration::ZERO).await?;
                        continue;
                    };
                    out.group_id = Some(job.resource.key());
                    out.dedup_id = Some(format!("{}-redrive-{stamp}", job.id));
                    // A job that failed for good runs again.
                    ledger.reopen(&job.id).await?;
                }
                opsfleet_router::send_all(pair.live.as_ref(), vec![out])
                    .await
                    .with_context(|| format!("cannot send {} back to {}", m.message_id, pair.live.name()))?;
                pair.dead.delete_batch(std::slice::from_ref(&m.receipt)).await?;
                println!("redriven: {} {} -> {}", m.message_id, pair.dead.name(), pair.live.name());
                redriven += 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        total += redriven;
    }
    eprintln!("{total} messages redriven");
    Ok(ExitCode::SUCCESS)
}
