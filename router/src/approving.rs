//! Runs that wait for approval: for each run of a task with `approve`, the router asks for its
//! approval (what it does, to which resources, until when) before any of its jobs go out.

use opsfleet_protocol::approval::{Approval, Approvals, Request};
use opsfleet_protocol::config::{Task, RUNBOOK};
use opsfleet_protocol::ports::{Store, StoreError};
use opsfleet_protocol::{Config, Job};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the router asks for approvals.
pub(crate) struct RunApprovals {
    approvals: Approvals,
}

impl RunApprovals {
    /// The fleet's approvals, kept in its table; none when no task asks for any.
    pub(crate) fn of(store: &Arc<dyn Store>, config: &Config) -> Option<Self> {
        let asks = config.tasks.iter().any(|t| t.approve.is_some());
        asks.then(|| RunApprovals { approvals: Approvals::new(Arc::clone(store)) })
    }

    /// Asks for the approval of every run among `jobs` whose task wants one (once per run).
    pub(crate) async fn request(&self, config: &Config, jobs: &[Job], now_ms: u64) -> Result<(), StoreError> {
        let mut runs: BTreeMap<String, (&Task, Vec<&Job>)> = BTreeMap::new();
        for job in jobs {
            if let Some(task) = config.task(&job.task).filter(|t| t.approve.is_some()) {
                runs.entry(job.run_id()).or_insert_with(|| (task, Vec::new())).1.push(job);
            }
        }
        for (run, (task, jobs)) in runs {
            let Some(approve) = &task.approve else { continue };
            let request = Request {
                run,
                task: &task.name,
                event_id: &jobs[0].event_id,
                what: what(task),
                targets: jobs.iter().map(|j| j.resource.key()).collect(),
                count: jobs.len() as u32,
            };
            let approval = Approval::waiting(request, approve, now_ms);
            self.approvals.request(&approval).await?;
            tracing::info!(run = %approval.run, task = %task.name, targets = approval.count, "Run waits for approval.");
        }
        Ok(())
    }
}

/// What a task does to each resource, in a few words: its action and params, or its steps.
fn what(task: &Task) -> String {
    if task.action == RUNBOOK {
        let steps = task.params.get("steps").and_then(Value::as_array).into_iter().flatten();
        let named: Vec<String> = steps
            .map(|s| format!("{} ({})", s["name"].as_str().unwrap_or("?"), s["action"].as_str().unwrap_or("?")))
            .collect();
        return format!("run the steps {}", named.join(" → "));
    }
    format!("run {} with params {}", task.action, task.params)
}
