//! RDS as AWS serves it, where the emulator is kinder:
//!
//! - Snapshots made or copied through the layer read `creating` for [`Ec2Plan::pending`];
//!   instances and clusters stopped or started through it read `stopping` or `starting` as
//!   long.
//! - A share of mutating calls answers `InternalFailure` before reaching the emulator
//!   ([`Ec2Plan::server_errors`]); a share of snapshot creates and copies is applied and then
//!   answers `InternalFailure` ([`Ec2Plan::lost_creates`]).
//! - A cross-region copy with a `KmsKeyId` (an encrypted source) must carry a `PreSignedUrl`:
//!   a signed request of the same copy in the source region naming this region as its
//!   destination, as RDS requires. Without one it answers `InvalidParameterCombination`.

use super::{lock, Ec2Plan, QueryRequest, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rand::Rng;
use std::collections::HashMap;
use std::time::Instant;

/// What the layer remembers of RDS calls: when each snapshot was made, by (region, id).
#[derive(Default)]
pub(super) struct Snapshots {
    made: HashMap<(String, String), Instant>,
    /// When each instance or cluster was last stopped or started, and which.
    powered: HashMap<(String, String), (Instant, bool)>,
}

const POWER: &[(&str, &str, bool)] = &[
    ("StopDBInstance", "DBInstanceIdentifier", false),
    ("StartDBInstance", "DBInstanceIdentifier", true),
    ("StopDBCluster", "DBClusterIdentifier", false),
    ("StartDBCluster", "DBClusterIdentifier", true),
];

const CREATES: &[(&str, &str)] = &[
    ("CreateDBSnapshot", "DBSnapshotIdentifier"),
    ("CopyDBSnapshot", "TargetDBSnapshotIdentifier"),
    ("CreateDBClusterSnapshot", "DBClusterSnapshotIdentifier"),
    ("CopyDBClusterSnapshot", "TargetDBClusterSnapshotIdentifier"),
];

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error><RequestId>realism</RequestId></ErrorResponse>"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/xml"));
    response
}

/// What the layer answers instead of RDS, if anything.
pub(super) fn before(
    plan: &Ec2Plan,
    request: &QueryRequest,
    count: &impl Fn(&'static str),
) -> Option<Response<Full<Bytes>>> {
    let action = request.action();
    if request.mutating() && rand::thread_rng().gen::<f64>() < plan.server_errors {
        count("server_error");
        return Some(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "An internal error has occurred"));
    }
    if !matches!(action, "CopyDBSnapshot" | "CopyDBClusterSnapshot") {
        return None;
    }
    let source_param =
        if action == "CopyDBSnapshot" { "SourceDBSnapshotIdentifier" } else { "SourceDBClusterSnapshotIdentifier" };
    let source_region = request.params.get(source_param).and_then(|arn| arn.split(':').nth(3)).unwrap_or_default();
    let cross_region = !source_region.is_empty() && source_region != request.region;
    if !cross_region || !request.params.contains_key("KmsKeyId") {
        return None;
    }
    let Some(url) = request.params.get("PreSignedUrl") else {
        count("presign_missing");
        let message = "PreSignedUrl must be specified for a cross-region copy of an encrypted snapshot";
        return Some(error(StatusCode::BAD_REQUEST, "InvalidParameterCombination", message));
    };
    let host = format!("https://rds.{source_region}.amazonaws.com/?");
    let names_us = url.contains(&format!("DestinationRegion={}", request.region));
    let signed = url.contains("X-Amz-Signature=") && url.contains(&format!("%2F{source_region}%2Frds%2Faws4_request"));
    if !(url.starts_with(&host) && url.contains(&format!("Action={action}")) && names_us && signed) {
        count("presign_invalid");
        let message = "The PreSignedUrl is not a signed request of this copy in its source region";
        return Some(error(StatusCode::BAD_REQUEST, "InvalidParameterValue", message));
    }
    count("presigned");
    None
}

