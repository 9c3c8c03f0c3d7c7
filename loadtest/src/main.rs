//! `opsfleet-loadtest`: pushes N CloudWatch alarm events, K instances each, through the
//! router and workers on the embedded backend with `noop` actions, and reports jobs/s,
//! events/s and event→start latency percentiles, with the raw throughput of one embedded FIFO
//! queue on the same job messages as a baseline measured in the same run.
//!
//! ```sh
//! cargo run --release -p opsfleet-loadtest -- --events 2000 --workers 4 --json
//! ```

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusBuilder;
use opsfleet_backend::{setup::setup, EmbeddedBackend};
use opsfleet_loadtest::events::{self, FleetShape, LoadEvent};
use opsfleet_loadtest::report::{Latency, Report, Settings};
use opsfleet_loadtest::{baseline, completion};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::{Config, Planner};
use opsfleet_router::{send_all, NoDiscovery, Router};
use opsfleet_worker::clock::Clock;
use opsfleet_worker::ledger::Ledger;
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Worker};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a worker's receive waits for messages.
const LONG_POLL: Duration = Duration::from_millis(50);

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "opsfleet-loadtest",
    version,
    about = "Pushes events through opsfleet's router and workers on the embedded backend and reports throughput and latency."
)]
struct Args {
    /// Events to send.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events: u64,
    /// Distinct instances each event names: one job each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    resources_per_event: u64,
    /// Job queue partitions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: u32,
    /// Worker consumers in the process.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    workers: u32,
    /// Jobs in flight per worker (`[worker] max_in_flight`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,
    /// How long each `noop` job sleeps, in ms.
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    /// Router long-poll loops (`[router] pollers`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    routers: u32,
    /// Give up when the jobs have not all succeeded after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metrics = PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;
    let settings = Settings {
        events: usize::try_from(args.events).context("--events is too large")?,
        resources_per_event: usize::try_from(args.resources_per_event).context("--resources-per-event is too large")?,
        partitions: args.partitions,
        workers: args.workers,
        routers: args.routers,
        max_in_flight: args.max_in_flight,
        sleep_ms: args.sleep_ms,
    };
    let shape = FleetShape {
        partitions: settings.partitions,
        routers: settings.routers,
        max_in_flight: settings.max_in_flight,
        sleep_ms: settings.sleep_ms,
        resources_per_event: settings.resources_per_event,
    };
    let config = Config::parse(&events::config_text(&shape), Some(&ActionRegistry::builtin()))
        .map_err(|e| anyhow::anyhow!("the generated config is invalid: {e}"))?;
    let config = Arc::new(config);
    let planner = Arc::new(Planner::new(config.as_ref().clone()));

    let load = events::alarm_events(settings.events, settings.resources_per_event);
    let job_ids: Vec<String> = load.iter().flat_map(LoadEvent::job_ids).collect();
    // Planned up front: checks the ids the run waits for, and feeds the baseline afterwards.
    let job_messages = baseline::job_messages(&planner, &load)?;

    let backend = EmbeddedBackend::new();
    setup(&backend, &config).await?;
    let ledger =
        Ledger::new(backend.store(&names::table(events::FLEET)).await?, Clock::new(), Duration::from_secs(86_400));

    let send = send_events(&backend, load).await?;

    let shutdown = CancellationToken::new();
    let router = Arc::new(Router::open(&backend, Arc::clone(&planner), Arc::new(NoDiscovery)).await?);
    let mut consumers = Vec::new();
    for i in 0..settings.workers {
        let hard_stop = CancellationToken::new();
        let id = format!("loadtest-worker-{i}");
        let worker =
            Worker::open(&backend, Arc::clone(&config), ActionRegistry::builtin(), id, false, hard_stop.clone())
                .await?;
        let consumer = Consumer::open(&backend, Arc::new(worker), &config).await?.with_long_poll(LONG_POLL);
        consumers.push((consumer, hard_stop));
    }

    let bar = progress_bar(job_ids.len() as u64, args.quiet)?;
    let started_ms = unix_ms();
    let started = Instant::now();
    let routing = tokio::spawn(Arc::clone(&router).run(shutdown.clone()));
    let working: Vec<JoinHandle<ConsumeSummary>> = consumers
        .into_iter()
        .map(|(consumer, hard_stop)| tokio::spawn(consumer.run(shutdown.clone(), hard_stop)))
        .collect();
    let waited =
        completion::wait_until_succeeded(&metrics, &ledger, &job_ids, &bar, Duration::from_secs(args.timeout_secs))
            .await;
    let observed = started.elapsed();
    bar.finish_and_clear();
    shutdown.cancel();
    routing.await.context("the router panicked")?;
    for handle in working {
        handle.await.context("a worker panicked")?;
    }
    waited?;

    let outcome = completion::collect(&ledger, &job_ids).await?;
    let elapsed = match outcome.last_finished_ms.checked_sub(started_ms) {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => observed,
    };
    let baseline = baseline::measure(&job_messages).await?;
    let report = Report {
        settings,
        jobs: job_ids.len(),
        send,
        elapsed,
        latency: Latency::of(&outcome.event_to_start_ms),
        baseline,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Sends every event to `loadtest-events` with the router's batching sender (batches of ten)
/// and returns how long it took.
async fn send_events(backend: &EmbeddedBackend, load: Vec<LoadEvent>) -> anyhow::Result<Duration> {
    let queue = backend.queue(&names::events_queue(events::FLEET)).await?;
    let messages: Vec<OutgoingMessage> =
        load.into_iter().map(|e| OutgoingMessage { body: e.body, ..Default::default() }).collect();
    let started = Instant::now();
    send_all(queue.as_ref(), messages).await.context("cannot send the events")?;
    Ok(started.elapsed())
}

/// A bar of jobs succeeded on stderr; hidden with `--quiet` or when stdout is not a terminal.
fn progress_bar(total: u64, quiet: bool) -> anyhow::Result<ProgressBar> {
    let target = if quiet || !std::io::stdout().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} jobs succeeded")
        .context("invalid progress bar template")?
        .progress_chars("=> ");
    Ok(ProgressBar::with_draw_target(Some(total), target).with_style(style))
}

/// Now, in Unix milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
