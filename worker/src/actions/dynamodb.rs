//! What the DynamoDB actions share: the table as DynamoDB describes it, its tags (the opt-out
//! and the actions' own records), and one-line failures from DynamoDB's errors.

use super::ec2::{failed_unless, in_doubt_unless, SKIP_TAG};
use super::Step;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::TableDescription;
use aws_sdk_dynamodb::Client;

/// Codes DynamoDB answers when trying again later may pass: throttling, server errors, a
/// table or backup busy with another operation, too many table operations at once.
const RETRYABLE: &[&str] = &[
    "ThrottlingException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "InternalServerError",
    "ServiceUnavailable",
    "ResourceInUseException",
    "BackupInUseException",
    "TableInUseException",
    "LimitExceededException",
];

/// A failed step from a DynamoDB error. A `LimitExceededException` about throughput
/// decreases or billing-mode switches is not retryable: DynamoDB allows so many a day, and a
/// retry within the hour fails the same way.
pub fn failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match failed_unless(what, err, RETRYABLE) {
        Step::Failed { retryable: true, error } if is_daily_limit(err) => Step::Failed { retryable: false, error },
        other => other,
    }
}

fn is_daily_limit<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().is_some_and(|e| {
        e.code() == Some("LimitExceededException")
            && e.message().is_some_and(|m| m.contains("decreases") || m.contains("billing mode"))
    })
}

/// The failed step of a create sent once: in doubt (retryable, looked for first) when DynamoDB
/// did not answer or answered a server error.
pub fn create_failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    in_doubt_unless(what, err, RETRYABLE)
}

/// Whether a DynamoDB error says the table or backup does not exist.
pub fn not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(ProvideErrorMetadata::code).is_some_and(|c| {
        matches!(c, "ResourceNotFoundException" | "TableNotFoundException" | "BackupNotFoundException")
    })
}

/// The table as `DescribeTable` shows it (strongly consistent), or the step's failure (a table
/// that does not exist fails for good).
pub async fn describe_table(dynamodb: &Client, table: &str) -> Result<TableDescription, Step> {
    let gone = || Step::Failed { retryable: false, error: format!("table {table} does not exist") };
    match dynamodb.describe_table().table_name(table).send().await {
        Ok(out) => out.table.ok_or_else(gone),
        Err(e) if not_found(&e) => Err(gone()),
        Err(e) => Err(failed("DescribeTable", &e)),
    }
}

/// A table's tags, by key (`ListTagsOfResource`, every page). DynamoDB's tag reads lag its
/// tag writes by a few seconds.
pub async fn table_tags(dynamodb: &Client, arn: &str) -> Result<Vec<(String, String)>, Step> {
    let mut tags = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = match dynamodb.list_tags_of_resource().resource_arn(arn).set_next_token(next).send().await {
            Ok(out) => out,
            Err(e) => return Err(failed("ListTagsOfResource", &e)),
        };
        tags.extend(out.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())));
        match out.next_token {
            Some(token) if !token.is_empty() => next = Some(token),
            _ => return Ok(tags),
        }
    }
}

/// The table's ARN and whether it opted out (`opsfleet:skip = true`): the skipped step then.
pub async fn arn_unless_opted_out(dynamodb: &Client, table: &TableDescription, name: &str) -> Result<String, Step> {
    let arn = table.table_arn().unwrap_or_default().to_owned();
    let tags = table_tags(dynamodb, &arn).await?;
    if tags.iter().any(|(k, v)| k == SKIP_TAG && v.eq_ignore_ascii_case("true")) {
        return Err(Step::Skipped { reason: format!("table {name} is tagged {SKIP_TAG} = true") });
    }
    Ok(arn)
}

/// IAM: every table, and every backup of every table.
pub mod iam {
    /// Every table.
    pub const TABLES: &str = "arn:aws:dynamodb:*:*:table/*";
    /// Every backup of every table.
    pub const BACKUPS: &str = "arn:aws:dynamodb:*:*:table/*/backup/*";
}
