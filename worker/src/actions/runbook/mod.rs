//! `runbook`: several steps on each resource, in order, under the job's one lock. A task with
//! `steps = [...]` runs it; each step names an action and its params, its own `retries` and
//! `timeout_secs`, and what to do when it fails (`on_failure`: `abort`, `continue`, or
//! `step:NAME`).
//!
//! One call of the runbook runs one call of one step's action (a start or a check). A step that
//! ends hands the job on as pending at once: the ledger records the runbook's progress (the step
//! at hand and every finished step's outputs) before the next step starts, so a worker that
//! dies mid-run resumes at the recorded step and never runs a finished one again. A step in
//! progress when its worker died runs again from its action's start or last check, which every
//! action makes idempotent by job: each step runs under an id of its own
//! ([`step_job_id`](opsfleet_protocol::job::step_job_id)).

mod outputs;
mod progress;

pub use outputs::StepOutput;
pub use progress::Progress;

use super::{Action, ActionContext, ActionRegistry, AnyAction, Step};
use async_trait::async_trait;
use opsfleet_protocol::template::Template;
use opsfleet_protocol::{Job, ResourceType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The params of `runbook` (a task's `steps`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookParams {
    /// The steps, run in order on each resource under the job's lock.
    pub steps: Vec<RunbookStep>,
}

/// One step of a runbook.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookStep {
    /// The step's name, unique in the runbook (`on_failure = "step:NAME"` and
    /// `{steps.NAME.FIELD}` name it).
    pub name: String,
    /// The action the step runs.
    pub action: String,
    /// The action's params; their templates may read earlier steps' outputs.
    #[serde(default = "empty_object")]
    pub params: Value,
    /// Retryable failures the step may have before `on_failure` applies.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The longest one call of the step's action (a start or a check) may take, in seconds
    /// (none: the task's `timeout_secs`); past it the call counts as a retryable failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// What a failure past its retries does: `abort` (the job fails), `continue` (the next
    /// step runs) or `step:NAME` (that step runs next).
    #[serde(default = "default_on_failure")]
    pub on_failure: String,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn default_retries() -> u32 {
    3
}

fn default_on_failure() -> String {
    "abort".into()
}

/// What a step's failure past its retries does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// The job fails with the step's error.
    Abort,
    /// The next step runs.
    Continue,
    /// The step of this index runs next.
    Goto(usize),
}

impl RunbookParams {
    /// The `on_failure` of step `index`, or why it names nothing.
    pub fn on_failure(&self, index: usize) -> Result<OnFailure, String> {
        let step = &self.steps[index];
        match step.on_failure.as_str() {
            "abort" => Ok(OnFailure::Abort),
            "continue" => Ok(OnFailure::Continue),
            other => match other.strip_prefix("step:") {
                Some(name) => self
                    .steps
                    .iter()
                    .position(|s| s.name == name)
                    .map(OnFailure::Goto)
                    .ok_or_else(|| format!("step `{}`: on_failure names no step `{name}`", step.name)),
                None => {
                    Err(format!("step `{}`: on_failure `{other}` is not `abort`, `continue` or `step:NAME`", step.name))
                }
            },
        }
    }
}

/// The `runbook` action: the other actions of this build, run as steps.
pub struct Runbook {
    actions: ActionRegistry,
}

impl Runbook {
    /// A runbook whose steps may run any of `actions`.
    pub fn new(actions: ActionRegistry) -> Self {
        Runbook { actions }
    }

    fn action(&self, name: &str) -> Result<&Arc<dyn AnyAction>, String> {
        self.actions.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.actions.names().collect();
            format!("unknown action `{name}`; a step may run {}", known.join(", "))
        })
    }

    /// Runs one call of the step at hand: its start, or its check when its start came to
    /// pending; then decides what the runbook does next.
    async fn run(&self, ctx: ActionContext<'_>, p: &RunbookParams, progress: Progress) -> Step {
        let Some(spec) = p.steps.get(progress.at) else {
            return progress.finished();
        };
        if spec.action == APPROVE {
            // The worker lets the check of an approval step run only once the run's approval of
            // it is given (and fails the job when it is denied or times out).
            return match progress.started {
                false => progress.awaiting_approval(),
                true => progress.after(p, Step::Done { summary: "approved".into() }),
            };
        }
        let action = match self.action(&spec.action) {
            Ok(action) => action,
            Err(error) => return Step::Failed { retryable: false, error: format!("step `{}`: {error}", spec.name) },
        };
        let job = progress.step_job(ctx.job, spec);
        let inner = ActionContext { job: &job, attempt: progress.failures + 1, check: progress.checks, ..ctx };
        let call = async {
            match progress.started {
                false => action.start(inner).await,
                true => action.check(inner, &progress.state).await,
            }
        };
        let step = match spec.timeout_secs {
            Some(secs) => {
                let limit = Duration::from_secs(u64::from(secs));
                tokio::time::timeout(limit, call).await.unwrap_or_else(|_| Step::Failed {
                    retryable: true,
                    error: format!("{} took over the step's timeout_secs = {secs}", spec.action),
                })
            }
            None => call.await,
        };
        progress.after(p, step)
    }
}

