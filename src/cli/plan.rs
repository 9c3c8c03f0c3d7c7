//! `opsfleet plan`: the jobs events expand to, without touching AWS unless asked to run
//! discoveries (`--discover`).

use anyhow::Context;
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::{Job, Planner};
use opsfleet_router::{AwsDiscovery, Discover};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Prints one JSON object per job (`id`, `task`, `action`, `params`, `partition`, `resource`).
/// Input that is not an event, or that the router would reject, is reported on stderr as one
/// line naming the file, and the exit code is non-zero; an event that matches nothing prints
/// nothing.
pub async fn run(config: &Path, files: &[PathBuf], discover: bool) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let discovery: Option<AwsDiscovery> = if discover {
        let sdk = AwsBackend::sdk_config().await;
        Some(AwsDiscovery::new(Arc::new(AwsAccounts::new(sdk, &config.fleet, Ec2Budget::new(config.ec2_budget)))))
    } else {
        None
    };
    let planner = Planner::new(config);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    if files.is_empty() {
        for (index, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("cannot read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            failed |= !plan_one(&planner, discovery.as_ref(), &format!("stdin:{}", index + 1), &line, &mut out).await?;
        }
    } else {
        for file in files {
            let name = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(body) => failed |= !plan_one(&planner, discovery.as_ref(), &name, &body, &mut out).await?,
                Err(e) => {
                    eprintln!("{name}: cannot read: {e}");
                    failed = true;
                }
            }
        }
    }
    out.flush()?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Prints the jobs of one body, or its reason on stderr; false when the body was refused.
async fn plan_one(
    planner: &Planner,
    discovery: Option<&AwsDiscovery>,
    name: &str,
    body: &str,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match plan_body(planner, discovery, body).await {
        Ok((jobs, notes)) => {
            for job in jobs {
                writeln!(out, "{}", plan_line(&job))?;
            }
            for note in notes {
                eprintln!("{name}: {note}");
            }
            Ok(true)
        }
        Err(reason) => {
            eprintln!("{name}: {reason}");
            Ok(false)
        }
    }
}

async fn plan_body(
    planner: &Planner,
    discovery: Option<&AwsDiscovery>,
    body: &str,
) -> Result<(Vec<Job>, Vec<String>), String> {
    let event = normalize(body).map_err(|e| e.to_string())?;
    let plan = planner.plan(&event, 0).map_err(|e| e.to_string())?;
    let mut jobs = plan.jobs;
    let mut notes = Vec::new();
    for d in &plan.discoveries {
        match discovery {
            Some(discovery) => {
                let found = discovery.discover(d).await.map_err(|e| e.to_string())?;
                planner.check_cap(jobs.len() + found.len()).map_err(|e| e.to_string())?;
                jobs.extend(planner.jobs_for(&event, d.task, &found, 0).map_err(|e| e.to_string())?);
            }
            None => notes.push(format!(
                "task {} finds {} by discovery at run time (accounts {:?}, regions {:?}); not expanded here (--discover runs it)",
                d.task_name, d.query.kind, d.accounts, d.regions
            )),
        }
    }
    for job in &jobs {
        job.to_json().map_err(|e| e.to_string())?;
    }
    Ok((jobs, notes))
}

fn plan_line(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id,
        "task": job.task,
        "action": job.action,
        "params": job.params,
        "partition": job.partition,
        "resource": job.resource,
    })
}
