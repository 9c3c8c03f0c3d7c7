//! `opsfleet dlq`: list what the fleet dead-lettered, with the reasons, and send it back.

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::Clock;
use opsfleet_worker::ledger::Ledger;
use opsfleet_worker::redrive::{self, Redriven};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use opsfleet_worker::redrive::Which;

/// Prints up to `max` dead-lettered messages per queue as JSON lines (`queue`, `message_id`,
/// `reason`, `receive_count`, `first_seen`, `last_seen`, `body`); they stay in their queue.
pub async fn list(path: &Path, which: Which, max: usize) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    for pair in redrive::dead_letter_queues(&backend, &config, which).await? {
        for (m, letter) in redrive::list(pair.dead.as_ref(), max).await? {
            // First seen: when the fleet first got it; last seen: when it was dead-lettered.
            let line = json!({
                "queue": pair.dead.name(),
                "message_id": m.message_id,
                "reason": (!letter.reason.is_empty()).then_some(&letter.reason),
                "receive_count": m.receive_count,
                "first_seen": opsfleet_protocol::template::iso(letter.first_seen_ms),
                "last_seen": opsfleet_protocol::template::iso(m.sent_ms),
                "body": m.body,
            });
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends up to `max` dead-lettered messages per queue back where they came from (see
/// [`redrive::redrive`]).
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
    for pair in redrive::dead_letter_queues(&backend, &config, which).await? {
        for done in redrive::redrive(&pair, &ledger, max, stamp).await? {
            match done {
                Redriven::Sent { message_id } => {
                    println!("redriven: {message_id} {} -> {}", pair.dead.name(), pair.live.name());
                    total += 1;
                }
                Redriven::NotAJob { message_id } => {
                    eprintln!("{}: {message_id} is not a job; left in place", pair.dead.name());
                }
            }
        }
    }
    eprintln!("{total} messages redriven");
    Ok(ExitCode::SUCCESS)
}
