//! `opsfleet audit`: what happened to a resource, a task's jobs, the jobs in a status, one job,
//! or every run of an event, from the ledger. Jobs are found through the table's secondary
//! indexes (by resource id, task, status; newest first), never by scanning it.

use anyhow::Context;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::run_id;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{AttrValue, Backend, INDEXES};
use opsfleet_protocol::Clock;
use opsfleet_worker::ledger::{JobRecord, Ledger};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// One job.
    pub job: Option<String>,
    /// Every run of an event.
    pub event: Option<String>,
    /// A resource: its id (`i-…`) or its key (`account/region/type/id`).
    pub resource: Option<String>,
    /// A task.
    pub task: Option<String>,
    /// A status (`SUCCEEDED`, `FAILED`, …).
    pub status: Option<String>,
    /// Only jobs started this long ago at most (`30m`, `6h`, `7d`).
    pub since: Option<String>,
    /// The most jobs.
    pub limit: usize,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Reads a duration like `90s`, `30m`, `6h` or `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().with_context(|| format!("`{text}` is not a duration like 30m, 6h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" | "" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("`{text}`: the unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

/// Prints the jobs a query finds, newest first, each with its attempts.
pub async fn run(path: &Path, query: Query) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    let backend = AwsBackend::from_env().await;
    let store = backend.store(&names::table(&config.fleet.name)).await?;
    let approvals = opsfleet_protocol::approval::Approvals::new(std::sync::Arc::clone(&store));
    let ledger = Ledger::new(store, Clock::new(), Duration::from_secs(86_400));
    let since_ms = match &query.since {
        Some(text) => Some(Clock::new().now_ms().saturating_sub(parse_duration(text)?.as_millis() as u64)),
        None => None,
    };
    if let Some(id) = &query.job {
        let record = ledger.job(id).await?;
        print_job(&ledger, id, record.as_ref(), query.json).await?;
    }
    if let Some(event) = &query.event {
        for task in &config.tasks {
            let run = run_id(event, &task.name);
            let counts = ledger.run(&run).await?;
            let jobs = ledger.run_jobs(&run).await?;
            if jobs.is_empty() && counts == Default::default() {
                continue;
            }
            let approval = approvals.get(&run, true).await?;
            let decided = approval.as_ref().map(|a| {
                json!({ "decision": a.decision_at(Clock::new().now_ms()).as_str(), "by": a.decided_by,
                        "at": a.decided_ms.map(|ms| utc(ms as i64)) })
            });
            let line = json!({
                "run": run, "task": task.name, "event_id": event, "succeeded": counts.succeeded,
                "failed": counts.failed, "cancelled": counts.cancelled, "skipped": counts.skipped,
                "cancelled_because": counts.cancelled_because, "approval": decided,
            });
            if query.json {
                println!("{line}");
            } else {
                println!(
                    "run {run} of task {} (event {event}): {} succeeded, {} failed, {} cancelled, {} skipped{}",
                    task.name,
                    counts.succeeded,
                    counts.failed,
                    counts.cancelled,
                    counts.skipped,
                    counts.cancelled_because.map(|w| format!("; cancelled: {w}")).unwrap_or_default()
                );
                if let Some(a) = &approval {
                    println!(
                        "    approval: {}{}",
                        a.decision_at(Clock::new().now_ms()).as_str(),
                        match (&a.decided_by, a.decided_ms) {
                            (Some(by), Some(at)) => format!(" by {by} at {}", utc(at as i64)),
                            _ => format!(" (times out {})", utc(a.expires_ms as i64)),
                        }
                    );
                }
            }
            for id in jobs {
                let record = ledger.job(&id).await?;
                print_job(&ledger, &id, record.as_ref(), query.json).await?;
            }
        }
    }
    if query.resource.is_some()
        || query.task.is_some()
        || query.status.is_some()
        || query.job.is_none() && query.event.is_none()
    {
        for (id, record) in find(&ledger, &query, since_ms).await? {
            print_job(&ledger, &id, Some(&record), query.json).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The statuses of the sparse `by-status` index: jobs that are not done well.
const OPEN: [&str; 4] = ["IN_PROGRESS", "PENDING", "FAILED", "CANCELLED"];

/// The jobs matching the filters, newest first: from the most selective index (resource, then
/// task, then status; with none, every job not done well), the other filters applied to what
/// it returns.
async fn find(ledger: &Ledger, query: &Query, since_ms: Option<u64>) -> anyhow::Result<Vec<(String, JobRecord)>> {
    let (by_resource, by_task, by_status) = (INDEXES[0], INDEXES[1], INDEXES[2]);
    let resource_id = query.resource.as_deref().map(|r| r.rsplit('/').next().unwrap_or(r).to_owned());
    let status = query.status.as_deref().map(str::to_uppercase);
    let wide = query.limit * 10;
    let mut found = match (&resource_id, &query.task, &status) {
        (Some(id), _, _) => ledger.jobs_by(by_resource, id, since_ms, wide).await?,
        (None, Some(task), _) => ledger.jobs_by(by_task, task, since_ms, wide).await?,
        (None, None, Some(status)) if OPEN.contains(&status.as_str()) => {
            ledger.jobs_by(by_status, status, since_ms, wide).await?
        }
        (None, None, Some(status)) => anyhow::bail!(
            "--status {status} needs --resource or --task: only jobs that are not done well ({}) are indexed by status",
            OPEN.join(", ")
        ),
        (None, None, None) => {
            let mut all = Vec::new();
            for status in OPEN {
                all.extend(ledger.jobs_by(by_status, status, since_ms, query.limit).await?);
            }
            all
        }
    };
    let text = |r: &JobRecord, name: &str| r.attrs.get(name).and_then(AttrValue::as_str).map(str::to_owned);
    found.retain(|(_, r)| {
        query.resource.as_deref().is_none_or(|q| !q.contains('/') || text(r, "resource").as_deref() == Some(q))
            && query.task.as_deref().is_none_or(|t| text(r, "task").as_deref() == Some(t))
            && status.as_deref().is_none_or(|s| r.status.as_str() == s)
    });
    // Newest event first; the jobs of one event by when they started.
    let int = |r: &JobRecord, name: &str| r.attrs.get(name).and_then(AttrValue::as_i64).unwrap_or(0);
    found.sort_by_key(|(_, job)| std::cmp::Reverse((int(job, by_resource.order), int(job, "started_ms"))));
    found.truncate(query.limit);
    Ok(found)
}

async fn print_job(ledger: &Ledger, id: &str, record: Option<&JobRecord>, as_json: bool) -> anyhow::Result<()> {
    let attempts = ledger.attempts(id).await?;
    if as_json {
        let mut line = Map::new();
        line.insert("job".into(), json!(id));
        line.insert("status".into(), json!(record.map(|r| r.status.as_str())));
        for (name, value) in record.map(|r| r.attrs.clone()).unwrap_or_default() {
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
        let attempts: Vec<Value> = attempts
            .iter()
            .map(|a| {
                json!({ "owner": a.owner, "fence": a.fence, "locked_ms": a.locked_ms, "started_ms": a.started_ms,
                    "released_ms": a.released_ms, "outcome": a.outcome, "error": a.error })
            })
            .collect();
        line.insert("attempts".into(), Value::Array(attempts));
        println!("{}", Value::Object(line));
        return Ok(());
    }
    let Some(record) = record else {
        println!("job {id}: not in the ledger");
        return Ok(());
    };
    let attr = |name: &str| record.attrs.get(name).and_then(AttrValue::as_str).unwrap_or("-").to_owned();
    let when = |name: &str| record.attrs.get(name).and_then(AttrValue::as_i64).map(utc).unwrap_or_else(|| "-".into());
    println!(
        "{}  {:<10} {}  task {}  {}  event {}  started {}{}",
        id,
        record.status.as_str(),
        attr("resource"),
        attr("task"),
        attr("action"),
        attr("event_id"),
        when("started_ms"),
        record
            .attrs
            .get("finished_ms")
            .and_then(AttrValue::as_i64)
            .map(|f| format!(", finished {}", utc(f)))
            .unwrap_or_default()
    );
    if let Some(summary) = &record.summary {
        println!("    result: {summary}");
    }
    if let Some(error) = &record.error {
        println!("    error: {error}");
    }
    if record.checks > 0 {
        println!("    completion checks: {}", record.checks);
    }
    if attr("action") == opsfleet_protocol::config::RUNBOOK && !record.status.is_final() {
        // A runbook under way: its finished steps' outputs, and the step at hand.
        let state: Value = serde_json::from_str(&attr("state")).unwrap_or_default();
        for step in state["done"].as_array().into_iter().flatten() {
            println!(
                "    step {} ({}): {} after {} tries: {}",
                step["step"].as_str().unwrap_or("?"),
                step["action"].as_str().unwrap_or("?"),
                step["status"].as_str().unwrap_or("?"),
                step["tries"],
                step["summary"].as_str().unwrap_or_default()
            );
        }
        if let Some(at) = state["at"].as_u64() {
            println!("    step at hand: #{} ({} failures so far)", at + 1, state["failures"]);
        }
    }
    for (n, a) in attempts.iter().enumerate() {
        println!(
            "    attempt {}: {} by {} (fence {}), started {}{}",
            n + 1,
            a.outcome,
            a.owner.split('/').next().unwrap_or_default(),
            a.fence,
            utc(a.started_ms as i64),
            a.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(())
}

fn utc(ms: i64) -> String {
    opsfleet_protocol::template::iso(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(utc(1_795_631_405_000), "2026-11-25T18:30:05Z");
    }
}
