//! What the EC2 actions share: the tags opsfleet puts on what it makes and looks for before
//! making it again, the opt-out tag, and one-line failures from SDK errors (retryable when
//! trying again may pass).

use super::{ActionContext, Step};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, Tag, TagSpecification};
use std::collections::BTreeMap;

/// The task that made a resource.
pub const TASK_TAG: &str = "opsfleet:task";
/// The job that made a resource: what an action looks for before making it again.
pub const JOB_TAG: &str = "opsfleet:job";
/// The resource a made resource was made from (a volume for a snapshot, an instance for an AMI).
pub const SOURCE_TAG: &str = "opsfleet:source";
/// `opsfleet:skip = true` on a resource: opsfleet leaves it alone.
pub const SKIP_TAG: &str = "opsfleet:skip";

/// A tag.
pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// A filter of one value.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The tags of what a job makes from `source`: opsfleet's own, those copied from the source
/// (not `aws:` ones, nor opsfleet's), then the task's `tags` (rendered templates).
pub fn made_tags(ctx: &ActionContext<'_>, source: &str, copied: &[Tag], extra: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    for t in copied {
        if let (Some(k), Some(v)) = (t.key(), t.value()) {
            if !k.starts_with("aws:") && !k.starts_with("opsfleet:") {
                tags.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    for (k, v) in extra {
        tags.insert(k.clone(), ctx.render(v));
    }
    tags.insert(TASK_TAG.into(), ctx.job.task.clone());
    tags.insert(JOB_TAG.into(), ctx.job.id.clone());
    tags.insert(SOURCE_TAG.into(), source.to_owned());
    // EC2 takes at most 50 tags per resource.
    tags.into_iter().take(50).map(|(k, v)| tag(&k, &v)).collect()
}

/// A tag specification for what is made.
pub fn spec(kind: Ec2Type, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags.to_vec())).build()
}

/// Whether tags opt a resource out (`opsfleet:skip = true`), with the reason.
pub fn opted_out(resource: &str, tags: &[Tag]) -> Option<Step> {
    tags.iter()
        .any(|t| t.key() == Some(SKIP_TAG) && t.value().is_some_and(|v| v.eq_ignore_ascii_case("true")))
        .then(|| Step::Skipped { reason: format!("{resource} is tagged {SKIP_TAG} = true") })
}

/// Codes EC2 answers when trying again later may pass.
const RETRYABLE: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "IncorrectState",
    "IncorrectInstanceState",
    "PendingSnapshotLimitExceeded",
    "ResourceLimitExceeded",
    "SnapshotCreationPerVolumeRateExceeded",
    "ConcurrentSnapshotLimitExceeded",
];

/// A failed step from an SDK error: retryable for throttling, server errors, transport and
/// states that pass; not for what the request itself got wrong.
pub fn failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message: String = e.message().unwrap_or_default().chars().take(300).collect();
            Step::Failed { retryable: RETRYABLE.contains(&code), error: format!("{what}: {code}: {message}") }
        }
        other => Step::Failed { retryable: true, error: format!("{what}: {}", one_line(&other.to_string())) },
    }
}

/// Whether an SDK error says the resource does not exist.
pub fn not_found<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|c| c.ends_with(".NotFound") || c.contains("NotFound"))
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().take(300).collect()
}
