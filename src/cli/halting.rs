//! `opsfleet halt TASK`, `opsfleet resume TASK` and `opsfleet halts`: halting a task's jobs by
//! hand, ending that, and what is halted now (by hand or by an alarm in ALARM). Who halted or
//! resumed is the caller's identity from STS, recorded with the halt.

use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::halt::Halts;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::Clock;
use std::path::Path;
use std::process::ExitCode;

/// Halts `task` by hand (`halted`), or ends its halt by hand.
pub async fn set(path: &Path, task: &str, halted: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    if config.task(task).is_none() {
        let known: Vec<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
        anyhow::bail!("no task `{task}` in {}; its tasks are {}", path.display(), known.join(", "));
    }
    let accounts = AwsAccounts::new(AwsBackend::sdk_config().await, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let by = accounts.caller_arn().await?;
    let halts = halts(&config).await?;
    halts.set_by_hand(task, halted, &by, Clock::new().now_ms()).await?;
    if halted {
        println!("{task} halted by {by}: its jobs wait until `opsfleet resume {task}`");
    } else {
        println!("{task} resumed by {by}");
    }
    for halt in halts.of_task(task).await?.iter().filter(|h| h.cause != "hand") {
        println!("still halted: {}", halt.line());
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every halt in force, one line each.
pub async fn list(path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let all = halts(&config).await?.all().await?;
    if all.is_empty() {
        println!("no task is halted");
    }
    for halt in all {
        println!("{}", halt.line());
    }
    Ok(ExitCode::SUCCESS)
}

async fn halts(config: &opsfleet_protocol::Config) -> anyhow::Result<Halts> {
    let backend = AwsBackend::from_env().await;
    Ok(Halts::new(backend.store(&names::table(&config.fleet.name)).await?))
}