#[async_trait]
impl Action for Runbook {
    const NAME: &'static str = opsfleet_protocol::config::RUNBOOK;
    type Params = RunbookParams;
    type State = Progress;

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::ALL
    }

    fn targets_of(&self, p: &RunbookParams) -> Vec<ResourceType> {
        let mut targets = ResourceType::ALL.to_vec();
        for step in &p.steps {
            if let Ok(action) = self.action(&step.action) {
                targets.retain(|t| action.targets().contains(t));
            }
        }
        targets
    }

    fn examples(&self) -> Vec<RunbookParams> {
        let step = |name: &str, action: &str, params: Value| RunbookStep {
            name: name.into(),
            action: action.into(),
            params,
            retries: default_retries(),
            timeout_secs: None,
            on_failure: default_on_failure(),
        };
        vec![RunbookParams {
            steps: vec![
                step("stop", "instance-power", json!({ "operation": "stop" })),
                RunbookStep {
                    on_failure: "step:start".into(),
                    ..step("snapshot", "ebs-snapshot", json!({ "retain": 7 }))
                },
                step("start", "instance-power", json!({ "operation": "start" })),
                RunbookStep {
                    on_failure: "continue".into(),
                    ..step(
                        "notify",
                        "notify",
                        json!({ "topic_arn": "arn:aws:sns:us-east-1:111122223333:ops",
                                "note": "snapshots {steps.snapshot.ids}" }),
                    )
                },
            ],
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &RunbookParams) -> String {
        let mut lines = Vec::new();
        for (i, spec) in p.steps.iter().enumerate() {
            let job = Progress::default().step_job(ctx.job, spec);
            let what = match self.action(&spec.action) {
                Ok(action) => action.describe(ActionContext { job: &job, ..ctx }),
                Err(_) if spec.action == APPROVE => {
                    "would wait for the run's approval of the steps after it (a notice to its topic)".to_owned()
                }
                Err(e) => e,
            };
            lines.push(format!("{}. {} ({}): {what}", i + 1, spec.name, spec.action));
        }
        format!("would run {} steps: {}", p.steps.len(), lines.join("; "))
    }

    fn statements(&self, p: &RunbookParams) -> Vec<Value> {
        let mut statements: Vec<Value> = Vec::new();
        for step in &p.steps {
            let found = self.action(&step.action).and_then(|a| a.iam_statements(&step.params));
            for statement in found.unwrap_or_default() {
                if !statements.contains(&statement) {
                    statements.push(statement);
                }
            }
        }
        statements
    }

    fn templates(&self, p: &RunbookParams) -> Vec<(String, String)> {
        let mut templates = Vec::new();
        for step in &p.steps {
            if let Ok(found) = self.action(&step.action).and_then(|a| a.check_params(&step.params)) {
                templates.extend(found.into_iter().map(|(name, text)| (format!("steps.{}.{name}", step.name), text)));
            }
        }
        templates
    }

    fn validate(&self, p: &RunbookParams) -> Result<(), String> {
        if p.steps.is_empty() {
            return Err("steps: a runbook needs at least one step".into());
        }
        for (i, step) in p.steps.iter().enumerate() {
            let place = format!("steps[{i}] `{}`", step.name);
            if step.name.is_empty() || !step.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(format!("{place}: a step name must be letters, digits, `-` or `_`"));
            }
            if p.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(format!("{place}: another step has the same name"));
            }
            if step.timeout_secs == Some(0) {
                return Err(format!("{place}: timeout_secs must be at least 1"));
            }
            p.on_failure(i)?;
            if step.action == APPROVE {
                approval_params(&step.params).map_err(|e| format!("{place}: {e}"))?;
                continue;
            }
            let action = self.action(&step.action).map_err(|e| format!("{place}: {e}"))?;
            let templates = action.check_params(&step.params).map_err(|e| format!("{place}: {e}"))?;
            for (param, text) in templates {
                let Ok(template) = Template::parse(&text) else { continue };
                for path in template.step_outputs() {
                    let (name, field) = path.split_once('.').unwrap_or((path, ""));
                    if !p.steps[..i].iter().any(|s| s.name == name) {
                        return Err(format!(
                            "{place}: params.{param} reads `{{steps.{path}}}`, but no step before it is named `{name}`"
                        ));
                    }
                    if !outputs::FIELDS.contains(&field) {
                        return Err(format!(
                            "{place}: params.{param} reads `{{steps.{path}}}`; a step's outputs are {}",
                            outputs::FIELDS.join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &RunbookParams) -> Step {
        self.run(ctx, p, Progress::default()).await
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &RunbookParams, progress: Progress) -> Step {
        self.run(ctx, p, progress).await
    }
}

/// The action of a step that waits for an operator's approval of the run before the steps
/// after it: `{ name, action = "approve", params = { topic_arn, timeout_mins } }`.
pub const APPROVE: &str = "approve";

/// The params of an approval step.
pub fn approval_params(params: &Value) -> Result<opsfleet_protocol::config::ApproveSettings, String> {
    let settings: opsfleet_protocol::config::ApproveSettings =
        serde_json::from_value(params.clone()).map_err(|e| format!("params: {e}"))?;
    let arn = opsfleet_protocol::resource::Arn::parse(&settings.topic_arn);
    if !arn.is_some_and(|a| a.service == "sns" && !a.region.is_empty() && !a.account.is_empty()) {
        return Err(format!("params: topic_arn `{}` is not an SNS topic ARN", settings.topic_arn));
    }
    Ok(settings)
}

/// The job one step runs as: the runbook's job with the step's action, its params with the
/// outputs of the steps before it put in, and an id of its own.
pub(crate) fn step_job(job: &Job, spec: &RunbookStep, outputs: &[StepOutput]) -> Job {
    Job {
        id: opsfleet_protocol::job::step_job_id(&job.id, &spec.name),
        action: spec.action.clone(),
        params: outputs::put_in(&spec.params, outputs),
        ..job.clone()
    }
}

#[cfg(test)]
mod tests;
