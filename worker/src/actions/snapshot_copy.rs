//! `snapshot-copy`: a copy of a snapshot in another region; done when the copy is
//! `completed` (then the source is deleted if asked). Takes a slot of the `snapshot-copy`
//! limit, pooled by destination region: AWS runs at most 20 copies at once into a region.
//!
//! Idempotent by job: before copying, it looks in the destination region for a snapshot tagged
//! with the job's id.

use super::ec2::{failed, filter, made_tags, not_found, opted_out, spec, JOB_TAG};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{ResourceType as Ec2Type, SnapshotState};
use opsfleet_protocol::config::LimitDefault;
use opsfleet_protocol::resource::looks_like_region;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `snapshot-copy`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCopyParams {
    /// The region to copy into.
    pub destination_region: String,
    /// A KMS key to encrypt the copy with (none: encrypted as the source).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Delete the source snapshot once the copy is complete.
    #[serde(default)]
    pub delete_source: bool,
    /// The copy's description, a template.
    #[serde(default = "default_description")]
    pub description: String,
    /// More tags on the copy, values are templates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_description() -> String {
    "opsfleet {task}: copy of {id} from {region}".into()
}

/// The copy a pending `snapshot-copy` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Copying {
    /// The copy; none while the source is not complete yet.
    #[serde(default)]
    pub copy: Option<String>,
}

/// The `snapshot-copy` action.
pub struct SnapshotCopy;

#[async_trait]
impl Action for SnapshotCopy {
    const NAME: &'static str = "snapshot-copy";
    type Params = SnapshotCopyParams;
    type State = Copying;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Snapshot]
    }

    fn limit(&self) -> Option<LimitDefault> {
        Some(LimitDefault { name: "snapshot-copy".into(), max: 5, pool: "{params.destination_region}".into() })
    }

    fn examples(&self) -> Vec<SnapshotCopyParams> {
        vec![SnapshotCopyParams {
            destination_region: "eu-west-1".into(),
            kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/example".into()),
            delete_source: true,
            description: default_description(),
            tags: BTreeMap::new(),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &SnapshotCopyParams) -> String {
        format!(
            "would copy {} from {} to {}{}",
            ctx.job.resource.id,
            ctx.job.resource.region,
            p.destination_region,
            if p.delete_source { ", then delete the source" } else { "" }
        )
    }

    fn statements(&self, p: &SnapshotCopyParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeSnapshots"], &["*"]),
            allow(&["ec2:CopySnapshot"], &[SNAPSHOTS]),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], on_create(&["CopySnapshot"])),
        ];
        if p.delete_source {
            // The source is the operator's own snapshot, not one opsfleet made.
            out.push(allow(&["ec2:DeleteSnapshot"], &[SNAPSHOTS]));
        }
        if let Some(key) = &p.kms_key_id {
            out.push(serde_json::json!({ "Effect": "Allow", "Action": ["kms:CreateGrant", "kms:Decrypt",
                "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                "kms:ReEncryptTo"], "Resource": key }));
        }
        out
    }

    fn templates(&self, p: &SnapshotCopyParams) -> Vec<(String, String)> {
        let mut out = vec![("description".to_owned(), p.description.clone())];
        out.extend(p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())));
        out
    }

    fn validate(&self, p: &SnapshotCopyParams) -> Result<(), String> {
        if !looks_like_region(&p.destination_region) {
            return Err(format!("params: destination_region `{}` is not a region", p.destination_region));
        }
        super::check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &SnapshotCopyParams) -> Step {
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
            let state = Copying { copy: Some(copy) };
            return self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs));
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
            return Step::pending(Duration::from_secs(p.check_after_secs), &Copying { copy: None });
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
        let state = Copying { copy: Some(copy) };
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &SnapshotCopyParams, state: Copying) -> Step {
        let Some(copy) = state.copy.as_deref() else {
            // The source was not complete yet: start over (finding no copy, or its own).
            return self.start(ctx, p).await;
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
            Some(_) => return Step::pending(Duration::from_secs(p.check_after_secs), &state),
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
