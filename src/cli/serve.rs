//! The long-running commands: `router` (and, with the worker, `worker` and `run`).

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::Planner;
use opsfleet_router::{NoDiscovery, Router};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Routes events until SIGTERM/SIGINT.
pub async fn router(path: &Path, metrics_addr: Option<String>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    super::serve_metrics(
        metrics_addr
            .as_deref()
            .or(config.metrics.address.as_deref()),
    )?;
    let backend = AwsBackend::from_env().await;
    let planner = Arc::new(Planner::new(config));
    let router = Arc::new(Router::open(&backend, planner, Arc::new(NoDiscovery)).await?);
    let shutdown = super::shutdown_on_signal();
    tracing::info!("Router started.");
    router.run(shutdown).await;
    tracing::info!("Router stopped.");
    Ok(ExitCode::SUCCESS)
}
