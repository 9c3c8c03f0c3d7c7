//! `instance-resize`: vertical scaling of an instance — to a named type, or one rung `up` or
//! `down` a ladder of types — by stop, type change and start, leaving it in the power state it
//! was in (a stopped instance is resized and left stopped). When EC2 has no capacity for the
//! type (or does not offer it there), the `fallback` types are tried in order; when none
//! starts, the instance is put back to its old type and started again, and the job fails with
//! what each type answered.
//!
//! Idempotent by job: before it stops anything, the job tags the instance
//! `opsfleet:resize = <job> <old type> <running|stopped>`. Every later attempt of the job reads
//! that record (again after EC2's consistency window on a later attempt) and steps from the
//! recorded type, not the current one, so a retry after a crash never climbs the ladder twice;
//! a job that finds its record and the new type in place is done. Takes a slot of the
//! `instance-resize` limit, pooled by account and region, since each resize stops an instance.

use super::ec2::{describe_instance, failed, opted_out, tag, waited_to_look_again};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{AttributeValue, InstanceStateName};
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The tag that records a resize before it starts: `<job> <old type> <running|stopped>`.
pub const RESIZE_TAG: &str = "opsfleet:resize";

/// Which way along the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The next larger type.
    Up,
    /// The next smaller type.
    Down,
}

/// The params of `instance-resize`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceResizeParams {
    /// The instance type to resize to (give this or `step`).
    #[serde(default)]
    pub to: Option<String>,
    /// `up` or `down` one rung of `ladder` from the instance's type (give this or `to`).
    #[serde(default)]
    pub step: Option<Direction>,
    /// Instance types from smallest to largest, for `step`.
    #[serde(default)]
    pub ladder: Vec<String>,
    /// Types to try in order when EC2 has no capacity for the one asked for or does not
    /// offer it in the instance's zone.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Seconds until the first state check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

/// Where a pending resize is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the instance to stop.
    Stopping,
    /// Waiting for the instance, changed to the candidate of this index, to start (or to read
    /// the new type, when it was stopped to begin with).
    Starting(usize),
    /// No candidate started: waiting for the instance to start again as its old type.
    Restoring,
}

/// What a pending `instance-resize` waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Resizing {
    /// The type before the resize.
    pub from: String,
    /// Whether the instance was running (and is to run again).
    pub was_running: bool,
    /// Where the resize is.
    pub phase: Phase,
    /// What each type tried answered (`type: code`).
    #[serde(default)]
    pub tried: Vec<String>,
}

/// The `instance-resize` action.
pub struct InstanceResize;

/// What a describe says of the instance.
struct Seen {
    state: InstanceStateName,
    kind: String,
    tags: Vec<aws_sdk_ec2::types::Tag>,
}

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Seen, Step> {
    let instance = describe_instance(ec2, id).await?;
    Ok(Seen {
        state: instance.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Pending),
        kind: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        tags: instance.tags().to_vec(),
    })
}

/// This job's record on the instance: the old type and whether it was running.
fn record(tags: &[aws_sdk_ec2::types::Tag], job: &str) -> Option<(String, bool)> {
    let value = tags.iter().find(|t| t.key() == Some(RESIZE_TAG))?.value()?;
    let mut words = value.split(' ');
    (words.next()? == job).then_some(())?;
    let from = words.next()?.to_owned();
    Some((from, words.next()? == "running"))
}

