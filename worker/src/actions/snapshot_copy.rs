//! `snapshot-copy`: a copy of a snapshot in another region; done when the copy is
//! `completed` (then the source is deleted if asked). Takes a slot of the `snapshot-copy`
//! limit, pooled by account and destination region: AWS runs at most 20 copies at once into a
//! region, per account.
//!
//! Idempotent by job: before copying, it looks in the destination region for a snapshot tagged
//! with the job's id (again after EC2's consistency window on a later attempt). A copy not
//! found right after it was made is waited for, not failed. With `retain`, older copies this
//! task made of the same volume in the destination are deleted beyond the newest N.

use super::ec2::{
    create_failed, failed, filter, look_before_making, made_tags, not_found, not_visible, opted_out, sent_once, spec,
    tag, JOB_TAG, TASK_TAG,
};
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
    /// Keep the newest N copies this task made of the source's volume in the destination;
    /// delete older ones (none: keep all).
    #[serde(default)]
    pub retain: Option<u32>,
}

/// The volume the copied snapshot was taken of, on every copy: copies do not keep it.
pub const VOLUME_TAG: &str = "opsfleet:volume";

fn default_description() -> String {
    "opsfleet {task}: copy of {id} from {region}".into()
}

/// The copy a pending `snapshot-copy` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Copying {
    /// The copy; none while the source is not complete yet.
    #[serde(default)]
    pub copy: Option<String>,
    /// When the copy was made, Unix ms (0 in states written before it was recorded).
    #[serde(default)]
    pub made_ms: u64,
    /// The source's volume.
    #[serde(default)]
    pub volume: Option<String>,
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
        Some(LimitDefault {
            name: "snapshot-copy".into(),
            max: 5,
            pool: "{account}/{params.destination_region}".into(),
        })
    }

    fn examples(&self) -> Vec<SnapshotCopyParams> {
        vec![SnapshotCopyParams {
            destination_region: "eu-west-1".into(),
            kms_key_id: Some("arn:aws:kms:eu-west-1:111122223333:key/example".into()),
            delete_source: true,
            description: default_description(),
            tags: BTreeMap::new(),
            check_after_secs: default_check_after_secs(),
            retain: Some(14),
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
            // The source is a snapshot a task targets, not one opsfleet made: deleting it is
            // what the operator asked for, on snapshots that did not opt out.
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], not_opted_out()));
        }
        if p.retain.is_some() {
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out.extend(kms_statements(p.kms_key_id.as_deref(), &p.destination_region));
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
        if let Some(key) = &p.kms_key_id {
            if let Some(region) = key.strip_prefix("arn:aws:kms:").and_then(|rest| rest.split(':').next()) {
                if region != p.destination_region {
                    return Err(format!(
                        "params: kms_key_id is in {region}, not in destination_region {} (a copy is encrypted \
                         with a key of its own region)",
                        p.destination_region
                    ));
                }
            }
        }
        super::check_after_in_range(p.check_after_secs)
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &SnapshotCopyParams) -> Step {
        let r = &ctx.job.resource;
        let (source, dest) = (or_step!(ctx.ec2().await), or_step!(ctx.ec2_in(&p.destination_region).await));
        // A copy this job made already (the job came again after a crash, or the copy's reply
        // was lost): go on from it, even when the source is gone (deleted by that run).
        let look = || async {
            let out = dest
                .describe_snapshots()
                .owner_ids("self")
                .filters(filter(&format!("tag:{JOB_TAG}"), &ctx.job.id))
                .send()
                .await
                .map_err(|e| failed("DescribeSnapshots", &e))?;
            Ok(out.snapshots().first().map(|s| {
                let volume = s.tags().iter().find(|t| t.key() == Some(VOLUME_TAG)).and_then(|t| t.value());
                (s.snapshot_id().unwrap_or_default().to_owned(), volume.map(str::to_owned))
            }))
        };
        if let Some((copy, volume)) = or_step!(look_before_making(&ctx, look).await) {
            let state = Copying { copy: Some(copy), made_ms: ctx.now_ms, volume };
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
        match original.state() {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                return Step::Failed { retryable: false, error: format!("source snapshot {} is in state error", r.id) }
            }
            // A snapshot copies once it is complete.
            _ => return Step::pending(Duration::from_secs(p.check_after_secs), &Copying::default()),
        }
        let volume = original.volume_id().filter(|v| *v != "vol-ffffffff").map(str::to_owned);
        let mut tags = made_tags(&ctx, &r.id, original.tags(), &p.tags);
        if let Some(volume) = &volume {
            tags.retain(|t| t.key() != Some(VOLUME_TAG));
            tags.truncate(super::ec2::MAX_TAGS - 1);
            tags.push(tag(VOLUME_TAG, volume));
        }
        let mut request = dest
            .copy_snapshot()
            .source_region(&r.region)
            .source_snapshot_id(&r.id)
            .description(ctx.render(&p.description))
            .tag_specifications(spec(Ec2Type::Snapshot, &tags));
        if let Some(key) = &p.kms_key_id {
            request = request.encrypted(true).kms_key_id(key);
        }
        let copy = match request.customize().config_override(sent_once()).send().await {
            Ok(out) => out.snapshot_id().unwrap_or_default().to_owned(),
            Err(e) => return create_failed("CopySnapshot", &e),
        };
        let state = Copying { copy: Some(copy), made_ms: ctx.now_ms, volume };
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &SnapshotCopyParams, state: Copying) -> Step {
        let Some(copy) = state.copy.as_deref() else {
            // The source was not complete yet: start over (finding no copy, or its own).
            return self.start(ctx, p).await;
        };
        let r = &ctx.job.resource;
        let dest = or_step!(ctx.ec2_in(&p.destination_region).await);
        let pending = || Step::pending(Duration::from_secs(p.check_after_secs), &state);
        let found = match dest.describe_snapshots().snapshot_ids(copy).send().await {
            Ok(out) => out.snapshots().first().and_then(|s| s.state().cloned()),
            // Right after the copy was made, a describe by id may not know it yet.
            Err(e) if not_found(&e) => None,
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        match found {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                return Step::Failed { retryable: false, error: format!("copy {copy} ended in state error") }
            }
            Some(_) => return pending(),
            None => return not_visible("copy", copy, state.made_ms, &ctx, pending()),
        }
        if p.delete_source {
            let source = or_step!(ctx.ec2().await);
            match source.delete_snapshot().snapshot_id(&r.id).send().await {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return failed("DeleteSnapshot", &e),
            }
        }
        let mut expired = 0;
        if let (Some(keep), Some(volume)) = (p.retain, &state.volume) {
            expired = or_step!(retain_copies(&dest, &ctx.job.task, volume, keep, copy).await);
        }
        Step::Done {
            summary: format!(
                "{} copied to {copy} in {}{}{}",
                r.id,
                p.destination_region,
                if p.delete_source { "; source deleted" } else { "" },
                p.retain
                    .map(|keep| format!("; {expired} older copies deleted, newest {keep} kept"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Deletes the completed copies this task made of a volume in the destination beyond the
/// newest `keep` (never `current`); returns how many went.
async fn retain_copies(
    dest: &aws_sdk_ec2::Client,
    task: &str,
    volume: &str,
    keep: u32,
    current: &str,
) -> Result<usize, Step> {
    let mut pages = dest
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&format!("tag:{TASK_TAG}"), task))
        .filters(filter(&format!("tag:{VOLUME_TAG}"), volume))
        .into_paginator()
        .send();
    let mut copies = Vec::new();
    while let Some(page) = pages.next().await {
        copies.extend(page.map_err(|e| failed("DescribeSnapshots", &e))?.snapshots().iter().cloned());
    }
    copies.sort_by(|a, b| b.start_time().map(|t| t.secs()).cmp(&a.start_time().map(|t| t.secs())));
    let older =
        copies.iter().filter(|s| s.state() == Some(&SnapshotState::Completed) && s.snapshot_id() != Some(current));
    let mut deleted = 0;
    for old in older.skip(keep.saturating_sub(1) as usize) {
        match dest.delete_snapshot().snapshot_id(old.snapshot_id().unwrap_or_default()).send().await {
            Ok(_) => deleted += 1,
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(failed("DeleteSnapshot", &e)),
        }
    }
    Ok(deleted)
}

/// What KMS needs for a copy: the destination key by ARN (an alias by its name through
/// `kms:ResourceAliases`, a bare key id as an ARN in the destination), and a source encrypted
/// with a customer-managed key decrypted through EC2 only.
pub(super) fn kms_statements(key: Option<&str>, destination: &str) -> Vec<Value> {
    use serde_json::json;
    let through_ec2 =
        |region: &str| json!({ "StringLike": { "kms:ViaService": format!("ec2.{region}.amazonaws.com") } });
    let mut out = vec![json!({
        "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncryptFrom"],
        "Resource": "arn:aws:kms:*:*:key/*",
        "Condition": through_ec2("*"),
    })];
    if let Some(key) = key {
        let actions = [
            "kms:CreateGrant",
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:Encrypt",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
        ];
        let alias = key.strip_prefix("alias/").or_else(|| key.split(":alias/").nth(1));
        out.push(match alias {
            Some(alias) => json!({
                "Effect": "Allow",
                "Action": actions,
                "Resource": format!("arn:aws:kms:{destination}:*:key/*"),
                "Condition": { "ForAnyValue:StringEquals": { "kms:ResourceAliases": format!("alias/{alias}") } },
            }),
            None if key.starts_with("arn:") => json!({ "Effect": "Allow", "Action": actions, "Resource": key }),
            None => json!({ "Effect": "Allow", "Action": actions, "Resource": format!("arn:aws:kms:{destination}:*:key/{key}") }),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(key: Option<&str>) -> SnapshotCopyParams {
        SnapshotCopyParams {
            destination_region: "eu-west-1".into(),
            kms_key_id: key.map(str::to_owned),
            delete_source: false,
            description: default_description(),
            tags: BTreeMap::new(),
            check_after_secs: 15,
            retain: None,
        }
    }

    #[test]
    fn a_key_of_another_region_than_the_destination_is_refused() {
        let elsewhere = params(Some("arn:aws:kms:us-east-1:111122223333:key/abc"));
        let err = SnapshotCopy.validate(&elsewhere).expect_err("another region");
        assert!(err.contains("us-east-1") && err.contains("eu-west-1"), "{err}");
        assert!(SnapshotCopy.validate(&params(Some("arn:aws:kms:eu-west-1:111122223333:key/abc"))).is_ok());
        assert!(SnapshotCopy.validate(&params(Some("alias/backup"))).is_ok());
    }

    #[test]
    fn the_key_is_named_by_arn_an_alias_by_its_name_and_sources_are_read_through_ec2_only() {
        let resource = |key: &str| kms_statements(Some(key), "eu-west-1")[1].clone();
        let alias = resource("alias/backup");
        assert_eq!(alias["Resource"], "arn:aws:kms:eu-west-1:*:key/*");
        assert_eq!(alias["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"], "alias/backup");
        assert_eq!(resource("1234abcd")["Resource"], "arn:aws:kms:eu-west-1:*:key/1234abcd");
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/abc";
        assert_eq!(resource(arn)["Resource"], arn);
        let sources = &kms_statements(None, "eu-west-1")[0];
        assert_eq!(sources["Condition"]["StringLike"]["kms:ViaService"], "ec2.*.amazonaws.com");
    }
}
