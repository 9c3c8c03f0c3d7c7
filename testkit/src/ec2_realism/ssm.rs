//! SSM's Run Command as AWS serves it, where the emulator is kinder (it answers every
//! invocation `Success` at once):
//!
//! - For [`Ec2Plan::consistency`] after `SendCommand`, `GetCommandInvocation` answers
//!   `InvocationDoesNotExist` and `ListCommands` leaves the command out.
//! - For [`Ec2Plan::pending`] after that, the invocation reads `InProgress`.
//! - A command whose `commands` contain one of [`Ec2Plan::failing_commands`] then reads
//!   `Failed` with code 1 and an error output.
//! - `SendCommand` answers `InternalServerError` at [`Ec2Plan::server_errors`], and a share is
//!   sent and then answers it ([`Ec2Plan::lost_creates`]).

use super::dynamodb::error;
use super::{lock, Broken, Ec2Plan, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// What the layer remembers of commands: when each was sent and whether it fails.
#[derive(Default)]
pub(super) struct Commands {
    sent: HashMap<String, (Instant, bool)>,
}

/// A Run Command call: refused, or sent on and its answer changed as SSM's would read now.
pub(super) async fn serve<F, Fut>(
    shared: &Shared,
    plan: &Ec2Plan,
    target: &str,
    body: &Bytes,
    count: &impl Fn(&'static str),
    upstream: F,
) -> Result<Response<Full<Bytes>>, Broken>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, String), Broken>>,
{
    let api = target.split('.').nth(1).unwrap_or_default();
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let command = input.get("CommandId").and_then(Value::as_str).unwrap_or_default().to_owned();
    if api == "SendCommand" && rand::thread_rng().gen::<f64>() < plan.server_errors {
        count("server_error");
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Internal server error"));
    }
    let known = lock(&shared.seen).commands.sent.get(&command).copied();
    if api == "GetCommandInvocation" && known.is_some_and(|(at, _)| at.elapsed() < plan.consistency) {
        count("not_found");
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "InvocationDoesNotExist",
            "An error occurred (InvocationDoesNotExist)",
        ));
    }
    let (status, text) = upstream(target.to_owned(), body.clone()).await?;
    let mut answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        match api {
            "SendCommand" => {
                let id = answer.pointer("/Command/CommandId").and_then(Value::as_str).unwrap_or_default().to_owned();
                let commands =
                    input.pointer("/Parameters/commands").and_then(Value::as_array).cloned().unwrap_or_default();
                let fails = commands
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|c| plan.failing_commands.iter().any(|f| c.contains(f.as_str())));
                lock(&shared.seen).commands.sent.insert(id, (Instant::now(), fails));
                if rand::thread_rng().gen::<f64>() < plan.lost_creates {
                    count("lost_create");
                    return Ok(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalServerError",
                        "Internal server error",
                    ));
                }
            }
            "GetCommandInvocation" => {
                if let Some((at, fails)) = known {
                    if at.elapsed() < plan.consistency + plan.pending {
                        count("pending");
                        answer["Status"] = json!("InProgress");
                        answer["StatusDetails"] = json!("InProgress");
                    } else if fails {
                        count("command_failed");
                        answer["Status"] = json!("Failed");
                        answer["StatusDetails"] = json!("Failed");
                        answer["ResponseCode"] = json!(1);
                        answer["StandardErrorContent"] = json!("the command exited with status 1");
                    }
                }
            }
            "ListCommands" => {
                let seen = lock(&shared.seen);
                if let Some(list) = answer.get_mut("Commands").and_then(Value::as_array_mut) {
                    let before = list.len();
                    list.retain(|c| {
                        let id = c.get("CommandId").and_then(Value::as_str).unwrap_or_default();
                        seen.commands.sent.get(id).is_none_or(|(at, _)| at.elapsed() >= plan.consistency)
                    });
                    for _ in list.len()..before {
                        count("hidden");
                    }
                }
            }
            _ => {}
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"));
    Ok(response)
}
