//! `dynamodb-backup`: an on-demand backup of a table, done when DynamoDB reads it
//! `AVAILABLE`; then the older backups this task made of the table beyond `retain` are
//! deleted.
//!
//! The backup is named `opsfleet.<task>.<date>.<job id>`: the name is the job's record, since
//! `CreateBackup` takes no idempotency token and backups take no tags. Before creating, the
//! action lists the table's backups for that name (again after the consistency window on a
//! later attempt), so a redelivered job or a create whose reply was lost makes no second
//! backup. A backup not found right after its create is waited for, not failed.

use super::dynamodb::{
    arn_unless_opted_out, create_failed, describe_table, failed, iam::BACKUPS, iam::TABLES, not_found,
};
use super::ec2::{look_before_making, not_visible};
use super::{check_after_in_range, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{BackupStatus, BackupSummary, BackupTypeFilter};
use aws_sdk_dynamodb::Client;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The params of `dynamodb-backup`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamodbBackupParams {
    /// Keep the newest N backups this task made of the table, delete older ones (none: keep
    /// all).
    #[serde(default)]
    pub retain: Option<u32>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_check_after_secs() -> u64 {
    10
}

/// The backup a pending `dynamodb-backup` waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Made {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// When it was made, Unix ms.
    pub made_ms: u64,
}

/// The `dynamodb-backup` action.
pub struct DynamodbBackup;

/// The name of the backup a job makes: `opsfleet.<task>.<date>.<job id>`.
fn backup_name(ctx: &ActionContext<'_>) -> String {
    format!("opsfleet.{}.{}.{}", ctx.job.task, ctx.render("{date}"), ctx.job.id)
}

/// Whether a backup name is one a job of `task` made.
fn made_by_task(name: &str, task: &str) -> bool {
    let mut parts = name.rsplitn(3, '.');
    let (Some(job), Some(_date), Some(rest)) = (parts.next(), parts.next(), parts.next()) else { return false };
    job.len() == 32 && job.bytes().all(|b| b.is_ascii_hexdigit()) && rest.strip_prefix("opsfleet.") == Some(task)
}

/// Every user backup of a table (`ListBackups`, every page).
async fn backups_of(dynamodb: &Client, table: &str) -> Result<Vec<BackupSummary>, Step> {
    let mut found = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let request = dynamodb
            .list_backups()
            .table_name(table)
            .backup_type(BackupTypeFilter::User)
            .set_exclusive_start_backup_arn(start);
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => return Err(failed("ListBackups", &e)),
        };
        found.extend(out.backup_summaries().iter().cloned());
        match out.last_evaluated_backup_arn {
            Some(arn) if !arn.is_empty() => start = Some(arn),
            _ => return Ok(found),
        }
    }
}

/// Deletes the task's available backups of the table beyond the newest `retain`; the count
/// deleted. A backup busy with another operation is left for the next run.
async fn retire(dynamodb: &Client, table: &str, task: &str, retain: u32) -> Result<usize, Step> {
    let mut ours: Vec<BackupSummary> = backups_of(dynamodb, table)
        .await?
        .into_iter()
        .filter(|b| b.backup_status() == Some(&BackupStatus::Available))
        .filter(|b| b.backup_name().is_some_and(|n| made_by_task(n, task)))
        .collect();
    ours.sort_by_key(|b| std::cmp::Reverse(b.backup_creation_date_time().map(|t| (t.secs(), t.subsec_nanos()))));
    let mut deleted = 0;
    for old in ours.iter().skip(retain as usize) {
        let Some(arn) = old.backup_arn() else { continue };
        match dynamodb.delete_backup().backup_arn(arn).send().await {
            Ok(_) => deleted += 1,
            Err(e) if not_found(&e) => {}
            Err(e)
                if e.as_service_error().and_then(|s| aws_sdk_dynamodb::error::ProvideErrorMetadata::code(s))
                    == Some("BackupInUseException") => {}
            Err(e) => return Err(failed("DeleteBackup", &e)),
        }
    }
    Ok(deleted)
}

impl DynamodbBackup {
    /// The step of a backup found or made: done when available (after retention), pending
    /// while creating.
    async fn settle(
        &self,
        ctx: &ActionContext<'_>,
        p: &DynamodbBackupParams,
        made: Made,
        status: Option<&BackupStatus>,
    ) -> Step {
        let table = ctx.job.resource.id.as_str();
        match status {
            Some(BackupStatus::Available) => {
                let dynamodb = or_step!(ctx.dynamodb().await);
                let deleted = match p.retain {
                    Some(retain) => or_step!(retire(&dynamodb, table, &ctx.job.task, retain).await),
                    None => 0,
                };
                Step::Done {
                    summary: format!("backup {} of table {table} is available; {deleted} older deleted", made.name),
                }
            }
            Some(BackupStatus::Deleted) => {
                Step::Failed { retryable: false, error: format!("backup {} of table {table} was deleted", made.name) }
            }
            _ => Step::pending(Duration::from_secs(p.check_after_secs), &made),
        }
    }
}

