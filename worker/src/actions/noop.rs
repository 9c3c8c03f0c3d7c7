//! `noop`: does nothing to the resource, with knobs that let tests and load tests exercise
//! the worker: a sleep, a failure rate, failures on the first attempts, and a number of pending
//! checks before completion.

use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::ResourceType;
use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// The params of `noop`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {
    /// How long start takes, in ms.
    #[serde(default)]
    pub sleep_ms: u64,
    /// The share of starts that fail, 0..1: 1 fails for good, less fails retryably.
    #[serde(default)]
    pub fail_rate: f64,
    /// Fail for good on resources in these regions (a region in trouble).
    #[serde(default)]
    pub fail_in_regions: Vec<String>,
    /// Fail (retryably) the first N attempts, then succeed: deterministic retries.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Panic (a bug) in the first N attempts' starts.
    #[serde(default)]
    pub panic_attempts: u32,
    /// Fail (retryably) the first N checks.
    #[serde(default)]
    pub fail_checks: u32,
    /// Completion checks that report pending before the job is done.
    #[serde(default)]
    pub pending_checks: u32,
    /// Delay before each check, in ms.
    #[serde(default = "default_check_ms")]
    pub check_after_ms: u64,
    /// How long each check takes, in ms.
    #[serde(default)]
    pub check_sleep_ms: u64,
    /// A folder where each effect is recorded, one file per job, each start in
    /// `<job>.starts` and each check in `<job>.checks` (tests). A start that takes effect first looks for what it made before
    /// (the file), then works (`sleep_ms`), then makes it, the way a real action creates
    /// something: two runs of a job at once both find nothing and both write, so a test counts
    /// double effects instead of guessing.
    #[serde(default)]
    pub effects_dir: Option<String>,
}

/// What a pending `noop` counts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NoopState {
    /// Checks that reported pending so far.
    #[serde(default)]
    pub checks: u64,
}

fn default_check_ms() -> u64 {
    1000
}

/// The `noop` action.
pub struct Noop;

#[async_trait]
impl Action for Noop {
    const NAME: &'static str = "noop";
    type Params = NoopParams;
    type State = NoopState;

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::ALL
    }

    fn mutates(&self) -> bool {
        false
    }

    fn examples(&self) -> Vec<NoopParams> {
        vec![NoopParams { sleep_ms: 50, pending_checks: 2, ..NoopParams::default() }]
    }

    fn statements(&self, _params: &NoopParams) -> Vec<Value> {
        Vec::new()
    }

    fn validate(&self, p: &NoopParams) -> Result<(), String> {
        if !(0.0..=1.0).contains(&p.fail_rate) {
            return Err(format!("params: fail_rate {} is not between 0 and 1", p.fail_rate));
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &NoopParams) -> Step {
        let effect = p.effects_dir.as_deref().map(|dir| std::path::Path::new(dir).join(&ctx.job.id));
        if let Some(dir) = p.effects_dir.as_deref() {
            // Every start is counted apart from the effects, so tests see a start that the
            // idempotency below made harmless.
            let starts = std::path::Path::new(dir).join(format!("{}.starts", ctx.job.id));
            if let Err(e) = record_effect(&starts, ctx, unix_ms()) {
                return Step::Failed { retryable: true, error: format!("noop: recording the start: {e}") };
            }
        }
        if effect.as_ref().is_some_and(|path| path.exists()) {
            return Step::Done { summary: format!("noop on {}: done before", ctx.job.resource.id) };
        }
        let began = unix_ms();
        if p.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.sleep_ms)).await;
        }
        if ctx.attempt <= p.panic_attempts {
            panic!("noop: panicking in attempt {}", ctx.attempt);
        }
        if let Some(path) = effect {
            if let Err(e) = record_effect(&path, ctx, began) {
                return Step::Failed { retryable: true, error: format!("noop: recording the effect: {e}") };
            }
        }
        if ctx.attempt <= p.fail_attempts {
            return Step::Failed { retryable: true, error: format!("noop: failing attempt {}", ctx.attempt) };
        }
        if p.fail_rate >= 1.0 {
            return Step::Failed { retryable: false, error: "noop: fail_rate = 1".into() };
        }
        if p.fail_in_regions.contains(&ctx.job.resource.region) {
            return Step::Failed { retryable: false, error: format!("noop: failing in {}", ctx.job.resource.region) };
        }
        if p.fail_rate > 0.0 && rand::thread_rng().gen_bool(p.fail_rate) {
            return Step::Failed { retryable: true, error: "noop: random failure".into() };
        }
        if p.pending_checks > 0 {
            return Step::pending(Duration::from_millis(p.check_after_ms), &NoopState { checks: 0 });
        }
        Step::Done { summary: format!("noop on {}", ctx.job.resource.id) }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &NoopParams, state: NoopState) -> Step {
        let began = unix_ms();
        if p.check_sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.check_sleep_ms)).await;
        }
        if let Some(dir) = p.effects_dir.as_deref() {
            let checks = std::path::Path::new(dir).join(format!("{}.checks", ctx.job.id));
            if let Err(e) = record_effect(&checks, ctx, began) {
                return Step::Failed { retryable: true, error: format!("noop: recording the check: {e}") };
            }
        }
        if ctx.check <= p.fail_checks {
            return Step::Failed { retryable: true, error: format!("noop: failing check {}", ctx.check) };
        }
        let checks = state.checks + 1;
        if checks >= u64::from(p.pending_checks) {
            Step::Done { summary: format!("noop on {} after {checks} checks", ctx.job.resource.id) }
        } else {
            Step::pending(Duration::from_millis(p.check_after_ms), &NoopState { checks })
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Appends one line per effect: the resource, the process, and when the work began and ended
/// (system time, which tests compare across processes on one machine).
fn record_effect(path: &std::path::Path, ctx: ActionContext<'_>, began: u64) -> std::io::Result<()> {
    use std::io::Write;
    let line = json!({
        "job": ctx.job.id,
        "check": ctx.check,
        "task": ctx.job.task,
        "resource": ctx.job.resource.key(),
        "pid": std::process::id(),
        "began_ms": began,
        "ended_ms": unix_ms(),
    });
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}
