//! `opsfleet-loadtest`: pushes CloudWatch alarm events, K instances each, through the router and
//! workers with `noop` actions, on the embedded backend or on whatever SQS and DynamoDB
//! endpoints the SDK's chain gives (`--backend aws`), and reports jobs/s, event→start and
//! event→done latency percentiles, requests per job and peak memory, against a baseline
//! measured in the same run.
//!
//! ```sh
//! cargo run --release -p opsfleet-loadtest -- --events 2000 --workers 4 --json
//! AWS_ENDPOINT_URL_SQS=… AWS_ENDPOINT_URL_DYNAMODB=… \
//!   cargo run --release -p opsfleet-loadtest -- --backend aws --events 2000 --rate 200
//! ```

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics_exporter_prometheus::PrometheusBuilder;
use opsfleet_backend::aws::AwsBackend;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_loadtest::counting::CountingBackend;
use opsfleet_loadtest::events::{self, FleetShape, LoadEvent};
use opsfleet_loadtest::report::{peak_rss_mib, Latency, Report, Settings};
use opsfleet_loadtest::{baseline, completion, generator, sdk_baseline};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Planner};
use opsfleet_router::{NoDiscovery, Router};
use opsfleet_worker::ledger::Ledger;
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Worker};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// The in-process queues and store.
    Embedded,
    /// SQS and DynamoDB at the SDK chain's endpoints (`AWS_ENDPOINT_URL_SQS`, …).
    Aws,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "opsfleet-loadtest",
    version,
    about = "Pushes events through opsfleet's router and workers and reports throughput, latency and requests per job."
)]
struct Args {
    /// Where the fleet runs.
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    backend: BackendKind,
    /// Events to send.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events: u64,
    /// Send events at this many a second (open loop); without it, all are sent at once.
    #[arg(long, value_parser = positive)]
    rate: Option<f64>,
    /// Distinct instances each event names: one job each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    resources_per_event: u64,
    /// Job queue partitions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    partitions: u32,
    /// Worker consumers in the process; 0 measures the router alone (until every job is sent).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1000))]
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
    /// How long a worker's receive waits for messages, in ms.
    #[arg(long, default_value_t = 1000)]
    long_poll_ms: u64,
    /// The fleet's name (default: `loadtest` embedded, `lt<time>` on AWS, fresh each run).
    #[arg(long)]
    fleet: Option<String>,
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

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text} is not a positive number")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metrics = PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;
    let fleet = match (&args.fleet, args.backend) {
        (Some(name), _) => name.clone(),
        (None, BackendKind::Embedded) => events::FLEET.to_owned(),
        (None, BackendKind::Aws) => format!("lt{}", generator::unix_ms() % 100_000_000),
    };
    let settings = Settings {
        backend: match args.backend {
            BackendKind::Embedded => "embedded",
            BackendKind::Aws => "aws",
        },
        events: usize::try_from(args.events).context("--events is too large")?,
        resources_per_event: usize::try_from(args.resources_per_event).context("--resources-per-event is too large")?,
        partitions: args.partitions,
        workers: args.workers,
        routers: args.routers,
        max_in_flight: args.max_in_flight,
        sleep_ms: args.sleep_ms,
        rate: args.rate,
    };
    let shape = FleetShape {
        fleet: &fleet,
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

    let aws = match args.backend {
        BackendKind::Aws => Some(AwsBackend::from_env().await),
        BackendKind::Embedded => None,
    };
    let inner: Arc<dyn Backend> = match &aws {
        Some(aws) => Arc::new(aws.clone()),
        None => Arc::new(EmbeddedBackend::new()),
    };
    setup(inner.as_ref(), &config).await?;
    // The generator and the ledger reads afterwards go around the counting layer: only what
    // router and workers ask counts.
    let counting = CountingBackend::new(Arc::clone(&inner));
    let table = names::table(&fleet);
    let ledger = Ledger::new(inner.store(&table).await?, Clock::new(), Duration::from_secs(86_400));
    let events_queue_name = names::events_queue(&fleet);
    let events_queue = inner.queue(&events_queue_name).await?;

    let at_once = match settings.rate {
        None => Some(generator::send_at_once(Arc::clone(&events_queue), load.clone()).await?),
        Some(_) => None,
    };

    let shutdown = CancellationToken::new();
    let router = Arc::new(Router::open(&counting, Arc::clone(&planner), Arc::new(NoDiscovery)).await?);
    let mut consumers = Vec::new();
    for i in 0..settings.workers {
        let hard_stop = CancellationToken::new();
        let id = format!("loadtest-worker-{i}");
        let worker =
            Worker::open(&counting, Arc::clone(&config), ActionRegistry::builtin(), id, false, hard_stop.clone())
                .await?;
        let consumer = Consumer::open(&counting, Arc::new(worker), &config)
            .await?
            .with_long_poll(Duration::from_millis(args.long_poll_ms));
        consumers.push((consumer, hard_stop));
    }

    let bar = progress_bar(job_ids.len() as u64, args.quiet)?;
    let before = counting.counts();
    let routing = tokio::spawn(Arc::clone(&router).run(shutdown.clone()));
    let working: Vec<JoinHandle<ConsumeSummary>> = consumers
        .into_iter()
        .map(|(consumer, hard_stop)| tokio::spawn(consumer.run(shutdown.clone(), hard_stop)))
        .collect();
    let sending = settings.rate.map(|rate| tokio::spawn(generator::send_open_loop(events_queue, load, rate)));
    let started = std::time::Instant::now();
    let timeout = Duration::from_secs(args.timeout_secs);
    let waited = if settings.workers == 0 {
        completion::wait_until_emitted(&metrics, job_ids.len() as u64, timeout).await
    } else {
        completion::wait_until_succeeded(&metrics, &ledger, &job_ids, &bar, timeout).await
    };
    let routed_in = started.elapsed();
    let requests = counting.counts().since(&before);
    bar.finish_and_clear();
    shutdown.cancel();
    routing.await.context("the router panicked")?;
    for handle in working {
        handle.await.context("a worker panicked")?;
    }
    waited?;
    let (schedule, send_lag) = match (at_once, sending) {
        (Some(schedule), _) => (schedule, Duration::ZERO),
        (None, Some(sending)) => sending.await.context("the generator panicked")??,
        (None, None) => anyhow::bail!("no events were sent"),
    };
    let peak_rss_mib = peak_rss_mib();

    let (elapsed, latency) = if settings.workers == 0 {
        // The router alone: from its start (every event already queued, or the first one due)
        // until its last job was sent.
        (routed_in, None)
    } else {
        let outcome = completion::collect(&ledger, &job_ids, &schedule).await?;
        let first_due = schedule.values().copied().min().unwrap_or(0);
        let elapsed = Duration::from_millis(outcome.last_finished_ms.saturating_sub(first_due).max(1));
        (elapsed, Some((Latency::of(&outcome.event_to_start_ms), Latency::of(&outcome.event_to_done_ms))))
    };
    let (baseline_kind, baseline) = match &aws {
        None => (
            "one embedded FIFO queue: send, then receive and delete, ten at a time",
            baseline::measure(&job_messages).await?,
        ),
        Some(aws) => {
            let wire = sdk_baseline::Wire {
                sqs: aws.sqs().clone(),
                dynamodb: aws.dynamodb().clone(),
                table,
                queue: format!("{fleet}-baseline.fifo"),
            };
            let receivers = (settings.workers.max(1) * settings.partitions) as usize;
            let measured = sdk_baseline::measure(&wire, &job_messages, settings.routers as usize, receivers).await?;
            ("bare SDK: batched send, receive and delete on one FIFO queue, one conditional write per job", measured)
        }
    };
    let report = Report {
        settings,
        jobs: job_ids.len(),
        elapsed,
        send_lag,
        latency,
        requests,
        events_queue: events_queue_name,
        peak_rss_mib,
        baseline_kind,
        baseline,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
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
