//! `run-command`: runs an SSM document on an instance with Run Command (`SendCommand`; by
//! default `AWS-RunShellScript` with `commands`), waits for the invocation to finish, and
//! fails with the tail of its output when it does not succeed.
//!
//! Idempotent by job: `SendCommand` takes no idempotency token, so the command carries the
//! job in its comment (`opsfleet job <id>`), is sent once (no SDK retry), and every attempt
//! first lists the instance's commands for it (again after the consistency window on a later
//! attempt). An invocation SSM does not know yet right after the send
//! (`InvocationDoesNotExist`) is waited for, not failed.

use super::ec2::{describe_instance, opted_out};
use super::ssm::{outcome, send_once, Outcome};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::InstanceStateName;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `run-command`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandParams {
    /// The SSM document to run.
    #[serde(default = "default_document")]
    pub document: String,
    /// The shell commands (`AWS-RunShellScript` and `AWS-RunPowerShellScript`'s `commands`
    /// parameter); templates.
    #[serde(default)]
    pub commands: Vec<String>,
    /// The document's other parameters, each a list of values; values are templates.
    #[serde(default)]
    pub parameters: BTreeMap<String, Vec<String>>,
    /// The longest the command may run, in seconds (the shell documents' `executionTimeout`).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Seconds between the checks that wait for the command.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_document() -> String {
    "AWS-RunShellScript".into()
}

fn default_timeout() -> u64 {
    600
}

fn default_check_after_secs() -> u64 {
    5
}

/// The command a pending `run-command` waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Sent {
    /// The command's id.
    pub command: String,
    /// When it was sent, Unix ms.
    pub sent_ms: u64,
}

/// The `run-command` action.
pub struct RunCommand;

fn shell(document: &str) -> bool {
    matches!(document, "AWS-RunShellScript" | "AWS-RunPowerShellScript")
}

impl RunCommand {
    /// The parameters sent: `commands` and `executionTimeout` for the shell documents, the
    /// others rendered.
    fn parameters(&self, ctx: &ActionContext<'_>, p: &RunCommandParams) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> =
            p.parameters.iter().map(|(k, vs)| (k.clone(), vs.iter().map(|v| ctx.render(v)).collect())).collect();
        if !p.commands.is_empty() {
            out.insert("commands".into(), p.commands.iter().map(|c| ctx.render(c)).collect());
        }
        if shell(&p.document) {
            out.entry("executionTimeout".into()).or_insert_with(|| vec![p.timeout_secs.to_string()]);
        }
        out
    }
}

#[async_trait]
impl Action for RunCommand {
    const NAME: &'static str = "run-command";
    type Params = RunCommandParams;
    type State = Sent;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance]
    }

    fn examples(&self) -> Vec<RunCommandParams> {
        vec![RunCommandParams {
            document: default_document(),
            commands: vec!["systemctl restart nginx".into()],
            parameters: BTreeMap::new(),
            timeout_secs: default_timeout(),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &RunCommandParams) -> String {
        let what = if p.commands.is_empty() { String::new() } else { format!(" `{}`", p.commands.join("; ")) };
        format!("would run {}{what} on {} and wait for it", p.document, ctx.job.resource.id)
    }

    fn templates(&self, p: &RunCommandParams) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            p.commands.iter().enumerate().map(|(i, c)| (format!("commands[{i}]"), c.clone())).collect();
        for (k, vs) in &p.parameters {
            out.extend(vs.iter().enumerate().map(|(i, v)| (format!("parameters.{k}[{i}]"), v.clone())));
        }
        out
    }

    fn statements(&self, _p: &RunCommandParams) -> Vec<Value> {
        use super::iam::*;
        vec![
            allow(&["ec2:DescribeInstances", "ssm:ListCommands", "ssm:GetCommandInvocation"], &["*"]),
            allow_if(
                &["ssm:SendCommand"],
                &[INSTANCES],
                json!({ "StringNotEquals": { "ssm:resourceTag/opsfleet:skip": "true" } }),
            ),
            allow(&["ssm:SendCommand"], &["arn:aws:ssm:*:*:document/*", "arn:aws:ssm:*::document/*"]),
        ]
    }

    fn validate(&self, p: &RunCommandParams) -> Result<(), String> {
        super::check_after_in_range(p.check_after_secs)?;
        if shell(&p.document) && p.commands.is_empty() && !p.parameters.contains_key("commands") {
            return Err(format!("params: {} needs `commands`", p.document));
        }
        if !(1..=172_800).contains(&p.timeout_secs) {
            return Err(format!("params: timeout_secs {} is not between 1 and 172800 (48 hours)", p.timeout_secs));
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &RunCommandParams) -> Step {
        let id = ctx.job.resource.id.as_str();
        let ec2 = or_step!(ctx.ec2().await);
        let instance = or_step!(describe_instance(&ec2, id).await);
        if let Some(skip) = opted_out(id, instance.tags()) {
            return skip;
        }
        let state = instance.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Pending);
        if state != InstanceStateName::Running {
            let retryable = state == InstanceStateName::Pending;
            return Step::Failed {
                retryable,
                error: format!("instance {id} is {}: Run Command needs it running", state.as_str()),
            };
        }
        let command = or_step!(send_once(&ctx, "", &p.document, self.parameters(&ctx, p)).await);
        Step::pending(Duration::from_secs(p.check_after_secs), &Sent { command, sent_ms: ctx.now_ms })
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &RunCommandParams, sent: Sent) -> Step {
        let id = ctx.job.resource.id.as_str();
        match or_step!(outcome(&ctx, &sent.command, sent.sent_ms).await) {
            Outcome::Running => Step::pending(Duration::from_secs(p.check_after_secs), &sent),
            Outcome::Succeeded(output) => Step::Done {
                summary: format!(
                    "{} on {id} succeeded (command {}){}",
                    p.document,
                    sent.command,
                    if output.is_empty() { String::new() } else { format!(": {output}") }
                ),
            },
            Outcome::Failed(why) => Step::Failed { retryable: false, error: format!("{} on {id} {why}", p.document) },
        }
    }
}