#[async_trait]
impl Action for DynamodbBackup {
    const NAME: &'static str = "dynamodb-backup";
    type Params = DynamodbBackupParams;
    type State = Made;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::DynamoTable]
    }

    fn examples(&self) -> Vec<DynamodbBackupParams> {
        vec![DynamodbBackupParams { retain: Some(7), check_after_secs: default_check_after_secs() }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &DynamodbBackupParams) -> String {
        let retain = p.retain.map(|n| format!(", keeping this task's newest {n}")).unwrap_or_default();
        format!("would back up table {} as {}{retain}", ctx.job.resource.id, backup_name(&ctx))
    }

    fn statements(&self, p: &DynamodbBackupParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["dynamodb:DescribeTable", "dynamodb:ListTagsOfResource"], &[TABLES]),
            allow_if(&["dynamodb:CreateBackup"], &[TABLES], not_opted_out()),
            allow(&["dynamodb:ListBackups"], &["*"]),
            allow(&["dynamodb:DescribeBackup"], &[BACKUPS]),
        ];
        // Backups take no tags and their ARNs no names: IAM cannot tell opsfleet's from others.
        // The action deletes only backups named as it names them.
        if p.retain.is_some() {
            out.push(allow(&["dynamodb:DeleteBackup"], &[BACKUPS]));
        }
        out
    }

    fn validate(&self, p: &DynamodbBackupParams) -> Result<(), String> {
        check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &DynamodbBackupParams) -> Step {
        let dynamodb = or_step!(ctx.dynamodb().await);
        let table = ctx.job.resource.id.as_str();
        let description = or_step!(describe_table(&dynamodb, table).await);
        or_step!(arn_unless_opted_out(&dynamodb, &description, table).await);
        let name = backup_name(&ctx);
        let look = || async {
            let found = backups_of(&dynamodb, table).await?;
            Ok(found.into_iter().find(|b| b.backup_name() == Some(name.as_str())))
        };
        if let Some(found) = or_step!(look_before_making(&ctx, look).await) {
            let made = Made { arn: found.backup_arn().unwrap_or_default().to_owned(), name, made_ms: ctx.now_ms };
            return self.settle(&ctx, p, made, found.backup_status()).await;
        }
        // Sent once: a retry after a lost reply would make a second backup; the next attempt
        // looks first.
        let once = aws_sdk_dynamodb::config::Builder::default()
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled());
        let create = dynamodb.create_backup().table_name(table).backup_name(&name);
        let out = match create.customize().config_override(once).send().await {
            Ok(out) => out,
            Err(e) => return create_failed("CreateBackup", &e),
        };
        let details = out.backup_details();
        let made =
            Made { arn: details.map(|d| d.backup_arn().to_owned()).unwrap_or_default(), name, made_ms: ctx.now_ms };
        let status = details.map(|d| d.backup_status().clone());
        self.settle(&ctx, p, made, status.as_ref()).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &DynamodbBackupParams, made: Made) -> Step {
        let dynamodb = or_step!(ctx.dynamodb().await);
        match dynamodb.describe_backup().backup_arn(&made.arn).send().await {
            Ok(out) => {
                let status =
                    out.backup_description().and_then(|d| d.backup_details()).map(|d| d.backup_status().clone());
                self.settle(&ctx, p, made, status.as_ref()).await
            }
            Err(e) if not_found(&e) => {
                let pending = Step::pending(Duration::from_secs(p.check_after_secs), &made);
                not_visible("backup", &made.name, made.made_ms, &ctx, pending)
            }
            Err(e) => failed("DescribeBackup", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::made_by_task;

    #[test]
    fn a_tasks_backups_are_told_from_other_tasks_and_from_backups_made_by_hand() {
        let job = "0123456789abcdef0123456789abcdef";
        assert!(made_by_task(&format!("opsfleet.nightly.2024-06-03.{job}"), "nightly"));
        assert!(made_by_task(&format!("opsfleet.a.b.2024-06-03.{job}"), "a.b"));
        assert!(!made_by_task(&format!("opsfleet.a.b.2024-06-03.{job}"), "a"), "another task's, with a dot");
        assert!(!made_by_task(&format!("opsfleet.nightly.2024-06-03.{job}"), "night"));
        assert!(!made_by_task("opsfleet.nightly.2024-06-03.by-hand", "nightly"));
        assert!(!made_by_task("before-upgrade", "nightly"));
    }
}
