//! `snapshot-copy`: a copy of a snapshot in another region; done when the copy is
//! `completed` (then the source is deleted if asked). Takes a slot of the `snapshot-copy`
//! limit, pooled by destination region: AWS runs at most 20 copies at once into a region.
//!
//! Idempotent by job: before copying, it looks in the destination region for a snapshot tagged
//! with the job's id.

use super::ec2::{failed, filter, made_tags, not_found, opted_out, spec, JOB_TAG};
use super::{default_check_after_secs, parse_params, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{ResourceType as Ec2Type, SnapshotState};
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::resource::looks_like_region;
use opsfleet_protocol::ResourceType;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `snapshot-copy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCopyParams {
    /// The region to copy into.
    pub destination_region: String,
    /// The KMS key to encrypt the copy with (the copy is then encrypted).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Delete the source snapshot once the copy is complete.
    #[serde(default)]
    pub delete_source: bool,
    /// The copy's description (a template).
    #[serde(default = "default_description")]
    pub description: String,
    /// More tags on the copy (values are templates).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_description() -> String {
    "opsfleet {task}: copy of {id} from {region}".into()
}

/// The `snapshot-copy` action.
pub struct SnapshotCopy;

impl SnapshotCopy {
    fn params(ctx: &ActionContext<'_>) -> Result<SnapshotCopyParams, Step> {
        parse_params(&ctx.job.params).map_err(|error| Step::Failed { retryable: false, error })
    }
}

#[async_trait]
impl Action for SnapshotCopy {
    fn name(&self) -> &'static str {
        "snapshot-copy"
    }

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Snapshot]
    }

    fn limit(&self) -> Option<LimitDefault> {
        Some(LimitDefault { name: "snapshot-copy".into(), max: 5, pool: "{params.destination_region}".into() })
    }

    fn describe(&self, ctx: ActionContext<'_>) -> String {
        match Self::params(&ctx) {
            Ok(p) => format!(
                "would copy {} from {} to {}{}",
                ctx.job.resource.id,
                ctx.job.resource.region,
                p.destination_region,
                if p.delete_source { ", then delete the source" } else { "" }
            ),
            Err(_) => format!("would copy {}", ctx.job.resource.id),
        }
    }

    fn iam_actions(&self) -> &'static [&'static str] {
        &["ec2:DescribeSnapshots", "ec2:CopySnapshot", "ec2:CreateTags", "ec2:DeleteSnapshot"]
    }

    fn iam_statements(&self, params: &Value) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeSnapshots"], &["*"]),
            allow(&["ec2:CopySnapshot"], &[SNAPSHOTS]),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], on_create(&["CopySnapshot"])),
        ];
        if let Ok(p) = parse_params::<SnapshotCopyParams>(params) {
            if p.delete_source {
                // The source is the operator's own snapshot, not one opsfleet made.
                out.push(allow(&["ec2:DeleteSnapshot"], &[SNAPSHOTS]));
            }
            if let Some(key) = p.kms_key_id {
                out.push(serde_json::json!({ "Effect": "Allow", "Action": ["kms:CreateGrant", "kms:Decrypt",
                    "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                    "kms:ReEncryptTo"], "Resource": key }));
            }
        }
        out
    }

    fn params_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("destination_region", "the region to copy into (required)"),
            ("kms_key_id", "a KMS key to encrypt the copy with (default: as the source)"),
            ("delete_source", "delete the source snapshot once the copy is complete (default false)"),
            (
                "description",
                "the copy's description, a template (default \"opsfleet {task}: copy of {id} from {region}\")",
            ),
            ("tags", "more tags on the copy, values are templates (default none)"),
            ("check_after_secs", "seconds until the first completion check (default 15)"),
        ]
    }

    fn templates(&self, params: &Value) -> Vec<(String, String)> {
        let Ok(p) = parse_params::<SnapshotCopyParams>(params) else { return Vec::new() };
        let mut out = vec![("description".to_owned(), p.description)];
        out.extend(p.tags.into_iter().map(|(k, v)| (format!("tags.{k}"), v)));
        out
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        let p: SnapshotCopyParams = parse_params(params)?;
        if !looks_like_region(&p.destination_region) {
            return Err(format!("params: destination_region `{}` is not a region", p.destination_region));
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>) -> Step {
        let p = or_step!(Self::params(&ctx));
        let r = &ctx.job.resource;
        let aws = or_step!(ctx.aws());
        let (source, dest) =
            match (aws.ec2(&r.account, &r.region).await, aws.ec2(&r.account, &p.destination_region).await) {
                (Ok(s), Ok(d)) => (s, d),
                (Err(e), _) | (_, Err(e)) => return Step::Failed { retryable: true, error: e.to_string() },
            };
        // A copy this job made already (the job came again after a crash): go on from it, even
        // when the source is gone (deleted by that run).
        let existing = match dest
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter(&format!("tag:{JOB_TAG}"), &ctx.job.id))
            .send()
            .await
        {
            Ok(out) => out.snapshots().first().and_then(|s| s.snapshot_id()).map(str::to_owned),
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        if let Some(copy) = existing {
            let state = json!({ "copy": copy });
            return self.check(ctx, &state).await.checked_after(Duration::from_secs(p.check_after_secs));
        }
        let original = match source.describe_snapshots().snapshot_ids(&r.id).send().await {
            Ok(out) => out.snapshots().first().cloned(),
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        let Some(original) = original else {
            return Step::Failed {
                retryable: false,
                error: format!("snapshot {} does not exist in {}", r.id, r.region),
            };
        };
        if let Some(skip) = opted_out(&r.id, original.tags()) {
            return skip;
        }
        if original.state() != Some(&SnapshotState::Completed) {
            // A snapshot copies once it is complete.
            return Step::Pending {
                check_after: Duration::from_secs(p.check_after_secs),
                state: json!({ "copy": null }),
            };
        }
        let copy = {
            {
                let tags = made_tags(&ctx, &r.id, original.tags(), &p.tags);
                let mut request = dest
                    .copy_snapshot()
                    .source_region(&r.region)
                    .source_snapshot_id(&r.id)
                    .description(ctx.render(&p.description))
                    .tag_specifications(spec(Ec2Type::Snapshot, &tags));
                if let Some(key) = &p.kms_key_id {
                    request = request.encrypted(true).kms_key_id(key);
                }
                match request.send().await {
                    Ok(out) => out.snapshot_id().unwrap_or_default().to_owned(),
                    Err(e) => return failed("CopySnapshot", &e),
                }
            }
        };
        let state = json!({ "copy": copy });
        self.check(ctx, &state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, state: &Value) -> Step {
        let p = or_step!(Self::params(&ctx));
        let Some(copy) = state["copy"].as_str() else {
            // The source was not complete yet: start over (finding no copy, or its own).
            return self.start(ctx).await;
        };
        let r = &ctx.job.resource;
        let aws = or_step!(ctx.aws());
        let dest = match aws.ec2(&r.account, &p.destination_region).await {
            Ok(d) => d,
            Err(e) => return Step::Failed { retryable: true, error: e.to_string() },
        };
        let found = match dest.describe_snapshots().snapshot_ids(copy).send().await {
            Ok(out) => out.snapshots().first().and_then(|s| s.state().cloned()),
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        match found {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                return Step::Failed { retryable: false, error: format!("copy {copy} ended in state error") }
            }
            Some(_) => {
                return Step::Pending { check_after: Duration::from_secs(p.check_after_secs), state: state.clone() }
            }
            None => return Step::Failed { retryable: true, error: format!("copy {copy} is not found (yet)") },
        }
        if p.delete_source {
            let source = match aws.ec2(&r.account, &r.region).await {
                Ok(s) => s,
                Err(e) => return Step::Failed { retryable: true, error: e.to_string() },
            };
            match source.delete_snapshot().snapshot_id(&r.id).send().await {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return failed("DeleteSnapshot", &e),
            }
        }
        Step::Done {
            summary: format!(
                "{} copied to {copy} in {}{}",
                r.id,
                p.destination_region,
                if p.delete_source { "; source deleted" } else { "" }
            ),
        }
    }
}
