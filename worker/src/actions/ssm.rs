//! Run Command, as the actions use it: a command sent once per job and purpose (its comment
//! names both, and is looked for before sending again), and its invocation's outcome.

use super::ec2::{failed_unless, in_doubt_unless, look_before_making, may_still_appear};
use super::{ActionContext, Step};
use aws_sdk_ssm::types::CommandInvocationStatus;
use std::collections::BTreeMap;

/// Codes SSM answers when trying again later may pass.
const RETRYABLE: &[&str] =
    &["ThrottlingException", "InternalServerError", "ServiceUnavailable", "InvalidInstanceId", "TooManyUpdates"];

/// How much of a command's output a failure or summary quotes.
const TAIL: usize = 400;

/// A failed step from an SSM error.
pub fn failed<E, R>(what: &str, err: &aws_sdk_ssm::error::SdkError<E, R>) -> Step
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    failed_unless(what, err, RETRYABLE)
}

/// The last `TAIL` characters of an output, on one line.
pub fn tail(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let skip = flat.chars().count().saturating_sub(TAIL);
    let cut: String = flat.chars().skip(skip).collect();
    if skip > 0 {
        format!("…{cut}")
    } else {
        cut
    }
}

/// The comment a job's command carries: `opsfleet job <id>`, and its purpose if any.
pub fn comment(ctx: &ActionContext<'_>, purpose: &str) -> String {
    if purpose.is_empty() {
        format!("opsfleet job {}", ctx.job.id)
    } else {
        format!("opsfleet job {} {purpose}", ctx.job.id)
    }
}

/// An SSM client in the job's account and region.
pub async fn client(ctx: &ActionContext<'_>) -> Result<aws_sdk_ssm::Client, Step> {
    let r = &ctx.job.resource;
    ctx.aws()?.ssm(&r.account, &r.region).await.map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
}

/// Sends `document` with `parameters` to the job's instance once for this job and `purpose`:
/// the command an earlier attempt sent is found by its comment (again after the consistency
/// window on a later attempt) and not sent again. The command's id.
pub async fn send_once(
    ctx: &ActionContext<'_>,
    purpose: &str,
    document: &str,
    parameters: BTreeMap<String, Vec<String>>,
) -> Result<String, Step> {
    let id = ctx.job.resource.id.as_str();
    let ssm = client(ctx).await?;
    let comment = comment(ctx, purpose);
    let look = || async {
        let out = ssm.list_commands().instance_id(id).send().await.map_err(|e| failed("ListCommands", &e))?;
        let found = out.commands().iter().find(|c| c.comment() == Some(comment.as_str()));
        Ok(found.and_then(|c| c.command_id()).map(str::to_owned))
    };
    if let Some(command) = look_before_making(ctx, look).await? {
        return Ok(command);
    }
    let once =
        aws_sdk_ssm::config::Builder::default().retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled());
    let send = ssm
        .send_command()
        .instance_ids(id)
        .document_name(document)
        .comment(&comment)
        .set_parameters(Some(parameters.into_iter().collect()))
        .customize()
        .config_override(once);
    match send.send().await {
        Ok(out) => Ok(out.command().and_then(|c| c.command_id()).unwrap_or_default().to_owned()),
        Err(e) => Err(in_doubt_unless("SendCommand", &e, RETRYABLE)),
    }
}

/// The purposes of the commands this job sent to its instance that SSM lists now (the part of
/// their comments after `opsfleet job <id> `).
pub async fn purposes_sent(ctx: &ActionContext<'_>) -> Result<Vec<String>, Step> {
    let ssm = client(ctx).await?;
    let prefix = format!("{} ", comment(ctx, ""));
    let mut pages = ssm.list_commands().instance_id(&ctx.job.resource.id).into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| failed("ListCommands", &e))?;
        found.extend(page.commands().iter().filter_map(|c| c.comment()?.strip_prefix(&prefix)).map(str::to_owned));
    }
    Ok(found)
}

/// How a command's invocation on the job's instance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished (or not known yet right after its send).
    Running,
    /// Succeeded: the tail of its output.
    Succeeded(String),
    /// Did not succeed: its status, exit code and the tail of its error output (or output).
    Failed(String),
}

/// The outcome of `command` on the job's instance, sent at `sent_ms`.
pub async fn outcome(ctx: &ActionContext<'_>, command: &str, sent_ms: u64) -> Result<Outcome, Step> {
    let id = ctx.job.resource.id.as_str();
    let ssm = client(ctx).await?;
    let out = match ssm.get_command_invocation().command_id(command).instance_id(id).send().await {
        Ok(out) => out,
        Err(e)
            if e.as_service_error().and_then(aws_sdk_ssm::error::ProvideErrorMetadata::code)
                == Some("InvocationDoesNotExist") =>
        {
            if may_still_appear(sent_ms, ctx.now_ms) {
                return Ok(Outcome::Running);
            }
            return Err(Step::Failed {
                retryable: false,
                error: format!(
                    "command {command} on {id} is not found {} s after it was sent",
                    ctx.now_ms.saturating_sub(sent_ms) / 1000
                ),
            });
        }
        Err(e) => return Err(failed("GetCommandInvocation", &e)),
    };
    let output = tail(out.standard_output_content().unwrap_or_default());
    Ok(match out.status().cloned().unwrap_or(CommandInvocationStatus::Pending) {
        CommandInvocationStatus::Pending
        | CommandInvocationStatus::InProgress
        | CommandInvocationStatus::Delayed
        | CommandInvocationStatus::Cancelling => Outcome::Running,
        CommandInvocationStatus::Success => Outcome::Succeeded(output),
        other => {
            let errors = tail(out.standard_error_content().unwrap_or_default());
            let shown = if errors.is_empty() { output } else { errors };
            Outcome::Failed(format!(
                "{} with code {} (command {command}): {shown}",
                other.as_str(),
                out.response_code()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn a_long_output_is_quoted_by_its_end_on_one_line() {
        let long = format!("start\n{}\nthe end", "x".repeat(1000));
        let t = tail(&long);
        assert!(t.starts_with('…') && t.ends_with("the end") && !t.contains('\n'), "{t}");
        assert_eq!(tail("ok\n"), "ok");
    }
}
