//! The long-running commands: `router`, `worker` and `run` (both in one process).

use super::ServeArgs;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::{Config, Planner};
use opsfleet_router::{NoDiscovery, Router};
use opsfleet_worker::clock::Clock;
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Worker};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every long-running command starts from: the config, metrics served, the AWS
/// backend, and a token cancelled on SIGTERM/SIGINT.
async fn prepare(path: &Path, metrics_addr: Option<&str>) -> anyhow::Result<(Config, AwsBackend, CancellationToken)> {
    let config = super::load_config(path)?;
    super::serve_metrics(metrics_addr.or(config.metrics.address.as_deref()))?;
    Ok((config, AwsBackend::from_env().await, super::shutdown_on_signal()))
}

/// How long start-up keeps trying when AWS answers with throttling, server errors or not at
/// all, before the process gives up (with a one-line reason and a non-zero exit).
const START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Opens what a process needs, trying again while the failures are transient (a throttled
/// `GetQueueUrl` must not kill a worker at start, nor a minute's outage a whole deploy).
async fn opened<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, open: F) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Transient,
{
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) if e.transient() && tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() => {
                tracing::warn!(what, error = %e, "Opening failed; trying again.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Errors that may pass.
trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for opsfleet_worker::WorkerError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for opsfleet_router::RouterError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for opsfleet_protocol::ports::QueueError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

/// Routes events until SIGTERM/SIGINT.
pub async fn router(path: &Path, metrics_addr: Option<String>) -> anyhow::Result<ExitCode> {
    let (config, backend, shutdown) = prepare(path, metrics_addr.as_deref()).await?;
    let planner = Arc::new(Planner::new(config));
    let router = Arc::new(
        opened("router", &shutdown, || Router::open(&backend, Arc::clone(&planner), Arc::new(NoDiscovery))).await?,
    );
    tracing::info!("Router started.");
    router.run(shutdown).await;
    tracing::info!("Router stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Runs jobs until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn worker(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, backend, shutdown) = prepare(&args.config, args.metrics_addr.as_deref()).await?;
    let summary = start_worker(&backend, Arc::new(config), args.dry_run, shutdown).await?.await?;
    log_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Router and worker in one process.
pub async fn both(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, backend, shutdown) = prepare(&args.config, args.metrics_addr.as_deref()).await?;
    let config = Arc::new(config);
    let planner = Arc::new(Planner::new(config.as_ref().clone()));
    let router = Arc::new(
        opened("router", &shutdown, || Router::open(&backend, Arc::clone(&planner), Arc::new(NoDiscovery))).await?,
    );
    let worker = start_worker(&backend, Arc::clone(&config), args.dry_run, shutdown.clone()).await?;
    tracing::info!("Router and worker started.");
    router.run(shutdown).await;
    let summary = worker.await?;
    log_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Opens a worker and starts consuming; the handle resolves once it has shut down.
pub async fn start_worker(
    backend: &dyn Backend,
    config: Arc<Config>,
    dry_run: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<ConsumeSummary>> {
    start_worker_with(backend, config, dry_run, shutdown, None).await
}

/// As [`start_worker`], with a long-poll wait other than SQS's 20 s.
pub async fn start_worker_with(
    backend: &dyn Backend,
    config: Arc<Config>,
    dry_run: bool,
    shutdown: CancellationToken,
    long_poll: Option<std::time::Duration>,
) -> anyhow::Result<tokio::task::JoinHandle<ConsumeSummary>> {
    let hard_stop = CancellationToken::new();
    let id = worker_id();
    let mut worker = opened("worker", &shutdown, || {
        Worker::open(backend, Arc::clone(&config), ActionRegistry::builtin(), id.clone(), dry_run, hard_stop.clone())
    })
    .await?;
    if let Some(offset) = test_clock_offset() {
        tracing::warn!(offset_ms = offset, "This worker's wall clock is shifted (a test-only setting).");
        worker = worker.with_clock(Clock::skewed(offset));
    }
    let worker = Arc::new(worker);
    let mut consumer = opened("consumer", &shutdown, || Consumer::open(backend, Arc::clone(&worker), &config)).await?;
    if let Some(wait) = long_poll {
        consumer = consumer.with_long_poll(wait);
    }
    tracing::info!(worker = %id, dry_run, "Worker started.");
    Ok(tokio::spawn(consumer.run(shutdown, hard_stop)))
}

/// `OPSFLEET_TEST_CLOCK_OFFSET_MS`: shifts the worker's wall clock, for tests of workers whose
/// clocks disagree. Test-only: nothing an operator sets. Leases never read the wall clock, so
/// it only moves the audit trail's times.
fn test_clock_offset() -> Option<i64> {
    std::env::var("OPSFLEET_TEST_CLOCK_OFFSET_MS").ok().and_then(|v| v.parse().ok())
}

/// A worker id unique across hosts and restarts: host, process id and a random suffix.
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix: u32 =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

fn log_summary(summary: &ConsumeSummary) {
    tracing::info!(
        handled = summary.handled,
        returned = summary.returned,
        interrupted = summary.interrupted,
        "Worker stopped."
    );
}
