//! `rds-snapshot`: a manual snapshot of an RDS instance or an Aurora (or Multi-AZ) cluster,
//! copied to other regions (each with its own KMS key), done when the snapshot and every copy
//! are `available`; then the older snapshots this task made of the source beyond `retain` are
//! deleted, in the source region and in each destination.
//!
//! Idempotent by job: the snapshot and its copies are named `opsfleet-<task>-<job id>`, and
//! RDS keeps identifiers unique per account and region, so a create or copy sent again (a
//! lost reply, a redelivery) answers `…AlreadyExists` for what this job made, and is taken as
//! made. A snapshot or copy not found right after it was made is waited for, not failed.

use super::ec2::{not_visible, JOB_TAG, SOURCE_TAG, TASK_TAG};
use super::presign::presigned_url;
use super::rds::{already_exists, delete, describe_source, failed, iam, snapshot, snapshot_id, snapshots_of, tag};
use super::{check_after_in_range, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_rds::types::Tag;
use aws_sdk_rds::Client;
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::resource::looks_like_region;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A region to copy the snapshot to.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyTo {
    /// The destination region.
    pub region: String,
    /// The KMS key (ARN, id or alias) in that region to encrypt the copy with; required for an
    /// encrypted source (a KMS key is regional).
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

/// The params of `rds-snapshot`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RdsSnapshotParams {
    /// Regions to copy the snapshot to, each `{ region, kms_key_id }`.
    #[serde(default)]
    pub copy_to: Vec<CopyTo>,
    /// Keep the newest N snapshots this task made of the source in each region, delete older
    /// ones (none: keep all).
    #[serde(default)]
    pub retain: Option<u32>,
    /// More tags on the snapshot and its copies; values are templates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_check_after_secs() -> u64 {
    30
}

/// What a pending `rds-snapshot` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Progress {
    /// The snapshot's identifier (the copies have the same).
    pub snapshot: String,
    /// When the snapshot was made, Unix ms.
    pub made_ms: u64,
    /// When each destination's copy was started, Unix ms, by region.
    #[serde(default)]
    pub copies: BTreeMap<String, u64>,
}

/// The `rds-snapshot` action.
pub struct RdsSnapshot;

fn tags(ctx: &ActionContext<'_>, p: &RdsSnapshotParams, source: &str) -> Vec<Tag> {
    let mut out = vec![tag(TASK_TAG, &ctx.job.task), tag(JOB_TAG, &ctx.job.id), tag(SOURCE_TAG, source)];
    out.extend(p.tags.iter().filter(|(k, _)| !k.starts_with("opsfleet:")).map(|(k, v)| tag(k, &ctx.render(v))));
    out
}

impl RdsSnapshot {
    async fn client(&self, ctx: &ActionContext<'_>, region: &str) -> Result<Client, Step> {
        let account = &ctx.job.resource.account;
        ctx.aws()?.rds(account, region).await.map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
    }

