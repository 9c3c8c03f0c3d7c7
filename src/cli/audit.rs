//! `opsfleet audit`: the ledger of a job, or of every run of an event, as JSON lines.

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::run_id;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{AttrValue, Backend};
use opsfleet_worker::clock::Clock;
use opsfleet_worker::ledger::Ledger;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Prints one JSON object per job (`job`, `status`, its ledger attributes, `attempts`), for
/// one job id or for every job of every task's run of an event, after one object per run
/// (`run`, `task`, counts). A job the ledger does not know prints `"status": null`.
pub async fn run(path: &Path, job: Option<String>, event: Option<String>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    let ledger =
        Ledger::new(backend.store(&names::table(&config.fleet.name)).await?, Clock::new(), Duration::from_secs(86_400));
    if let Some(id) = job {
        println!("{}", job_line(&ledger, &id).await?);
    }
    if let Some(event) = event {
        for task in &config.tasks {
            let run = run_id(&event, &task.name);
            let counts = ledger.run(&run).await?;
            let jobs = ledger.run_jobs(&run).await?;
            if jobs.is_empty() && counts == Default::default() {
                continue;
            }
            let line = json!({
                "run": run,
                "task": task.name,
                "event_id": event,
                "succeeded": counts.succeeded,
                "failed": counts.failed,
                "cancelled": counts.cancelled,
                "cancelled_because": counts.cancelled_because,
            });
            println!("{line}");
            for id in jobs {
                println!("{}", job_line(&ledger, &id).await?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn job_line(ledger: &Ledger, id: &str) -> anyhow::Result<Value> {
    let record = ledger.job(id).await?;
    let attempts: Vec<Value> = ledger
        .attempts(id)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "owner": a.owner,
                "fence": a.fence,
                "locked_ms": a.locked_ms,
                "started_ms": a.started_ms,
                "released_ms": a.released_ms,
                "outcome": a.outcome,
                "error": a.error,
            })
        })
        .collect();
    let mut line = Map::new();
    line.insert("job".into(), json!(id));
    line.insert("status".into(), json!(record.as_ref().map(|r| r.status.as_str())));
    for (name, value) in record.map(|r| r.attrs).unwrap_or_default() {
        if name == "status" {
            continue;
        }
        let value = match value {
            AttrValue::S(s) => json!(s),
            AttrValue::N(n) => json!(n),
            AttrValue::Bool(b) => json!(b),
        };
        line.insert(name, value);
    }
    line.insert("attempts".into(), Value::Array(attempts));
    Ok(Value::Object(line))
}
