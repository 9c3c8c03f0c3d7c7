//! `opsfleet plan`: the jobs events expand to, without touching AWS.

use anyhow::Context;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::{Job, Planner};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints one JSON object per job (`id`, `task`, `action`, `params`, `partition`, `resource`).
/// Input that is not an event, or that the router would reject, is reported on stderr as one
/// line naming the file, and the exit code is non-zero; an event that matches nothing prints
/// nothing.
pub fn run(config: &Path, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let planner = Planner::new(super::load_config(config)?);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    if files.is_empty() {
        for (index, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("cannot read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            failed |= !plan_one(&planner, &format!("stdin:{}", index + 1), &line, &mut out)?;
        }
    } else {
        for file in files {
            let name = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(body) => failed |= !plan_one(&planner, &name, &body, &mut out)?,
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
fn plan_one(planner: &Planner, name: &str, body: &str, out: &mut dyn Write) -> anyhow::Result<bool> {
    match plan_body(planner, body) {
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

fn plan_body(planner: &Planner, body: &str) -> Result<(Vec<Job>, Vec<String>), String> {
    let event = normalize(body).map_err(|e| e.to_string())?;
    let plan = planner.plan(&event, 0).map_err(|e| e.to_string())?;
    for job in &plan.jobs {
        job.to_json().map_err(|e| e.to_string())?;
    }
    let notes = plan
        .discoveries
        .iter()
        .map(|d| {
            format!(
                "task {} finds {} by discovery at run time (accounts {:?}, regions {:?}); not expanded here",
                d.task_name, d.query.kind, d.accounts, d.regions
            )
        })
        .collect();
    Ok((plan.jobs, notes))
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