    /// Starts the copy into `to`; one of the same identifier there already is this job's.
    async fn copy(
        &self,
        ctx: &ActionContext<'_>,
        p: &RdsSnapshotParams,
        source: &super::rds::Snapshot,
        to: &CopyTo,
    ) -> Result<(), Step> {
        let kind = ctx.job.resource.kind;
        let rds = self.client(ctx, &to.region).await?;
        let made = tags(ctx, p, &ctx.job.resource.id);
        let from = ctx.job.resource.region.as_str();
        let kms = to.kms_key_id.as_deref();
        let action = if kind == ResourceType::RdsCluster { "CopyDBClusterSnapshot" } else { "CopyDBSnapshot" };
        let presigned = match (source.encrypted, kms) {
            (true, None) => {
                return Err(Step::Failed {
                    retryable: false,
                    error: format!(
                        "snapshot {} is encrypted: copy_to {} needs a kms_key_id in that region",
                        source.id, to.region
                    ),
                })
            }
            (true, Some(key)) => {
                let (source_param, target_param) = if kind == ResourceType::RdsCluster {
                    ("SourceDBClusterSnapshotIdentifier", "TargetDBClusterSnapshotIdentifier")
                } else {
                    ("SourceDBSnapshotIdentifier", "TargetDBSnapshotIdentifier")
                };
                let params = [
                    (source_param, source.arn.as_str()),
                    (target_param, source.id.as_str()),
                    ("KmsKeyId", key),
                    ("DestinationRegion", to.region.as_str()),
                ];
                let account = &ctx.job.resource.account;
                let provider = ctx
                    .aws()?
                    .credentials(account)
                    .await
                    .map_err(|e| Step::Failed { retryable: true, error: e.to_string() })?;
                Some(presigned_url(&provider, from, action, &params).await?)
            }
            (false, _) => None,
        };
        let sent = if kind == ResourceType::RdsCluster {
            rds.copy_db_cluster_snapshot()
                .source_db_cluster_snapshot_identifier(&source.arn)
                .target_db_cluster_snapshot_identifier(&source.id)
                .set_kms_key_id(kms.map(str::to_owned))
                .set_pre_signed_url(presigned)
                .set_tags(Some(made))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| if already_exists(&e) { None } else { Some(failed(action, &e)) })
        } else {
            rds.copy_db_snapshot()
                .source_db_snapshot_identifier(&source.arn)
                .target_db_snapshot_identifier(&source.id)
                .set_kms_key_id(kms.map(str::to_owned))
                .set_pre_signed_url(presigned)
                .set_tags(Some(made))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| if already_exists(&e) { None } else { Some(failed(action, &e)) })
        };
        match sent {
            Ok(()) | Err(None) => Ok(()),
            Err(Some(step)) => Err(step),
        }
    }

    /// Deletes this task's available snapshots of the source in `region` beyond the newest
    /// `retain`; the count deleted.
    async fn retire(&self, ctx: &ActionContext<'_>, region: &str, retain: u32) -> Result<usize, Step> {
        let kind = ctx.job.resource.kind;
        let rds = self.client(ctx, region).await?;
        let mut ours: Vec<super::rds::Snapshot> = snapshots_of(&rds, kind, &ctx.job.resource.id)
            .await?
            .into_iter()
            .filter(|s| s.status == "available")
            .filter(|s| s.tags.iter().any(|(k, v)| k == TASK_TAG && *v == ctx.job.task))
            .filter(|s| s.tags.iter().any(|(k, _)| k == JOB_TAG))
            .collect();
        ours.sort_by_key(|s| std::cmp::Reverse(s.made));
        let mut deleted = 0;
        for old in ours.iter().skip(retain as usize) {
            delete(&rds, kind, &old.id).await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Action for RdsSnapshot {
    const NAME: &'static str = "rds-snapshot";
    type Params = RdsSnapshotParams;
    type State = Progress;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::RdsInstance, ResourceType::RdsCluster]
    }

    fn limit(&self) -> Option<LimitDefault> {
        // RDS runs at most 20 snapshot copies into a region per account at once (and fewer
        // for some engines): the jobs that copy share that, per account.
        Some(LimitDefault { name: "rds-snapshot".into(), max: 20, pool: "{account}".into() })
    }

    fn examples(&self) -> Vec<RdsSnapshotParams> {
        vec![RdsSnapshotParams {
            copy_to: vec![CopyTo { region: "us-west-2".into(), kms_key_id: Some("alias/backup".into()) }],
            retain: Some(7),
            tags: BTreeMap::from([("Purpose".into(), "nightly".into())]),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &RdsSnapshotParams) -> String {
        let r = &ctx.job.resource;
        let copies: Vec<&str> = p.copy_to.iter().map(|c| c.region.as_str()).collect();
        let copies = if copies.is_empty() { String::new() } else { format!(", copied to {}", copies.join(", ")) };
        let retain = p.retain.map(|n| format!(", keeping this task's newest {n}")).unwrap_or_default();
        format!("would snapshot {} {} as {}{copies}{retain}", r.kind, r.id, snapshot_id(&ctx.job.task, &ctx.job.id))
    }

    fn templates(&self, p: &RdsSnapshotParams) -> Vec<(String, String)> {
        p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())).collect()
    }

    fn statements(&self, p: &RdsSnapshotParams) -> Vec<Value> {
        use super::iam::{allow, allow_if, made_by_opsfleet, not_opted_out, tagged_by_opsfleet};
        use iam::*;
        let mut out = vec![
            allow(
                &[
                    "rds:DescribeDBInstances",
                    "rds:DescribeDBClusters",
                    "rds:DescribeDBSnapshots",
                    "rds:DescribeDBClusterSnapshots",
                ],
                &["*"],
            ),
            // The source, not opted out; the snapshot, named as opsfleet names them.
            allow_if(&["rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot"], &[INSTANCES, CLUSTERS], not_opted_out()),
            allow(&["rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot"], &[OWN_SNAPSHOTS, OWN_CLUSTER_SNAPSHOTS]),
            // Tags only as the snapshots and copies are made, with opsfleet:job on them.
            allow_if(&["rds:AddTagsToResource"], &[OWN_SNAPSHOTS, OWN_CLUSTER_SNAPSHOTS], tagged_by_opsfleet()),
        ];
        if !p.copy_to.is_empty() {
            out.push(allow(&["rds:CopyDBSnapshot", "rds:CopyDBClusterSnapshot"], &[SNAPSHOTS, CLUSTER_SNAPSHOTS]));
            if p.copy_to.iter().any(|c| c.kms_key_id.is_some()) {
                out.push(serde_json::json!({
                    "Effect": "Allow",
                    "Action": ["kms:DescribeKey", "kms:CreateGrant"],
                    "Resource": "arn:aws:kms:*:*:key/*",
                    "Condition": { "StringLike": { "kms:ViaService": "rds.*.amazonaws.com" } },
                }));
            }
        }
        if p.retain.is_some() {
            out.push(allow_if(
                &["rds:DeleteDBSnapshot", "rds:DeleteDBClusterSnapshot"],
                &[OWN_SNAPSHOTS, OWN_CLUSTER_SNAPSHOTS],
                made_by_opsfleet(),
            ));
        }
        out
    }

    fn validate(&self, p: &RdsSnapshotParams) -> Result<(), String> {
        check_after_in_range(p.check_after_secs)?;
        let mut seen = std::collections::BTreeSet::new();
        for to in &p.copy_to {
            if !looks_like_region(&to.region) {
                return Err(format!("params: copy_to region `{}` is not a region name", to.region));
            }
            if !seen.insert(&to.region) {
                return Err(format!("params: copy_to names {} twice", to.region));
            }
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &RdsSnapshotParams) -> Step {
        let r = &ctx.job.resource;
        if p.copy_to.iter().any(|c| c.region == r.region) {
            return Step::Failed {
                retryable: false,
                error: format!("copy_to names the source's own region {}", r.region),
            };
        }
        let rds = or_step!(self.client(&ctx, &r.region).await);
        let (status, _) = or_step!(describe_source(&rds, r.kind, &r.id).await);
        let id = snapshot_id(&ctx.job.task, &ctx.job.id);
        let made = tags(&ctx, p, &r.id);
        let sent = if r.kind == ResourceType::RdsCluster {
            rds.create_db_cluster_snapshot()
                .db_cluster_identifier(&r.id)
                .db_cluster_snapshot_identifier(&id)
                .set_tags(Some(made))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| if already_exists(&e) { None } else { Some(failed("CreateDBClusterSnapshot", &e)) })
        } else {
            rds.create_db_snapshot()
                .db_instance_identifier(&r.id)
                .db_snapshot_identifier(&id)
                .set_tags(Some(made))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| if already_exists(&e) { None } else { Some(failed("CreateDBSnapshot", &e)) })
        };
        match sent {
            Ok(()) | Err(None) => {}
            Err(Some(Step::Failed { retryable: true, error })) => {
                return Step::Failed { retryable: true, error: format!("{error} ({} {} is {status})", r.kind, r.id) }
            }
            Err(Some(step)) => return step,
        }
        let progress = Progress { snapshot: id, made_ms: ctx.now_ms, copies: BTreeMap::new() };
        Step::pending(Duration::from_secs(p.check_after_secs), &progress)
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &RdsSnapshotParams, mut progress: Progress) -> Step {
        let r = &ctx.job.resource;
        let wait = Duration::from_secs(p.check_after_secs);
        let rds = or_step!(self.client(&ctx, &r.region).await);
        let Some(source) = or_step!(snapshot(&rds, r.kind, &progress.snapshot).await) else {
            let pending = Step::pending(wait, &progress);
            return not_visible("snapshot", &progress.snapshot, progress.made_ms, &ctx, pending);
        };
        match source.status.as_str() {
            "available" => {}
            "creating" | "pending" | "backing-up" | "copying" => return Step::pending(wait, &progress),
            other => {
                return Step::Failed {
                    retryable: false,
                    error: format!("snapshot {} of {} is {other}", source.id, r.id),
                }
            }
        }
        // Every copy started, then every copy available.
        let mut started = false;
        for to in &p.copy_to {
            if !progress.copies.contains_key(&to.region) {
                or_step!(self.copy(&ctx, p, &source, to).await);
                progress.copies.insert(to.region.clone(), ctx.now_ms);
                started = true;
            }
        }
        if started {
            return Step::pending(wait, &progress);
        }
        for (region, since) in &progress.copies {
            let there = or_step!(self.client(&ctx, region).await);
            let Some(copy) = or_step!(snapshot(&there, r.kind, &progress.snapshot).await) else {
                let pending = Step::pending(wait, &progress);
                return not_visible("copy in", region, *since, &ctx, pending);
            };
            match copy.status.as_str() {
                "available" => {}
                "creating" | "pending" | "copying" => return Step::pending(wait, &progress),
                other => {
                    return Step::Failed { retryable: false, error: format!("copy {} in {region} is {other}", copy.id) }
                }
            }
        }
        let mut deleted = 0;
        if let Some(retain) = p.retain {
            for region in std::iter::once(&r.region).chain(progress.copies.keys()) {
                deleted += or_step!(self.retire(&ctx, region, retain).await);
            }
        }
        let copies = if progress.copies.is_empty() {
            String::new()
        } else {
            format!(", copied to {}", progress.copies.keys().cloned().collect::<Vec<_>>().join(", "))
        };
        Step::Done {
            summary: format!(
                "snapshot {} of {} is available{copies}; {deleted} older deleted",
                progress.snapshot, r.id
            ),
        }
    }
}