/// Whether a name looks like an instance type (`t3.micro`, `u-6tb1.metal`).
pub fn looks_like_type(name: &str) -> bool {
    let mut parts = name.split('.');
    let (Some(family), Some(size), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let fine = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    fine(family) && fine(size)
}

/// The types to try for an instance of type `from`, best first: the target, then the
/// fallbacks. `Err` when there is nothing to do (already the type; the end of the ladder).
pub fn candidates(p: &InstanceResizeParams, from: &str, id: &str) -> Result<Vec<String>, Step> {
    let target = match (&p.to, p.step) {
        (Some(to), _) => to.clone(),
        (None, Some(step)) => {
            let at = p.ladder.iter().position(|t| t == from).ok_or_else(|| Step::Failed {
                retryable: false,
                error: format!("instance {id} is {from}, which is not on the ladder {}", p.ladder.join(" → ")),
            })?;
            let next = match step {
                Direction::Up => p.ladder.get(at + 1),
                Direction::Down => at.checked_sub(1).and_then(|i| p.ladder.get(i)),
            };
            let end = if step == Direction::Up { "top" } else { "bottom" };
            next.cloned().ok_or_else(|| Step::Skipped {
                reason: format!("instance {id} is {from}, at the {end} of its ladder"),
            })?
        }
        (None, None) => return Err(Step::Failed { retryable: false, error: "params: give `to` or `step`".into() }),
    };
    if target == from {
        return Err(Step::Done { summary: format!("{id} is {from} already") });
    }
    let mut out = vec![target];
    for t in &p.fallback {
        if t != from && !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> &str {
    err.as_service_error().and_then(ProvideErrorMetadata::code).unwrap_or_default()
}

/// Codes that say this type will not do here and another may.
const TRY_ANOTHER: &[&str] = &["InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported"];

fn running(state: &InstanceStateName) -> bool {
    matches!(state, InstanceStateName::Running | InstanceStateName::Pending)
}

impl InstanceResize {
    /// With the instance stopped: change it to the first candidate from `first` that EC2
    /// takes (and starts, when it was running), or put it back as it was.
    async fn apply(
        &self,
        ctx: ActionContext<'_>,
        p: &InstanceResizeParams,
        ec2: &aws_sdk_ec2::Client,
        now: &Seen,
        mut state: Resizing,
        first: usize,
    ) -> Step {
        let id = ctx.job.resource.id.as_str();
        let candidates = match candidates(p, &state.from, id) {
            Ok(c) => c,
            Err(step) => return step,
        };
        let wait = Duration::from_secs(p.check_after_secs);
        let mut kind = now.kind.clone();
        for (i, wanted) in candidates.iter().enumerate().skip(first) {
            if kind != *wanted {
                let value = AttributeValue::builder().value(wanted).build();
                match ec2.modify_instance_attribute().instance_id(id).instance_type(value).send().await {
                    Ok(_) => kind = wanted.clone(),
                    Err(e) if TRY_ANOTHER.contains(&code(&e)) || code(&e) == "InvalidParameterValue" => {
                        state.tried.push(format!("{wanted}: {}", code(&e)));
                        continue;
                    }
                    Err(e) => return failed("ModifyInstanceAttribute", &e),
                }
            }
            if !state.was_running {
                state.phase = Phase::Starting(i);
                return Step::pending(wait, &state);
            }
            match ec2.start_instances().instance_ids(id).send().await {
                Ok(_) => {
                    state.phase = Phase::Starting(i);
                    return Step::pending(wait, &state);
                }
                Err(e) if TRY_ANOTHER.contains(&code(&e)) => state.tried.push(format!("{wanted}: {}", code(&e))),
                Err(e) => return failed("StartInstances", &e),
            }
        }
        // No candidate would do: back to the old type, and running if it was.
        if kind != state.from {
            let value = AttributeValue::builder().value(&state.from).build();
            if let Err(e) = ec2.modify_instance_attribute().instance_id(id).instance_type(value).send().await {
                return failed("ModifyInstanceAttribute (restoring the old type)", &e);
            }
        }
        let no_type = format!("no type would do ({})", state.tried.join(", "));
        if !state.was_running {
            return Step::Failed {
                retryable: false,
                error: format!("{no_type}: {id} is {} and stopped again", state.from),
            };
        }
        if let Err(e) = ec2.start_instances().instance_ids(id).send().await {
            return match failed("StartInstances (restoring the old type)", &e) {
                Step::Failed { error, .. } => Step::Failed {
                    retryable: true,
                    error: format!("{no_type}; {id} is {} again but stopped: {error}", state.from),
                },
                other => other,
            };
        }
        state.phase = Phase::Restoring;
        Step::pending(wait, &state)
    }
}

#[async_trait]
impl Action for InstanceResize {
    const NAME: &'static str = "instance-resize";
    type Params = InstanceResizeParams;
    type State = Resizing;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance]
    }

    fn limit(&self) -> Option<LimitDefault> {
        Some(LimitDefault { name: "instance-resize".into(), max: 5, pool: "{account}/{region}".into() })
    }

    fn examples(&self) -> Vec<InstanceResizeParams> {
        let types = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        vec![
            InstanceResizeParams {
                to: None,
                step: Some(Direction::Up),
                ladder: types(&["t3.small", "t3.medium", "t3.large"]),
                fallback: types(&["m5.large"]),
                check_after_secs: default_check_after_secs(),
            },
            InstanceResizeParams {
                to: Some("t3.small".into()),
                step: None,
                ladder: Vec::new(),
                fallback: Vec::new(),
                check_after_secs: default_check_after_secs(),
            },
        ]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &InstanceResizeParams) -> String {
        let target = match (&p.to, p.step) {
            (Some(to), _) => format!("to {to}"),
            (None, Some(step)) => format!(
                "one rung {} the ladder {}",
                if step == Direction::Up { "up" } else { "down" },
                p.ladder.join(" → ")
            ),
            (None, None) => "nowhere".into(),
        };
        let fallback = if p.fallback.is_empty() { String::new() } else { format!(" (else {})", p.fallback.join(", ")) };
        format!(
            "would resize {} {target}{fallback}: stop, change its type, start it again if it was running",
            ctx.job.resource.id
        )
    }

    fn statements(&self, _p: &InstanceResizeParams) -> Vec<Value> {
        use super::iam::*;
        vec![
            allow(&["ec2:DescribeInstances"], &["*"]),
            allow_if(
                &["ec2:StopInstances", "ec2:StartInstances", "ec2:ModifyInstanceAttribute"],
                &[INSTANCES],
                not_opted_out(),
            ),
            tag_instances_with(RESIZE_TAG),
            kms_grant_for_ec2(),
        ]
    }

    fn validate(&self, p: &InstanceResizeParams) -> Result<(), String> {
        match (&p.to, p.step) {
            (Some(_), Some(_)) => return Err("params: give `to` or `step`, not both".into()),
            (None, None) => return Err("params: give `to` (a type) or `step` (`up` or `down` the `ladder`)".into()),
            (None, Some(_)) if p.ladder.len() < 2 => {
                return Err("params: `step` needs a `ladder` of at least two types".into())
            }
            (Some(_), None) if !p.ladder.is_empty() => return Err("params: `ladder` is for `step`, not `to`".into()),
            _ => {}
        }
        for (what, name) in
            p.to.iter()
                .map(|t| ("to", t))
                .chain(p.ladder.iter().map(|t| ("ladder", t)))
                .chain(p.fallback.iter().map(|t| ("fallback", t)))
        {
            if !looks_like_type(name) {
                return Err(format!("params: {what} `{name}` is not an instance type (such as t3.micro)"));
            }
        }
        if let Some(twice) = p.ladder.iter().enumerate().find(|(i, t)| p.ladder[..*i].contains(t)).map(|(_, t)| t) {
            return Err(format!("params: ladder names `{twice}` twice"));
        }
        super::check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &InstanceResizeParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let job = ctx.job.id.as_str();
        let mut now = or_step!(describe(&ec2, id).await);
        if let Some(skip) = opted_out(id, &now.tags) {
            return skip;
        }
        if matches!(now.state, InstanceStateName::Terminated | InstanceStateName::ShuttingDown) {
            return Step::Failed { retryable: false, error: format!("instance {id} is {}", now.state.as_str()) };
        }
        // An earlier attempt's record may not show yet: look again after the window.
        if record(&now.tags, job).is_none() && waited_to_look_again(&ctx).await {
            now = or_step!(describe(&ec2, id).await);
        }
        let found = record(&now.tags, job);
        let (from, was_running) = match &found {
            Some((from, was_running)) => (from.clone(), *was_running),
            None => (now.kind.clone(), running(&now.state)),
        };
        let candidates = or_step!(candidates(p, &from, id));
        let placed = candidates.iter().position(|c| *c == now.kind).filter(|_| found.is_some());
        if let Some(i) = placed {
            let settled = if was_running { InstanceStateName::Running } else { InstanceStateName::Stopped };
            if now.state == settled {
                let summary = format!("{id} was resized from {from} to {} by this job before", now.kind);
                return Step::Done { summary };
            }
            if was_running && now.state == InstanceStateName::Pending {
                let state = Resizing { from, was_running, phase: Phase::Starting(i), tried: Vec::new() };
                return Step::pending(Duration::from_secs(p.check_after_secs), &state);
            }
        }
        if found.is_none() {
            let value = format!("{job} {from} {}", if was_running { "running" } else { "stopped" });
            if let Err(e) = ec2.create_tags().resources(id).tags(tag(RESIZE_TAG, &value)).send().await {
                return failed("CreateTags (the resize's record)", &e);
            }
        }
        if matches!(now.state, InstanceStateName::Running | InstanceStateName::Pending) {
            if let Err(e) = ec2.stop_instances().instance_ids(id).send().await {
                return failed("StopInstances", &e);
            }
        }
        let state = Resizing { from, was_running, phase: Phase::Stopping, tried: Vec::new() };
        Step::pending(Duration::from_secs(p.check_after_secs), &state)
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &InstanceResizeParams, state: Resizing) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let now = or_step!(describe(&ec2, id).await);
        let wait = Duration::from_secs(p.check_after_secs);
        if matches!(now.state, InstanceStateName::Terminated | InstanceStateName::ShuttingDown) {
            return Step::Failed {
                retryable: false,
                error: format!("instance {id} is {} in the middle of its resize", now.state.as_str()),
            };
        }
        let stopped = now.state == InstanceStateName::Stopped;
        match state.phase.clone() {
            Phase::Stopping if stopped => self.apply(ctx, p, &ec2, &now, state, 0).await,
            Phase::Stopping => Step::pending(wait, &state),
            Phase::Starting(i) => {
                let wanted = match candidates(p, &state.from, id) {
                    Ok(c) => c.get(i).cloned().unwrap_or_default(),
                    Err(step) => return step,
                };
                let reached = if state.was_running { now.state == InstanceStateName::Running } else { stopped };
                if reached && now.kind == wanted {
                    let power = if state.was_running { "running" } else { "stopped, as it was" };
                    return Step::Done { summary: format!("{id} is {wanted} (was {}), {power}", state.from) };
                }
                if reached {
                    return Step::Failed {
                        retryable: true,
                        error: format!("instance {id} reads {} after its change to {wanted}", now.kind),
                    };
                }
                if state.was_running && stopped && ctx.check > 0 {
                    // Started, then back to stopped: no capacity for this type after all.
                    let mut state = state;
                    state.tried.push(format!("{wanted}: fell back to stopped"));
                    return self.apply(ctx, p, &ec2, &now, state, i + 1).await;
                }
                Step::pending(wait, &state)
            }
            Phase::Restoring if now.state == InstanceStateName::Running => Step::Failed {
                retryable: false,
                error: format!(
                    "no type would do ({}): {id} is back to {} and running",
                    state.tried.join(", "),
                    state.from
                ),
            },
            Phase::Restoring if stopped && ctx.check > 0 => Step::Failed {
                retryable: true,
                error: format!(
                    "no type would do ({}) and {id} did not start again as {}: it is stopped",
                    state.tried.join(", "),
                    state.from
                ),
            },
            Phase::Restoring => Step::pending(wait, &state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(to: Option<&str>, step: Option<Direction>, ladder: &[&str], fallback: &[&str]) -> InstanceResizeParams {
        InstanceResizeParams {
            to: to.map(str::to_owned),
            step,
            ladder: ladder.iter().map(|t| (*t).to_owned()).collect(),
            fallback: fallback.iter().map(|t| (*t).to_owned()).collect(),
            check_after_secs: 1,
        }
    }

    #[test]
    fn a_step_climbs_one_rung_and_stops_at_the_ends() {
        let ladder = ["t3.small", "t3.medium", "t3.large"];
        let up = params(None, Some(Direction::Up), &ladder, &["m5.large", "t3.large"]);
        assert_eq!(
            candidates(&up, "t3.small", "i-1"),
            Ok(vec!["t3.medium".into(), "m5.large".into(), "t3.large".into()])
        );
        assert_eq!(candidates(&up, "t3.medium", "i-1"), Ok(vec!["t3.large".into(), "m5.large".into()]));
        match candidates(&up, "t3.large", "i-1") {
            Err(Step::Skipped { reason }) => assert!(reason.contains("at the top of its ladder"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let down = params(None, Some(Direction::Down), &ladder, &[]);
        assert_eq!(candidates(&down, "t3.medium", "i-1"), Ok(vec!["t3.small".into()]));
        match candidates(&down, "m5.xlarge", "i-1") {
            Err(Step::Failed { retryable: false, error }) => {
                assert!(
                    error.contains("m5.xlarge, which is not on the ladder t3.small → t3.medium → t3.large"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        let to = params(Some("t3.large"), None, &[], &[]);
        assert!(matches!(candidates(&to, "t3.large", "i-1"), Err(Step::Done { .. })));
    }

    #[test]
    fn the_record_belongs_to_one_job() {
        let tags = vec![tag(RESIZE_TAG, "job1 t3.small running")];
        assert_eq!(record(&tags, "job1"), Some(("t3.small".into(), true)));
        assert_eq!(record(&tags, "job2"), None);
        assert_eq!(record(&[tag(RESIZE_TAG, "job1 t3.small stopped")], "job1"), Some(("t3.small".into(), false)));
    }

    #[test]
    fn params_are_checked_with_a_reason() {
        let resize = InstanceResize;
        let err = |p: InstanceResizeParams| resize.validate(&p).unwrap_err();
        assert!(err(params(None, None, &[], &[])).contains("give `to`"));
        assert!(err(params(Some("t3.large"), Some(Direction::Up), &[], &[])).contains("not both"));
        assert!(err(params(None, Some(Direction::Up), &["t3.small"], &[])).contains("at least two"));
        assert!(err(params(Some("T3 large"), None, &[], &[])).contains("to `T3 large` is not an instance type"));
        assert!(err(params(None, Some(Direction::Up), &["t3.small", "t3.small"], &[])).contains("twice"));
        assert!(resize.validate(&params(Some("t3.large"), None, &[], &["m5.large"])).is_ok());
        assert!(looks_like_type("u-6tb1.metal") && !looks_like_type("t3") && !looks_like_type("t3.large.x"));
    }
}
