//! Where a runbook is: the step at hand, its action's check state, its failures, and every
//! finished step's outputs. It is the runbook's check state, so the ledger records it each time
//! the job is handed on as pending.

use super::outputs::StepOutput;
use super::{OnFailure, RunbookParams, RunbookStep, Step};
use opsfleet_protocol::Job;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The most steps one run of a runbook may go through (`step:NAME` may go back): past it the
/// job fails instead of looping for ever.
const MAX_STEPS_RUN: usize = 100;

/// A runbook's progress on one resource.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Progress {
    /// The index of the step at hand.
    pub at: usize,
    /// Whether the step's start came to pending: its checks are due, with `state`; otherwise
    /// its start is.
    #[serde(default)]
    pub started: bool,
    /// The check state of the step's action (`null` for an action whose checks need none).
    #[serde(default)]
    pub state: Value,
    /// The step's checks so far.
    #[serde(default)]
    pub checks: u32,
    /// The step's retryable failures so far.
    #[serde(default)]
    pub failures: u32,
    /// The finished steps, in the order they ran, with their outputs.
    #[serde(default)]
    pub done: Vec<StepOutput>,
}

impl Progress {
    /// The job the step at hand runs as.
    pub(super) fn step_job(&self, job: &Job, spec: &RunbookStep) -> Job {
        super::step_job(job, spec, &self.done)
    }

    /// What the runbook does after a call of the step at hand came to `step`.
    pub(super) fn after(mut self, p: &RunbookParams, step: Step) -> Step {
        let spec = &p.steps[self.at];
        let next = self.at + 1;
        match step {
            Step::Done { summary } => {
                self.record(spec, "succeeded", summary);
                self.go_to(p, next)
            }
            Step::Skipped { reason } => {
                self.record(spec, "skipped", reason);
                self.go_to(p, next)
            }
            Step::Pending { check_after, state } => {
                self.started = true;
                self.state = state;
                self.checks += 1;
                Step::pending(check_after, &self)
            }
            Step::Failed { retryable, error } => {
                self.failures += 1;
                if retryable && self.failures <= spec.retries {
                    // Tried again after a backoff: its start again, or its check with the same
                    // state.
                    let backoff = Duration::from_secs(1 << self.failures.min(8)).min(Duration::from_secs(300));
                    return Step::pending(backoff, &self);
                }
                let error = match retryable {
                    true => format!("{error} (failure {}, over the step's retries = {})", self.failures, spec.retries),
                    false => error,
                };
                let on_failure = p.on_failure(self.at);
                self.record(spec, "failed", error.clone());
                match on_failure {
                    Ok(OnFailure::Continue) => self.go_to(p, next),
                    Ok(OnFailure::Goto(next)) => self.go_to(p, next),
                    Ok(OnFailure::Abort) => Step::Failed {
                        retryable: false,
                        error: format!("step `{}` ({}) failed: {error}", spec.name, spec.action),
                    },
                    Err(e) => Step::Failed { retryable: false, error: e },
                }
            }
        }
    }

    /// An approval step reached: handed on to the worker, whose check of it waits for the
    /// run's approval.
    pub(super) fn awaiting_approval(mut self) -> Step {
        self.started = true;
        self.state = Value::Null;
        Step::pending(Duration::ZERO, &self)
    }

    /// Records the step at hand as finished with `status` and what it said.
    fn record(&mut self, spec: &RunbookStep, status: &'static str, text: String) {
        let tries = self.failures + u32::from(status != "failed");
        self.done.push(StepOutput::new(spec, status, text, tries));
    }

    /// Moves on to step `next`: the job is handed on as pending at once, so that the ledger
    /// records this step as finished before the next one starts; past the last step, the
    /// runbook is finished.
    fn go_to(mut self, p: &RunbookParams, next: usize) -> Step {
        if next >= p.steps.len() {
            return self.finished();
        }
        if self.done.len() >= MAX_STEPS_RUN {
            return Step::Failed {
                retryable: false,
                error: format!("ran {MAX_STEPS_RUN} steps without finishing: does an on_failure = \"step:NAME\" loop?"),
            };
        }
        self.at = next;
        self.started = false;
        self.state = Value::Null;
        self.checks = 0;
        self.failures = 0;
        Step::pending(Duration::ZERO, &self)
    }

    /// What the finished runbook came to: done with every step's summary, or skipped when
    /// every step was.
    pub(super) fn finished(&self) -> Step {
        let lines: Vec<String> = self.done.iter().map(StepOutput::line).collect();
        if !self.done.is_empty() && self.done.iter().all(|o| o.status == "skipped") {
            return Step::Skipped { reason: format!("every step skipped: {}", lines.join("; ")) };
        }
        Step::Done { summary: lines.join("; ") }
    }
}
