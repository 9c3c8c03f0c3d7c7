//! `opsfleet match`: why each task did or did not fire for an event.

use anyhow::Context;
use opsfleet_protocol::config::Targets;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::Planner;
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints one JSON object per event: the tasks that matched, each task that did not with the
/// first field that failed and why, and the matched tasks that find nothing in the event.
/// Input that is not an event is reported on stderr as one line naming it, and the exit code
/// is non-zero.
pub fn run(config: &Path, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let planner = Planner::new(super::load_config(config)?);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    // Prints one body's line, or its reason on stderr; false when it is not an event.
    let one = |name: &str, body: &str, out: &mut dyn Write| -> anyhow::Result<bool> {
        match explain(&planner, name, body) {
            Ok(line) => writeln!(out, "{line}")?,
            Err(reason) => {
                eprintln!("{name}: {reason}");
                return Ok(false);
            }
        }
        Ok(true)
    };
    if files.is_empty() {
        for (index, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("cannot read stdin")?;
            if !line.trim().is_empty() {
                failed |= !one(&format!("stdin:{}", index + 1), &line, &mut out)?;
            }
        }
    } else {
        for file in files {
            let name = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(body) => failed |= !one(&name, &body, &mut out)?,
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

/// The explanation of one body, or why it is not an event.
fn explain(planner: &Planner, name: &str, body: &str) -> Result<Value, String> {
    let event = normalize(body).map_err(|e| e.to_string())?;
    let mut matched = Vec::new();
    let mut unmatched = Vec::new();
    for task in &planner.config().tasks {
        match task.pattern.explain(&event.document) {
            None => matched.push(task.name.clone()),
            Some(m) => unmatched.push(json!({ "task": task.name, "field": m.field, "why": m.why })),
        }
    }
    let mut line = json!({ "event": name, "matched": matched, "unmatched": unmatched });
    // The steps each matched runbook would run on every resource.
    let runbooks: Vec<Value> = planner
        .config()
        .tasks
        .iter()
        .filter(|t| matched.contains(&t.name) && t.action == opsfleet_protocol::config::RUNBOOK)
        .map(|t| {
            let steps = t.params["steps"].as_array().cloned().unwrap_or_default();
            let named: Vec<String> = steps
                .iter()
                .map(|s| format!("{} ({})", s["name"].as_str().unwrap_or("?"), s["action"].as_str().unwrap_or("?")))
                .collect();
            json!({ "task": t.name, "steps": named })
        })
        .collect();
    if !runbooks.is_empty() {
        line["runbooks"] = json!(runbooks);
    }
    // What the matched tasks find in the event: nothing, or resources by discovery later.
    match planner.plan(&event, 0) {
        Ok(plan) => {
            let mut found_nothing = Vec::new();
            for task in planner.config().tasks.iter().filter(|t| plan.matched.contains(&t.name)) {
                let jobs = plan.jobs.iter().filter(|j| j.task == task.name).count();
                let why = match &task.targets {
                    Targets::Event if jobs == 0 && task.acts_on.is_empty() => "the event names no resource".to_owned(),
                    Targets::Event if jobs == 0 => {
                        let kinds: Vec<&str> = task.acts_on.iter().map(|k| k.as_str()).collect();
                        format!("the event names no {}", kinds.join(" or "))
                    }
                    Targets::Event => continue,
                    Targets::Discover(query) => format!("finds {} by discovery when it runs", query.kind),
                };
                found_nothing.push(json!({ "task": task.name, "why": why }));
            }
            line["no_jobs_from_the_event"] = json!(found_nothing);
        }
        Err(e) => line["rejected"] = json!(e.to_string()),
    }
    Ok(line)
}
