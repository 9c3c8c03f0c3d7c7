//! DynamoDB's control plane and the Tagging API as AWS serves them, where the emulator is
//! kinder:
//!
//! - `UpdateTable` leaves the table `UPDATING` for [`Ec2Plan::pending`]: describes say so, and
//!   another `UpdateTable` meanwhile answers `ResourceInUseException`.
//! - Throughput decreases past [`Ec2Plan::decreases_per_day`] on one table answer
//!   `LimitExceededException`, as DynamoDB's daily allowance does.
//! - `CreateBackup` makes a backup that reads `CREATING` for [`Ec2Plan::pending`]; another
//!   backup of the same table meanwhile answers `BackupInUseException`; `ListBackups` leaves a
//!   backup out for [`Ec2Plan::consistency`]; a share of creates is applied and then answers
//!   `InternalServerError` ([`Ec2Plan::lost_creates`]).
//! - Mutating calls answer `InternalServerError` at [`Ec2Plan::server_errors`].
//! - A table whose tags changed within [`Ec2Plan::consistency`] shows no tags to
//!   `ListTagsOfResource` and is left out of the Tagging API's `GetResources`.

use super::{lock, Broken, Ec2Plan, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rand::Rng;
use serde_json::{json, Value};
use std::time::Instant;

/// What the layer remembers of DynamoDB calls.
#[derive(Default)]
pub(super) struct Tables {
    /// When each table last started an update.
    updating: std::collections::HashMap<String, Instant>,
    /// Each backup's table and when it was made, by ARN.
    backups: std::collections::HashMap<String, (String, Instant)>,
    /// Throughput decreases per table.
    decreases: std::collections::HashMap<String, u32>,
    /// When each table's tags last changed, by ARN.
    tagged: std::collections::HashMap<String, Instant>,
}

/// A DynamoDB-shaped error answer.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "__type": format!("com.amazonaws.dynamodb.v20120810#{code}"), "message": message });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/x-amz-json-1.0"));
    response
}

