//! The long-running commands: `router`, `worker` and `run` (both in one process).

use super::ServeArgs;
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, StoreError};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Planner};
use opsfleet_router::{AwsDiscovery, Router};
use opsfleet_worker::presence;
use opsfleet_worker::task_protection::TaskProtection;
use opsfleet_worker::{ActionRegistry, ConsumeSummary, Consumer, Sampler, Worker};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a long-running command starts from.
struct Prepared {
    config: Config,
    backend: AwsBackend,
    accounts: Arc<AwsAccounts>,
    shutdown: CancellationToken,
}

/// The config, metrics served, the AWS backend and the clients of the fleet's accounts (their
/// EC2 calls shaped by the fleet's budget), and a token cancelled on SIGTERM/SIGINT.
async fn prepare(path: &Path, metrics_addr: Option<&str>) -> anyhow::Result<Prepared> {
    let config = super::load_config(path)?;
    super::serve_metrics(metrics_addr.or(config.metrics.address.as_deref()))?;
    let sdk = AwsBackend::sdk_config().await;
    let backend = AwsBackend::from_config(&sdk);
    let accounts = Arc::new(AwsAccounts::new(sdk, &config.fleet, Ec2Budget::new(config.ec2_budget)));
    Ok(Prepared { config, backend, accounts, shutdown: super::shutdown_on_signal() })
}

