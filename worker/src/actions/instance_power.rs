//! `instance-power`: stop, start or reboot an instance. With `wait` (the default for stop and
//! start) it is done only once the instance really is `stopped` or `running`.
//!
//! Stop and start are idempotent by nature (stopping a stopped instance changes nothing). A
//! reboot is not: once EC2 has accepted the reboot, the job tags the instance
//! `opsfleet:rebooted-by = <job>`, and a job that finds its own tag there does not reboot
//! again. A reboot that failed is tried again; only a worker that dies between the reboot and
//! the tag reboots twice. EC2 shows nothing of a reboot but the accepted call: the instance is
//! `running` before and after.
//!
//! A start that falls back to `stopped` (no capacity, a KMS key it may not use) fails
//! retryably, and the next attempt starts it again; `InsufficientInstanceCapacity` is retried.

use super::ec2::{describe_instance, failed, opted_out, tag};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::InstanceStateName;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The tag a reboot leaves on its instance, naming its job.
pub const REBOOTED_BY: &str = "opsfleet:rebooted-by";

/// What to do to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Stop it.
    Stop,
    /// Start it.
    Start,
    /// Reboot it.
    Reboot,
}

/// The params of `instance-power`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePowerParams {
    /// `stop`, `start` or `reboot`.
    pub operation: Operation,
    /// Wait until the instance is stopped or running (none: true for stop and start, false for
    /// reboot).
    #[serde(default)]
    pub wait: Option<bool>,
    /// Force the stop (no chance to flush caches).
    #[serde(default)]
    pub force: bool,
    /// Seconds until the first state check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

impl InstancePowerParams {
    fn wait(&self) -> bool {
        self.wait.unwrap_or(self.operation != Operation::Reboot)
    }
}

/// What a pending `instance-power` waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Powering {
    /// The operation under way.
    pub operation: Operation,
}

/// The `instance-power` action.
pub struct InstancePower;

/// The instance's state and tags.
async fn instance(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> Result<(InstanceStateName, Vec<aws_sdk_ec2::types::Tag>), Step> {
    let instance = describe_instance(ec2, id).await?;
    let state = instance.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Pending);
    Ok((state, instance.tags().to_vec()))
}

#[async_trait]
impl Action for InstancePower {
    const NAME: &'static str = "instance-power";
    type Params = InstancePowerParams;
    type State = Powering;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance]
    }

    fn examples(&self) -> Vec<InstancePowerParams> {
        [Operation::Stop, Operation::Start, Operation::Reboot]
            .into_iter()
            .map(|operation| InstancePowerParams {
                operation,
                wait: None,
                force: false,
                check_after_secs: default_check_after_secs(),
            })
            .collect()
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &InstancePowerParams) -> String {
        format!(
            "would {} {}{}",
            match p.operation {
                Operation::Stop if p.force => "force-stop",
                Operation::Stop => "stop",
                Operation::Start => "start",
                Operation::Reboot => "reboot",
            },
            ctx.job.resource.id,
            if p.wait() { " and wait for it" } else { "" }
        )
    }

    fn statements(&self, p: &InstancePowerParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![allow(&["ec2:DescribeInstances"], &["*"])];
        match p.operation {
            Operation::Stop => out.push(allow_if(&["ec2:StopInstances"], &[INSTANCES], not_opted_out())),
            Operation::Start => {
                out.push(allow_if(&["ec2:StartInstances"], &[INSTANCES], not_opted_out()));
                out.push(kms_grant_for_ec2());
            }
            Operation::Reboot => {
                out.push(allow_if(&["ec2:RebootInstances"], &[INSTANCES], not_opted_out()));
                out.push(tag_instances_with(REBOOTED_BY));
            }
        }
        out
    }

    fn validate(&self, p: &InstancePowerParams) -> Result<(), String> {
        if p.force && p.operation != Operation::Stop {
            return Err("params: force is for operation = \"stop\" only".into());
        }
        super::check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &InstancePowerParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let (state, tags) = or_step!(instance(&ec2, id).await);
        if let Some(skip) = opted_out(id, &tags) {
            return skip;
        }
        if state == InstanceStateName::Terminated || state == InstanceStateName::ShuttingDown {
            return Step::Failed { retryable: false, error: format!("instance {id} is {}", state.as_str()) };
        }
        match p.operation {
            Operation::Stop => {
                // A forced stop also hurries an instance stuck in `stopping`.
                let stopping_and_forced = state == InstanceStateName::Stopping && p.force;
                if stopping_and_forced || !matches!(state, InstanceStateName::Stopped | InstanceStateName::Stopping) {
                    if let Err(e) = ec2.stop_instances().instance_ids(id).force(p.force).send().await {
                        return failed("StopInstances", &e);
                    }
                }
            }
            Operation::Start => {
                if !matches!(state, InstanceStateName::Running | InstanceStateName::Pending) {
                    if let Err(e) = ec2.start_instances().instance_ids(id).send().await {
                        return failed("StartInstances", &e);
                    }
                }
            }
            Operation::Reboot => {
                let mine = tags.iter().any(|t| t.key() == Some(REBOOTED_BY) && t.value() == Some(ctx.job.id.as_str()));
                if mine {
                    return Step::Done { summary: format!("{id} was rebooted by this job before") };
                }
                if state != InstanceStateName::Running {
                    return Step::Failed {
                        retryable: false,
                        error: format!("instance {id} is {}, not running", state.as_str()),
                    };
                }
                if let Err(e) = ec2.reboot_instances().instance_ids(id).send().await {
                    return failed("RebootInstances", &e);
                }
                if let Err(e) = ec2.create_tags().resources(id).tags(tag(REBOOTED_BY, &ctx.job.id)).send().await {
                    // The reboot is done: record it in the step instead, and leave the tag.
                    tracing::warn!(job_id = %ctx.job.id, instance = id, error = %e, "The reboot went through; tagging the instance with it failed.");
                }
            }
        }
        let state = Powering { operation: p.operation };
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &InstancePowerParams, state: Powering) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let id = ctx.job.resource.id.as_str();
        let (now, _) = or_step!(instance(&ec2, id).await);
        let pending = Step::pending(Duration::from_secs(p.check_after_secs), &state);
        // What was asked for is verified: reached (with `wait`), or at least under way.
        let (reached, under_way, target) = match p.operation {
            Operation::Stop => (now == InstanceStateName::Stopped, now == InstanceStateName::Stopping, "stopped"),
            Operation::Start => (now == InstanceStateName::Running, now == InstanceStateName::Pending, "running"),
            Operation::Reboot => (now == InstanceStateName::Running, false, "running after its reboot"),
        };
        if reached {
            return Step::Done { summary: format!("{id} is {target}") };
        }
        if matches!(now, InstanceStateName::Terminated | InstanceStateName::ShuttingDown) {
            return Step::Failed {
                retryable: false,
                error: format!("instance {id} is {} instead of {target}", now.as_str()),
            };
        }
        if under_way && !p.wait() {
            return Step::Done { summary: format!("{id} is {} (not waited for)", now.as_str()) };
        }
        if p.operation == Operation::Start && now == InstanceStateName::Stopped && ctx.check > 0 {
            // Started, then back to stopped: EC2 found no capacity or could not use a key.
            return Step::Failed {
                retryable: true,
                error: format!("instance {id} fell back to stopped after its start (capacity, or a KMS key)"),
            };
        }
        pending
    }
}
