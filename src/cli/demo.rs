//! `opsfleet demo`: the sample events through router and worker on the embedded backend.

use anyhow::Context;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Job, Planner};
use opsfleet_router::{Outcome, Router, StaticInventory};
use opsfleet_worker::ledger::Ledger;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The bundled examples, found next to the sources when not in the working directory.
fn bundled(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Loads the config and sample events, pushes them through the router on the embedded
/// backend, and prints what became of each event and the jobs per partition.
pub async fn run(config: Option<PathBuf>, events: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config_path = config.unwrap_or_else(|| bundled("examples/fleet.toml"));
    let events_dir = events.unwrap_or_else(|| bundled("examples/events"));
    let config = super::load_config(&config_path)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&events_dir)
        .with_context(|| format!("cannot read sample events in {}", events_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    println!("opsfleet demo: embedded backend, plan-mode actions");
    println!(
        "config {}: fleet {}, {} tasks, {} partitions; {} sample events from {}\n",
        config_path.display(),
        config.fleet.name,
        config.tasks.len(),
        config.fleet.partitions,
        files.len(),
        events_dir.display()
    );

    let backend = EmbeddedBackend::new();
    setup(&backend, &config).await?;
    let fleet = config.fleet.name.clone();
    let events = backend.queue(&names::events_queue(&fleet)).await?;
    for file in &files {
        let body = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut message = OutgoingMessage { body, ..Default::default() };
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        message.attributes.insert("demo-file".into(), name);
        opsfleet_protocol::ports::send_all(events.as_ref(), vec![message]).await?;
    }

    let partitions = config.fleet.partitions.get();
    let config = Arc::new(config);
    let planner = Arc::new(Planner::new(config.as_ref().clone()));
    let inventory_path = events_dir.parent().unwrap_or(Path::new(".")).join("inventory.json");
    let inventory = std::fs::read_to_string(&inventory_path)
        .with_context(|| format!("cannot read the demo inventory {}", inventory_path.display()))?;
    let inventory = StaticInventory::from_json(&inventory)
        .with_context(|| format!("invalid inventory {}", inventory_path.display()))?;
    let router = Router::open(&backend, planner, Arc::new(inventory)).await?;
    println!("Routing:");
    let mut routed: Vec<Job> = Vec::new();
    loop {
        let outcomes = router.poll_once(Duration::ZERO).await?;
        if outcomes.is_empty() {
            break;
        }
        for outcome in outcomes {
            match outcome {
                Outcome::Routed { event_id, jobs } => {
                    println!("  routed     event {event_id}: {} jobs", jobs.len());
                    routed.extend(jobs);
                }
                Outcome::Unmatched { event_id } => println!("  unmatched  event {event_id}: no task matches"),
                Outcome::DeadLettered { kind, reason } => println!("  rejected   ({kind}) {reason}"),
                Outcome::Deferred { error } => println!("  deferred   {error}"),
            }
        }
    }

    println!("\nJobs per partition:");
    for p in 0..partitions {
        let queue = backend.embedded_queue(&names::jobs_queue(&fleet, p)).context("partition queue")?;
        let bodies = queue.peek_bodies();
        println!("  {} ({} jobs)", names::jobs_queue(&fleet, p), bodies.len());
        for body in bodies {
            let job = Job::from_json(&body)?;
            println!("    {}  {:<28} {:<6} {}", job.id, job.task, job.action, job.resource.key());
        }
    }
    let dead = backend.embedded_queue(&names::events_dlq(&fleet)).context("events DLQ")?.peek_attributes();

    println!("\nRunning the jobs (plan mode: actions that change AWS only record what they would do):");
    let shutdown = CancellationToken::new();
    let worker = super::serve::start_worker_with(
        &backend,
        Arc::clone(&config),
        true,
        shutdown.clone(),
        Some(Duration::from_millis(100)),
        None,
        super::serve::process_id(),
    )
    .await?;
    let ledger = Ledger::new(backend.store(&names::table(&fleet)).await?, Clock::new(), Duration::from_secs(86_400));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut open = 0;
        for job in &routed {
            if !ledger.job(&job.id).await?.is_some_and(|r| r.status.is_final()) {
                open += 1;
            }
        }
        if open == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    worker.await?;
    for job in &routed {
        let record = ledger.job(&job.id).await?;
        let (status, text) = match &record {
            Some(r) => (r.status.as_str(), r.summary.clone().or(r.error.clone()).unwrap_or_default()),
            None => ("NOT STARTED", String::new()),
        };
        let checks = record.as_ref().map_or(0, |r| r.checks);
        println!("  {status:<10} {:<26} {}  checks={checks}  {text}", job.task, job.resource.key());
        for (i, attempt) in ledger.attempts(&job.id).await?.iter().enumerate() {
            println!(
                "      attempt {}: {:<9} fence {}, lock held {} ms{}",
                i + 1,
                attempt.outcome,
                attempt.fence,
                attempt.released_ms.saturating_sub(attempt.locked_ms),
                attempt.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }

    println!("\nEvents dead-lettered ({}):", dead.len());
    for attributes in dead {
        println!(
            "  {}: {}",
            attributes.get("demo-file").map(String::as_str).unwrap_or("?"),
            attributes.get(opsfleet_protocol::dead_letter::REASON_ATTRIBUTE).map(String::as_str).unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}
