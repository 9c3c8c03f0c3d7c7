//! `opsfleet setup`.

use anyhow::Context;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::setup::setup;
use std::path::Path;
use std::process::ExitCode;

/// Creates the fleet's queues and table; running it again changes nothing.
pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    let created = setup(&backend, &config).await.context("setup failed")?;
    for name in created {
        println!("ready: {name}");
    }
    Ok(ExitCode::SUCCESS)
}
