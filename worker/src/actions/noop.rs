//! `noop`: does nothing to the resource, with knobs that let tests and load tests exercise
//! the worker: a sleep, a failure rate, failures on the first attempts, and a number of pending
//! checks before completion.

use super::{parse_params, Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::ResourceType;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The params of `noop`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {
    /// How long `start` takes, in milliseconds.
    #[serde(default)]
    pub sleep_ms: u64,
    /// The probability that `start` fails (not retryable when 1.0, retryable otherwise).
    #[serde(default)]
    pub fail_rate: f64,
    /// Fail (retryably) the first this many attempts, then succeed: deterministic retries.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Fail (retryably) the first this many checks.
    #[serde(default)]
    pub fail_checks: u32,
    /// How many checks report pending before the job completes.
    #[serde(default)]
    pub pending_checks: u32,
    /// Delay before each check, in milliseconds.
    #[serde(default = "default_check_ms")]
    pub check_after_ms: u64,
    /// A folder where each start that takes effect appends a line to a file named after the
    /// job, the way a real action creates something: it first looks for what it made before
    /// (the file), then works (`sleep_ms`), then makes it. Two runs of a job at once both
    /// find nothing and both write, so a test counts double effects instead of guessing.
    #[serde(default)]
    pub effects_dir: Option<String>,
}

fn default_check_ms() -> u64 {
    1000
}

/// The `noop` action.
pub struct Noop;

impl Noop {
    fn params(ctx: &ActionContext<'_>) -> NoopParams {
        parse_params(&ctx.job.params).unwrap_or_default()
    }
}

#[async_trait]
impl Action for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn targets(&self) -> &'static [ResourceType] {
        &ResourceType::ALL
    }

    fn mutates(&self) -> bool {
        false
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &[]
    }

    fn params_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("sleep_ms", "how long start takes, in ms (default 0)"),
            ("fail_rate", "share of starts that fail, 0..1; 1 fails for good (default 0)"),
            ("fail_attempts", "fail (retryably) the first N attempts (default 0)"),
            ("pending_checks", "completion checks that report pending before done (default 0)"),
            ("fail_checks", "fail (retryably) the first N checks (default 0)"),
            ("check_after_ms", "delay before each check, in ms (default 1000)"),
            ("effects_dir", "a folder where each effect is recorded, one file per job, and each start in `<job>.starts` (tests; default none)"),
        ]
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        let p: NoopParams = parse_params(params)?;
        if !(0.0..=1.0).contains(&p.fail_rate) {
            return Err(format!("params: fail_rate {} is not between 0 and 1", p.fail_rate));
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>) -> Step {
        let p = Self::params(&ctx);
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
        if p.fail_rate > 0.0 && rand::thread_rng().gen_bool(p.fail_rate) {
            return Step::Failed { retryable: true, error: "noop: random failure".into() };
        }
        if p.pending_checks > 0 {
            return Step::Pending {
                check_after: Duration::from_millis(p.check_after_ms),
                state: json!({ "checks": 0 }),
            };
        }
        Step::Done { summary: format!("noop on {}", ctx.job.resource.id) }
    }

    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step {
        let p = Self::params(&ctx);
        if ctx.check <= p.fail_checks {
            return Step::Failed { retryable: true, error: format!("noop: failing check {}", ctx.check) };
        }
        let checks = state.get("checks").and_then(Value::as_u64).unwrap_or(0) + 1;
        if checks >= u64::from(p.pending_checks) {
            Step::Done { summary: format!("noop on {} after {checks} checks", ctx.job.resource.id) }
        } else {
            Step::Pending { check_after: Duration::from_millis(p.check_after_ms), state: json!({ "checks": checks }) }
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
        "task": ctx.job.task,
        "resource": ctx.job.resource.key(),
        "pid": std::process::id(),
        "began_ms": began,
        "ended_ms": unix_ms(),
    });
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}