/// RDS's answer as AWS would give it now; `None` when the reply is lost after the call was
/// applied (then [`lost`] is the answer).
pub(super) fn after(
    shared: &Shared,
    plan: &Ec2Plan,
    request: &QueryRequest,
    text: String,
    count: &impl Fn(&'static str),
) -> Option<String> {
    let action = request.action();
    if let Some((_, param)) = CREATES.iter().find(|(a, _)| *a == action) {
        if let Some(id) = request.params.get(*param) {
            let key = (request.region.clone(), id.to_ascii_lowercase());
            lock(&shared.seen).rds.made.insert(key, Instant::now());
        }
        if rand::thread_rng().gen::<f64>() < plan.lost_creates {
            count("lost_create");
            return None;
        }
        return Some(creating(shared, plan, request, text, count));
    }
    if matches!(action, "DescribeDBSnapshots" | "DescribeDBClusterSnapshots") {
        return Some(creating(shared, plan, request, text, count));
    }
    if let Some((_, param, start)) = POWER.iter().find(|(a, ..)| *a == action) {
        if let Some(id) = request.params.get(*param) {
            let key = (request.region.clone(), id.to_ascii_lowercase());
            lock(&shared.seen).rds.powered.insert(key, (Instant::now(), *start));
        }
    }
    if matches!(action, "DescribeDBInstances" | "DescribeDBClusters") {
        return Some(changing(shared, plan, request, text, count));
    }
    Some(text)
}

/// The answer of a call whose reply was lost after it was applied.
pub(super) fn lost() -> Response<Full<Bytes>> {
    error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "An internal error has occurred")
}

/// The snapshots in an answer that were made within the pending time, shown `creating`.
fn creating(
    shared: &Shared,
    plan: &Ec2Plan,
    request: &QueryRequest,
    text: String,
    count: &impl Fn(&'static str),
) -> String {
    let seen = lock(&shared.seen);
    let recent = |id: &str| {
        let key = (request.region.clone(), id.to_ascii_lowercase());
        seen.rds.made.get(&key).is_some_and(|at| at.elapsed() < plan.pending)
    };
    let mut text = text;
    for (element, id_tag) in
        [("DBSnapshot", "DBSnapshotIdentifier"), ("DBClusterSnapshot", "DBClusterSnapshotIdentifier")]
    {
        text = edit_items(&text, element, |item| {
            let id = super::xml::text(item, id_tag).unwrap_or_default();
            if recent(id) && item.contains("<Status>available</Status>") {
                count("pending");
                item.replace("<Status>available</Status>", "<Status>creating</Status>")
            } else {
                item.to_owned()
            }
        });
    }
    text
}

/// The instances and clusters in an answer stopped or started within the pending time, shown
/// `stopping` or `starting`.
fn changing(
    shared: &Shared,
    plan: &Ec2Plan,
    request: &QueryRequest,
    text: String,
    count: &impl Fn(&'static str),
) -> String {
    let seen = lock(&shared.seen);
    let mut text = text;
    for (element, id_tag, status_tag) in
        [("DBInstance", "DBInstanceIdentifier", "DBInstanceStatus"), ("DBCluster", "DBClusterIdentifier", "Status")]
    {
        text = edit_items(&text, element, |item| {
            let id = super::xml::text(item, id_tag).unwrap_or_default().to_ascii_lowercase();
            let recent =
                seen.rds.powered.get(&(request.region.clone(), id)).filter(|(at, _)| at.elapsed() < plan.pending);
            let (from, to) = match recent {
                Some((_, true)) => ("available", "starting"),
                Some((_, false)) => ("stopped", "stopping"),
                None => return item.to_owned(),
            };
            let (old, new) =
                (format!("<{status_tag}>{from}</{status_tag}>"), format!("<{status_tag}>{to}</{status_tag}>"));
            if item.contains(&old) {
                count("changing");
                item.replacen(&old, &new, 1)
            } else {
                item.to_owned()
            }
        });
    }
    text
}

/// `text` with every `<element>…</element>` replaced by what `edit` makes of it.
fn edit_items(text: &str, element: &str, mut edit: impl FnMut(&str) -> String) -> String {
    let (open, close) = (format!("<{element}>"), format!("</{element}>"));
    let mut out = String::with_capacity(text.len());
    let mut left = text;
    while let Some(start) = left.find(&open) {
        let Some(len) = left[start..].find(&close) else { break };
        out.push_str(&left[..start]);
        out.push_str(&edit(&left[start..start + len]));
        left = &left[start + len..];
    }
    out.push_str(left);
    out
}
