//! The command line: subcommands and what they share (config loading, tracing, metrics,
//! signals).

mod approving;
mod audit;
mod catalog;
mod demo;
mod deployable;
mod dlq;
pub mod exporter;
mod halting;
mod health;
mod infra;
mod matching;
mod plan;
mod serve;
mod setup;
mod validate;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use opsfleet_protocol::Config;
use opsfleet_worker::ActionRegistry;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Event-driven operations automation for AWS.
#[derive(Debug, Parser)]
#[command(name = "opsfleet", version, about)]
pub struct Args {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", env = "OPSFLEET_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for production.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the jobs events expand to, one JSON object per line.
    Plan {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Event files; without any, events are read as JSON lines from stdin.
        events: Vec<PathBuf>,
        /// Expand tasks that find their resources by discovery, with EC2 `Describe*` calls
        /// (the AWS chain's credentials; member accounts through `member_role`).
        #[arg(long)]
        discover: bool,
    },
    /// Explain, per event, which tasks match and why the others do not (one JSON object per
    /// event: `matched`, `unmatched` with the first failing field and why, and the matched
    /// tasks that find no resources in the event).
    Match {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Event files; without any, events are read as JSON lines from stdin.
        events: Vec<PathBuf>,
    },
    /// Check a config and report every problem with its place.
    Validate {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the fleet's queues and table (idempotent).
    Setup {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Route events from the events queue to the job partitions.
    Router {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Serve Prometheus metrics on this address (overrides `[metrics] address`).
        #[arg(long)]
        metrics_addr: Option<String>,
    },
    /// Run jobs from the job partitions and the checks queue.
    Worker(ServeArgs),
    /// Router and worker in one process.
    Run(ServeArgs),
    /// What happened: jobs of a resource, a task or a status (newest first, from the table's
    /// indexes), one job, or every run of an event, each with its attempts.
    Audit {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// A job id.
        #[arg(long)]
        job: Option<String>,
        /// An event id: every task's run of it, and their jobs.
        #[arg(long)]
        event: Option<String>,
        /// A resource: its id (`i-…`, `vol-…`) or its key (`account/region/type/id`).
        #[arg(long)]
        resource: Option<String>,
        /// A task.
        #[arg(long)]
        task: Option<String>,
        /// A status: IN_PROGRESS, PENDING, SUCCEEDED, FAILED, CANCELLED, SKIPPED (SUCCEEDED and
        /// SKIPPED only with --resource or --task). With no filter: every job not done well.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs whose event arrived at most this long ago (`30m`, `6h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// The most jobs to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the actions this build ships, with their targets, limits, IAM actions and params.
    Actions,
    /// Print the least-privilege IAM policy of a config.
    IamPolicy {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Include what `opsfleet setup` needs to create the queues and table.
        #[arg(long)]
        setup: bool,
        /// Print instead the policy of the role in member accounts, and its trust policy.
        #[arg(long, requires = "fleet_role")]
        member: bool,
        /// The ARN of the fleet's own role, which member roles trust (with `--member`).
        #[arg(long)]
        fleet_role: Option<String>,
        /// Print instead the policy of routers run apart from the workers: no action's writes.
        #[arg(long, conflicts_with_all = ["member", "setup"])]
        router: bool,
    },
    /// Render the CloudFormation templates of a config (core, service, member role).
    Infra {
        /// What to do.
        #[command(subcommand)]
        action: InfraAction,
    },
    /// Check that a router or worker here answers on its metrics address (for container
    /// health checks): exits 0 when it does, 1 with a one-line reason when not.
    Healthcheck {
        /// The metrics address of the process.
        #[arg(long, default_value = "127.0.0.1:9090")]
        address: String,
    },
    /// Approve a run that waits for approval: its jobs go ahead.
    Approve {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// The run's id (in its notice, `opsfleet approvals` and `opsfleet audit --event`).
        run: String,
    },
    /// Deny a run that waits for approval: its jobs are cancelled (redrivable from the DLQ).
    Deny {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// The run's id.
        run: String,
    },
    /// List the runs that wait for approval, and those decided in the last week.
    Approvals {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Halt a task by hand: its jobs wait, holding no worker, until `opsfleet resume`.
    Halt {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// The task.
        task: String,
    },
    /// End a task's halt by hand (a halting alarm in ALARM still halts it).
    Resume {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// The task.
        task: String,
    },
    /// List the tasks halted now, by hand or by an alarm.
    Halts {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List or redrive dead-lettered messages.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Run the sample events through the whole path on the embedded backend.
    Demo {
        /// The fleet config (default: the bundled `examples/fleet.toml`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A folder of sample events (default: the bundled `examples/events`).
        #[arg(long)]
        events: Option<PathBuf>,
    },
}

impl Command {
    /// The log level when `RUST_LOG` is not set: the services log their work, the one-shot
    /// commands only warnings (their output is the result).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Router { .. } | Command::Worker(_) | Command::Run(_) => "info",
            Command::Demo { .. } => "error",
            _ => "warn",
        }
    }
}

/// `opsfleet infra` subcommands.
#[derive(Debug, Subcommand)]
pub enum InfraAction {
    /// Write opsfleet-core.yaml, opsfleet-service.yaml and member-role.yaml for a config.
    Render {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// The directory to write the templates in (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `opsfleet dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print dead-lettered messages with their reasons as JSON lines; they stay where they are.
    List {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Which dead-letter queues.
        #[arg(long, value_enum, default_value = "all")]
        queue: dlq::Which,
        /// At most this many messages per queue.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Send dead-lettered messages back to the queue they came from.
    Redrive {
        /// The fleet config.
        #[arg(long, short)]
        config: PathBuf,
        /// Which dead-letter queues.
        #[arg(long, value_enum)]
        queue: dlq::Which,
        /// At most this many messages per queue.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
}

/// What `worker` and `run` take.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The fleet config.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Serve Prometheus metrics on this address (overrides `[metrics] address`).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Plan mode: actions that change AWS only record what they would do.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs a subcommand.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Plan { config, events, discover } => plan::run(&config, &events, discover).await,
        Command::Validate { config } => validate::run(&config),
        Command::Match { config, events } => matching::run(&config, &events),
        Command::Setup { config } => setup::run(&config).await,
        Command::Router { config, metrics_addr } => serve::router(&config, metrics_addr).await,
        Command::Worker(args) => serve::worker(args).await,
        Command::Run(args) => serve::both(args).await,
        Command::Dlq { action: DlqAction::List { config, queue, max } } => dlq::list(&config, queue, max).await,
        Command::Dlq { action: DlqAction::Redrive { config, queue, max } } => dlq::redrive(&config, queue, max).await,
        Command::Audit { config, job, event, resource, task, status, since, limit, json } => {
            let query = audit::Query { job, event, resource, task, status, since, limit, json };
            audit::run(&config, query).await
        }
        Command::Actions => catalog::actions(),
        Command::Approve { config, run } => approving::decide(&config, &run, true).await,
        Command::Deny { config, run } => approving::decide(&config, &run, false).await,
        Command::Approvals { config } => approving::list(&config).await,
        Command::Halt { config, task } => halting::set(&config, &task, true).await,
        Command::Resume { config, task } => halting::set(&config, &task, false).await,
        Command::Halts { config } => halting::list(&config).await,
        Command::IamPolicy { config, setup, member, fleet_role, router } => {
            catalog::iam_policy(&config, setup, member.then_some(fleet_role).flatten(), router)
        }
        Command::Demo { config, events } => demo::run(config, events).await,
        Command::Infra { action: InfraAction::Render { config, out } } => infra::render(&config, &out),
        Command::Healthcheck { address } => health::check(&address),
    }
}

/// Sets up tracing on stderr; `RUST_LOG` filters (default `default_level`).
pub fn init_tracing(format: &LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // The current span's fields (a job's id, task, resource and event) go on every line.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Reads and validates a config against the actions this build ships. Every problem is
/// reported on its own line as `FILE:line N: place: reason`.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let registry = ActionRegistry::builtin();
    Config::parse(&text, Some(&registry)).map_err(|e| {
        let lines: Vec<String> = e.problems.iter().map(|p| format!("{}:{p}", path.display())).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    })
}

/// Serves Prometheus metrics on an address, if one is given.
pub fn serve_metrics(address: Option<&str>) -> anyhow::Result<()> {
    let Some(address) = address else {
        return Ok(());
    };
    let addr: std::net::SocketAddr =
        address.parse().with_context(|| format!("metrics address `{address}` is not host:port"))?;
    exporter::builder()?
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    exporter::describe();
    // Which build runs, and how many long-poll loops have stopped turning, set again well
    // within the idle time after which a gauge is dropped.
    tokio::spawn(async {
        loop {
            metrics::gauge!("opsfleet_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            let stalled = opsfleet_protocol::liveness::stalled(opsfleet_protocol::liveness::STALL);
            if !stalled.is_empty() {
                tracing::error!(loops = ?stalled, "Long-poll loops have not turned for minutes; the health check fails.");
            }
            metrics::gauge!("opsfleet_poll_loops_stalled").set(stalled.len() as f64);
            tokio::time::sleep(exporter::GAUGE_IDLE / 4).await;
        }
    });
    tracing::info!(%addr, "Serving Prometheus metrics.");
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutdown requested.");
        cancel.cancel();
    });
    token
}
