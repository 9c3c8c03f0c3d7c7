//! `opsfleet approve RUN`, `opsfleet deny RUN` and `opsfleet approvals`: deciding runs that
//! wait for approval, and what waits. Who decided is the caller's identity from STS, recorded
//! with the decision (and shown by `opsfleet audit --event`).

use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::approval::{Approvals, Decided};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::template::iso;
use opsfleet_protocol::Clock;
use std::path::Path;
use std::process::ExitCode;

/// Approves (`approve`) or denies a waiting run.
pub async fn decide(path: &Path, run: &str, approve: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let accounts = AwsAccounts::new(AwsBackend::sdk_config().await, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let by = accounts.caller_arn().await?;
    let approvals = approvals(&config).await?;
    match approvals.decide(run, approve, &by, Clock::new().now_ms()).await? {
        Decided::Recorded if approve => println!("run {run} approved by {by}: its jobs go ahead"),
        Decided::Recorded => println!("run {run} denied by {by}: its jobs are cancelled (redrivable from the DLQ)"),
        Decided::Unknown => anyhow::bail!("no run {run} waits for approval in fleet {}", config.fleet.name),
        Decided::Already(found) => anyhow::bail!(
            "run {run} is {} already{}",
            found.decision.as_str(),
            found.decided_by.map(|by| format!(" ({by})")).unwrap_or_default()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every approval kept: waiting ones first with what they would do, then decided ones.
pub async fn list(path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let now = Clock::new().now_ms();
    let all = approvals(&config).await?.list().await?;
    if all.is_empty() {
        println!("no run waits for approval");
    }
    for a in all {
        let decision = a.decision_at(now);
        println!(
            "{}  {:<9} task {}  {} resources  asked {}  {}",
            a.run,
            decision.as_str(),
            a.task,
            a.count,
            iso(a.requested_ms),
            match (&a.decided_by, a.decided_ms) {
                (Some(by), Some(at)) => format!("decided by {by} at {}", iso(at)),
                _ => format!("times out {}", iso(a.expires_ms)),
            }
        );
        if decision == opsfleet_protocol::approval::Decision::Waiting {
            println!("    it will {}", a.what);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn approvals(config: &opsfleet_protocol::Config) -> anyhow::Result<Approvals> {
    let backend = AwsBackend::from_env().await;
    Ok(Approvals::new(backend.store(&names::table(&config.fleet.name)).await?))
}