/// Says this process is alive in the fleet's table until shutdown, and splits the EC2 budget
/// by the live processes it sees, from before its first EC2 call.
async fn join_fleet(
    prepared: &Prepared,
    role: &'static str,
    id: String,
) -> anyhow::Result<Arc<dyn opsfleet_protocol::ports::Store>> {
    let table = names::table(&prepared.config.fleet.name);
    let store = opened("table", &prepared.shutdown, || prepared.backend.store(&table)).await?;
    let budget = Arc::clone(prepared.accounts.budget());
    let live = opened("fleet", &prepared.shutdown, || presence::join(store.as_ref(), role, &id)).await?;
    budget.set_fleet(live.routers, live.workers);
    if live.processes() > 1 {
        // The others count this process within a few seconds; until then its buckets start
        // empty, so that joining does not spend the fleet's burst twice.
        budget.joined_running_fleet();
    }
    tracing::info!(routers = live.routers, workers = live.workers, "Joined the fleet.");
    tokio::spawn(presence::run(Arc::clone(&store), role, id, prepared.shutdown.clone(), move |live| {
        budget.set_fleet(live.routers, live.workers);
    }));
    Ok(store)
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

impl Transient for StoreError {
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
    let prepared = prepare(path, metrics_addr.as_deref()).await?;
    let id = process_id();
    let store = join_fleet(&prepared, "router", id.clone()).await?;
    let router = open_router(&prepared).await?;
    // Routers sample the queues too: the autoscaling signal must not need the workers it scales.
    let sampler = opened("sampler", &prepared.shutdown, || {
        Sampler::open(&prepared.backend, Arc::clone(&store), &prepared.config, id.clone())
    })
    .await?;
    let sampling = tokio::spawn(sampler.run(prepared.shutdown.clone(), || 0));
    tracing::info!("Router started.");
    router.run(prepared.shutdown.clone()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sampling).await;
    tracing::info!("Router stopped.");
    Ok(ExitCode::SUCCESS)
}

async fn open_router(prepared: &Prepared) -> anyhow::Result<Arc<Router>> {
    let planner = Arc::new(Planner::new(prepared.config.clone()));
    let discovery = Arc::new(AwsDiscovery::new(prepared.accounts.clone()));
    let router = opened("router", &prepared.shutdown, || {
        Router::open(
            &prepared.backend,
            Arc::clone(&planner),
            Arc::clone(&discovery) as Arc<dyn opsfleet_router::Discover>,
        )
    })
    .await?;
    Ok(Arc::new(router))
}

/// Runs jobs until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn worker(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let prepared = prepare(&args.config, args.metrics_addr.as_deref()).await?;
    let id = process_id();
    join_fleet(&prepared, "worker", id.clone()).await?;
    let aws = Some(Arc::clone(&prepared.accounts));
    let config = Arc::new(prepared.config.clone());
    let summary = start_worker_with(&prepared.backend, config, args.dry_run, prepared.shutdown.clone(), None, aws, id)
        .await?
        .await?;
    log_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Router and worker in one process.
pub async fn both(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let prepared = prepare(&args.config, args.metrics_addr.as_deref()).await?;
    let id = process_id();
    join_fleet(&prepared, "worker", id.clone()).await?;
    let router = open_router(&prepared).await?;
    let aws = Some(Arc::clone(&prepared.accounts));
    let config = Arc::new(prepared.config.clone());
    let worker =
        start_worker_with(&prepared.backend, config, args.dry_run, prepared.shutdown.clone(), None, aws, id).await?;
    tracing::info!("Router and worker started.");
    router.run(prepared.shutdown.clone()).await;
    let summary = worker.await?;
    log_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

/// Opens a worker and starts consuming, with a long-poll wait other than SQS's 20 s when
/// given, and AWS clients for its actions (none in the demo); the handle resolves once it has
/// shut down.
pub async fn start_worker_with(
    backend: &dyn Backend,
    config: Arc<Config>,
    dry_run: bool,
    shutdown: CancellationToken,
    long_poll: Option<std::time::Duration>,
    aws: Option<Arc<AwsAccounts>>,
    id: String,
) -> anyhow::Result<tokio::task::JoinHandle<ConsumeSummary>> {
    let hard_stop = CancellationToken::new();
    let mut worker = opened("worker", &shutdown, || {
        Worker::open(backend, Arc::clone(&config), ActionRegistry::builtin(), id.clone(), dry_run, hard_stop.clone())
    })
    .await?;
    if let Some(aws) = aws {
        worker = worker.with_aws(aws);
    }
    if let Some(offset) = test_clock_offset() {
        tracing::warn!(offset_ms = offset, "This worker's wall clock is shifted (a test-only setting).");
        worker = worker.with_clock(Clock::skewed(offset));
    }
    let worker = Arc::new(worker);
    protect_while_running(&worker, &config, &shutdown);
    let mut consumer = opened("consumer", &shutdown, || Consumer::open(backend, Arc::clone(&worker), &config)).await?;
    if let Some(wait) = long_poll {
        consumer = consumer.with_long_poll(wait);
    }
    tracing::info!(worker = %id, dry_run, "Worker started.");
    Ok(tokio::spawn(consumer.run(shutdown, hard_stop)))
}

/// On ECS (`ECS_AGENT_URI` set), keeps the task out of scale-ins while it runs action steps,
/// each grant lasting a minute longer than the config's longest step.
fn protect_while_running(worker: &Arc<Worker>, config: &Config, shutdown: &CancellationToken) {
    let Ok(agent) = std::env::var("ECS_AGENT_URI") else { return };
    let longest = config.tasks.iter().map(|t| t.timeout).max().unwrap_or_default();
    let minutes = u32::try_from(longest.as_secs().div_ceil(60) + 1).unwrap_or(u32::MAX);
    match TaskProtection::new(&agent, minutes) {
        Ok(protection) => {
            let running = worker.in_flight_counter();
            tokio::spawn(protection.run(move || running.load(std::sync::atomic::Ordering::SeqCst), shutdown.clone()));
            tracing::info!(expires_minutes = minutes, "ECS task scale-in protection while jobs run.");
        }
        Err(e) => tracing::warn!(error = %e, "No ECS task scale-in protection."),
    }
}

/// `OPSFLEET_TEST_CLOCK_OFFSET_MS`: shifts the worker's wall clock, for tests of workers whose
/// clocks disagree. Test-only: nothing an operator sets. Leases never read the wall clock, so
/// it only moves the audit trail's times.
fn test_clock_offset() -> Option<i64> {
    std::env::var("OPSFLEET_TEST_CLOCK_OFFSET_MS").ok().and_then(|v| v.parse().ok())
}

/// A process id unique across hosts and restarts: host, process id and a random suffix.
pub fn process_id() -> String {
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