/// A DynamoDB or Tagging API call: refused, or sent on and its answer changed as AWS's would
/// read now. `upstream` sends a JSON body with a target to the emulator.
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
    let table = input.get("TableName").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mutating = matches!(api, "CreateBackup" | "DeleteBackup" | "UpdateTable" | "TagResource" | "UntagResource");
    if mutating && rand::thread_rng().gen::<f64>() < plan.server_errors {
        count("server_error");
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Internal server error"));
    }
    let busy = |since: Option<&Instant>| since.is_some_and(|at| at.elapsed() < plan.pending);
    match api {
        "UpdateTable" => {
            if busy(lock(&shared.seen).tables.updating.get(&table)) {
                count("table_updating");
                let message =
                    format!("Attempt to change a resource which is still in use: Table is being updated: {table}");
                return Ok(error(StatusCode::BAD_REQUEST, "ResourceInUseException", &message));
            }
            if let Some(refused) = decrease_refused(shared, plan, &table, &input, count, &upstream).await? {
                return Ok(refused);
            }
        }
        "CreateBackup" => {
            let seen = lock(&shared.seen);
            if seen.tables.backups.values().any(|(t, at)| *t == table && at.elapsed() < plan.pending) {
                count("backup_in_use");
                let message = format!("Backup is in progress for table {table}");
                return Ok(error(StatusCode::BAD_REQUEST, "BackupInUseException", &message));
            }
        }
        _ => {}
    }

    let (status, text) = upstream(target.to_owned(), body.clone()).await?;
    let mut answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let now = Instant::now();
    if status.is_success() {
        let mut seen = lock(&shared.seen);
        let tables = &mut seen.tables;
        match api {
            "UpdateTable" => {
                tables.updating.insert(table.clone(), now);
                set(&mut answer, "/TableDescription/TableStatus", "UPDATING");
            }
            "CreateBackup" => {
                let arn = answer.pointer("/BackupDetails/BackupArn").and_then(Value::as_str).unwrap_or_default();
                tables.backups.insert(arn.to_owned(), (table.clone(), now));
                set(&mut answer, "/BackupDetails/BackupStatus", "CREATING");
            }
            "TagResource" | "UntagResource" => {
                let arn = input.get("ResourceArn").and_then(Value::as_str).unwrap_or_default();
                tables.tagged.insert(arn.to_owned(), now);
            }
            "DescribeTable" if busy(tables.updating.get(&table)) => {
                count("table_updating");
                set(&mut answer, "/Table/TableStatus", "UPDATING");
            }
            "DescribeBackup" => {
                let arn = input.get("BackupArn").and_then(Value::as_str).unwrap_or_default();
                if busy(tables.backups.get(arn).map(|(_, at)| at)) {
                    count("pending");
                    set(&mut answer, "/BackupDescription/BackupDetails/BackupStatus", "CREATING");
                }
            }
            "ListBackups" => {
                if let Some(list) = answer.get_mut("BackupSummaries").and_then(Value::as_array_mut) {
                    let made = |b: &Value| {
                        let arn = b.get("BackupArn").and_then(Value::as_str).unwrap_or_default();
                        tables.backups.get(arn).map(|(_, at)| *at)
                    };
                    let before = list.len();
                    list.retain(|b| made(b).is_none_or(|at| at.elapsed() >= plan.consistency));
                    for _ in list.len()..before {
                        count("hidden");
                    }
                    for b in list.iter_mut() {
                        if made(b).is_some_and(|at| at.elapsed() < plan.pending) {
                            b["BackupStatus"] = json!("CREATING");
                        }
                    }
                }
            }
            "ListTagsOfResource" => {
                let arn = input.get("ResourceArn").and_then(Value::as_str).unwrap_or_default();
                if tables.tagged.get(arn).is_some_and(|at| at.elapsed() < plan.consistency) {
                    count("hidden");
                    answer["Tags"] = json!([]);
                }
            }
            "GetResources" => {
                if let Some(list) = answer.get_mut("ResourceTagMappingList").and_then(Value::as_array_mut) {
                    let before = list.len();
                    list.retain(|m| {
                        let arn = m.get("ResourceARN").and_then(Value::as_str).unwrap_or_default();
                        tables.tagged.get(arn).is_none_or(|at| at.elapsed() >= plan.consistency)
                    });
                    for _ in list.len()..before {
                        count("hidden");
                    }
                }
            }
            _ => {}
        }
        drop(seen);
        if api == "CreateBackup" && rand::thread_rng().gen::<f64>() < plan.lost_creates {
            count("lost_create");
            return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Internal server error"));
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = status;
    let kind = if target.starts_with("DynamoDB") { "application/x-amz-json-1.0" } else { "application/x-amz-json-1.1" };
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(kind));
    Ok(response)
}

fn set(answer: &mut Value, pointer: &str, value: &str) {
    if let Some(slot) = answer.pointer_mut(pointer) {
        *slot = json!(value);
    }
}

/// The refusal of an `UpdateTable` that lowers a table's throughput once too often today.
async fn decrease_refused<F, Fut>(
    shared: &Shared,
    plan: &Ec2Plan,
    table: &str,
    input: &Value,
    count: &impl Fn(&'static str),
    upstream: &F,
) -> Result<Option<Response<Full<Bytes>>>, Broken>
where
    F: Fn(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, String), Broken>>,
{
    let (Some(allowed), Some(wanted)) = (plan.decreases_per_day, input.get("ProvisionedThroughput")) else {
        return Ok(None);
    };
    let ask = json!({ "TableName": table }).to_string();
    let (status, text) = upstream("DynamoDB_20120810.DescribeTable".into(), Bytes::from(ask)).await?;
    let now: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        return Ok(None);
    }
    let units = |v: &Value, key: &str| v.get(key).and_then(Value::as_i64).unwrap_or(0);
    let current = now.pointer("/Table/ProvisionedThroughput").cloned().unwrap_or(Value::Null);
    let lower = ["ReadCapacityUnits", "WriteCapacityUnits"].iter().any(|k| units(wanted, k) < units(&current, k));
    if !lower {
        return Ok(None);
    }
    let mut seen = lock(&shared.seen);
    let made = seen.tables.decreases.entry(table.to_owned()).or_default();
    if *made >= allowed {
        count("decrease_limited");
        let message = format!(
            "Subscriber limit exceeded: Provisioned throughput decreases are limited within a given UTC day \
             (Updates to table {table}: {made} decreases in the last day)"
        );
        return Ok(Some(error(StatusCode::BAD_REQUEST, "LimitExceededException", &message)));
    }
    *made += 1;
    Ok(None)
}
