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
    // EC2 takes at most 50 tags per resource: opsfleet's own always go on, the others fill
    // what is left.
    let mut out: Vec<Tag> = [(TASK_TAG, ctx.job.task.as_str()), (JOB_TAG, ctx.job.id.as_str()), (SOURCE_TAG, source)]
        .iter()
        .map(|(k, v)| tag(k, v))
        .collect();
    out.extend(tags.iter().take(MAX_TAGS - out.len()).map(|(k, v)| tag(k, v)));
    out
}

/// The most tags an EC2 resource carries.
pub const MAX_TAGS: usize = 50;

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
    // AWS's advice is to wait and try again (another zone or instance type may have it).
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
];

/// A failed step from an SDK error: retryable for throttling, server errors, transport and
/// states that pass; not for what the request itself got wrong.
pub fn failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    failed_unless(what, err, RETRYABLE)
}

/// A failed step from an SDK error of any service: retryable for the service's `retryable`
/// codes and for errors that are not the service's answer (transport, timeouts).
pub fn failed_unless<E, R>(what: &str, err: &SdkError<E, R>, retryable: &[&str]) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown");
            let message: String = e.message().unwrap_or_default().chars().take(300).collect();
            Step::Failed { retryable: retryable.contains(&code), error: format!("{what}: {code}: {message}") }
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

/// How long EC2's reads may lag its writes: a resource made or tagged this recently may be
/// missing from a describe. An in-doubt create looks again after this long before creating.
pub const CONSISTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after its create a resource that a describe by id does not find is taken to be
/// not visible yet rather than gone.
pub const NOT_FOUND_GRACE_MS: u64 = 5 * 60 * 1000;

/// Whether something made at `made_ms` and not found at `now_ms` may still appear (unknown
/// creation times, from states written before they were recorded, are given the benefit).
pub fn may_still_appear(made_ms: u64, now_ms: u64) -> bool {
    made_ms == 0 || now_ms.saturating_sub(made_ms) < NOT_FOUND_GRACE_MS
}

/// A pending step for what is not visible yet, or the failure of what is gone.
pub fn not_visible(what: &str, id: &str, made_ms: u64, ctx: &ActionContext<'_>, pending: Step) -> Step {
    if may_still_appear(made_ms, ctx.now_ms) {
        pending
    } else {
        Step::Failed {
            retryable: false,
            error: format!(
                "{what} {id} is not found {} s after it was made",
                ctx.now_ms.saturating_sub(made_ms) / 1000
            ),
        }
    }
}

/// Config for a create that has no idempotency token: the SDK does not send it again by
/// itself (a retry after a lost reply would make a second one); the action looks first.
pub fn sent_once() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
}

/// The failed step of a create sent once: retryable unless the service refused the request
/// itself, with a note that the next attempt looks for what it may have made.
pub fn create_failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    in_doubt_unless(what, err, RETRYABLE)
}

/// [`create_failed`] for a service whose retryable codes are `retryable`.
pub fn in_doubt_unless<E, R>(what: &str, err: &SdkError<E, R>, retryable: &[&str]) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match failed_unless(what, err, retryable) {
        Step::Failed { retryable: true, error } => Step::Failed {
            retryable: true,
            error: format!("{error} (in doubt: the next attempt looks before it makes)"),
        },
        Step::Failed { retryable: false, error } if in_doubt(err) => Step::Failed {
            retryable: true,
            error: format!("{error} (in doubt: the next attempt looks before it makes)"),
        },
        other => other,
    }
}

/// Whether a create's error leaves it unknown whether it was made: no answer, or a server
/// error.
fn in_doubt<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .is_none_or(|c| matches!(c, "InternalError" | "InternalFailure" | "InternalServerError" | "Unavailable")),
        _ => true,
    }
}

/// Looks for what this job made. On a later attempt, when nothing is found, looks again after
/// [`CONSISTENCY_WINDOW`]: an earlier attempt may have made it (a lost reply, a crash, a
/// timeout) and a filtered describe may not show it yet.
pub async fn look_before_making<T, F, Fut>(ctx: &ActionContext<'_>, look: F) -> Result<Option<T>, Step>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Step>>,
{
    if let Some(found) = look().await? {
        return Ok(Some(found));
    }
    if waited_to_look_again(ctx).await {
        return look().await;
    }
    Ok(None)
}

/// On a later attempt, waits out [`CONSISTENCY_WINDOW`] and says to look again for what an
/// earlier attempt may have written and a describe did not show yet.
pub async fn waited_to_look_again(ctx: &ActionContext<'_>) -> bool {
    if ctx.attempt > 1 {
        tokio::time::sleep(CONSISTENCY_WINDOW).await;
    }
    ctx.attempt > 1
}

/// An instance as a describe by id shows it, or the step's failure (one that does not exist
/// fails for good).
pub async fn describe_instance(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<aws_sdk_ec2::types::Instance, Step> {
    let gone = || Step::Failed { retryable: false, error: format!("instance {id} does not exist") };
    let out = match ec2.describe_instances().instance_ids(id).send().await {
        Ok(out) => out,
        Err(e) if not_found(&e) => return Err(gone()),
        Err(e) => return Err(failed("DescribeInstances", &e)),
    };
    out.reservations().iter().flat_map(|r| r.instances()).next().cloned().ok_or_else(gone)
}
