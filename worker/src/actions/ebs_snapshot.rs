//! `ebs-snapshot`: a snapshot of a volume, or of every volume attached to an instance; done
//! when every snapshot is `completed`, then older snapshots this task made of each volume are
//! deleted beyond `retain`.
//!
//! Idempotent by job: before creating, it looks for a snapshot of the volume tagged with the
//! job's id, so a redelivered job makes no second snapshot.

use super::ec2::{failed, filter, made_tags, opted_out, spec, JOB_TAG, TASK_TAG};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{ResourceType as Ec2Type, Snapshot, SnapshotState, Tag};
use aws_sdk_ec2::Client;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The params of `ebs-snapshot`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EbsSnapshotParams {
    /// Keep the newest N snapshots this task made of each volume, delete older ones (none:
    /// keep all).
    #[serde(default)]
    pub retain: Option<u32>,
    /// The snapshot's description, a template.
    #[serde(default = "default_description")]
    pub description: String,
    /// Copy the volume's tags onto the snapshot.
    #[serde(default = "yes")]
    pub copy_tags: bool,
    /// More tags, values are templates.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Seconds until the first completion check.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

/// The snapshots a pending `ebs-snapshot` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Snapshots {
    /// One per volume.
    #[serde(default)]
    pub snapshots: Vec<Made>,
}

/// A snapshot made of a volume.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Made {
    /// The volume.
    pub volume: String,
    /// The snapshot of it.
    pub snapshot: String,
}

fn default_description() -> String {
    "opsfleet {task}: {id} at {datetime}".into()
}

fn yes() -> bool {
    true
}

/// The `ebs-snapshot` action.
pub struct EbsSnapshot;

/// The volumes to snapshot with their tags: the job's volume, or an instance's volumes.
async fn volumes(ec2: &Client, ctx: &ActionContext<'_>) -> Result<Vec<(String, Vec<Tag>)>, Step> {
    let id = &ctx.job.resource.id;
    let mut ids = Vec::new();
    if ctx.job.resource.kind == ResourceType::Instance {
        let out =
            ec2.describe_instances().instance_ids(id).send().await.map_err(|e| failed("DescribeInstances", &e))?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .ok_or_else(|| Step::Failed { retryable: false, error: format!("instance {id} does not exist") })?;
        if let Some(skip) = opted_out(id, instance.tags()) {
            return Err(skip);
        }
        ids.extend(
            instance
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
                .map(str::to_owned),
        );
        if ids.is_empty() {
            return Err(Step::Skipped { reason: format!("instance {id} has no EBS volume") });
        }
    } else {
        ids.push(id.clone());
    }
    let out = ec2
        .describe_volumes()
        .set_volume_ids(Some(ids.clone()))
        .send()
        .await
        .map_err(|e| failed("DescribeVolumes", &e))?;
    let mut found = Vec::new();
    for volume in out.volumes() {
        let vid = volume.volume_id().unwrap_or_default().to_owned();
        if opted_out(&vid, volume.tags()).is_none() {
            found.push((vid, volume.tags().to_vec()));
        }
    }
    if found.is_empty() {
        if let Some(skip) = out.volumes().first().and_then(|v| opted_out(v.volume_id().unwrap_or_default(), v.tags())) {
            return Err(skip);
        }
        return Err(Step::Failed { retryable: false, error: format!("volume {} does not exist", ids.join(", ")) });
    }
    Ok(found)
}

/// The snapshots of a volume tagged with a key and value, newest first.
async fn snapshots_of(ec2: &Client, volume: &str, key: &str, value: &str) -> Result<Vec<Snapshot>, Step> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter("volume-id", volume))
        .filters(filter(&format!("tag:{key}"), value))
        .send()
        .await
        .map_err(|e| failed("DescribeSnapshots", &e))?;
    let mut snapshots = out.snapshots().to_vec();
    snapshots.sort_by(|a, b| b.start_time().map(|t| t.secs()).cmp(&a.start_time().map(|t| t.secs())));
    Ok(snapshots)
}

/// Deletes the snapshots this task made of a volume beyond the newest `keep` (completed ones
/// only, never `current`); returns how many went.
pub(crate) async fn retain(ec2: &Client, volume: &str, task: &str, keep: u32, current: &str) -> Result<usize, Step> {
    let made = snapshots_of(ec2, volume, TASK_TAG, task).await?;
    let mut deleted = 0;
    // The snapshot just made is one of those kept, whatever the clock says of the others.
    let older =
        made.iter().filter(|s| s.state() == Some(&SnapshotState::Completed) && s.snapshot_id() != Some(current));
    for snapshot in older.skip(keep.saturating_sub(1) as usize) {
        let id = snapshot.snapshot_id().unwrap_or_default();
        match ec2.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => deleted += 1,
            Err(e) if super::ec2::not_found(&e) => {}
            Err(e) => return Err(failed("DeleteSnapshot", &e)),
        }
    }
    Ok(deleted)
}

#[async_trait]
impl Action for EbsSnapshot {
    const NAME: &'static str = "ebs-snapshot";
    type Params = EbsSnapshotParams;
    type State = Snapshots;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Volume, ResourceType::Instance]
    }

    fn examples(&self) -> Vec<EbsSnapshotParams> {
        vec![EbsSnapshotParams {
            retain: Some(7),
            description: default_description(),
            copy_tags: true,
            tags: BTreeMap::from([("Backup".into(), "{task}".into())]),
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams) -> String {
        let what = match ctx.job.resource.kind {
            ResourceType::Instance => format!("every volume of {}", ctx.job.resource.id),
            _ => ctx.job.resource.id.clone(),
        };
        match p.retain {
            Some(n) => format!("would snapshot {what} and keep the newest {n} this task made"),
            None => format!("would snapshot {what}"),
        }
    }

    fn validate(&self, p: &EbsSnapshotParams) -> Result<(), String> {
        super::check_after_in_range(p.check_after_secs)
    }

    fn statements(&self, p: &EbsSnapshotParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeInstances", "ec2:DescribeVolumes", "ec2:DescribeSnapshots"], &["*"]),
            allow(&["ec2:CreateSnapshot"], &[VOLUMES]),
            allow_if(&["ec2:CreateSnapshot"], &[SNAPSHOTS], tagged_by_opsfleet()),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], on_create(&["CreateSnapshot"])),
        ];
        if p.retain.is_some() {
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        out
    }

    fn templates(&self, p: &EbsSnapshotParams) -> Vec<(String, String)> {
        let mut out = vec![("description".to_owned(), p.description.clone())];
        out.extend(p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())));
        out
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let volumes = or_step!(volumes(&ec2, &ctx).await);
        let description = ctx.render(&p.description);
        let mut made = Vec::new();
        for (volume, tags) in volumes {
            let existing = or_step!(snapshots_of(&ec2, &volume, JOB_TAG, &ctx.job.id).await);
            let snapshot = match existing.first().and_then(|s| s.snapshot_id()) {
                Some(id) => id.to_owned(),
                None => {
                    let copied = if p.copy_tags { tags.as_slice() } else { &[] };
                    let tags = made_tags(&ctx, &volume, copied, &p.tags);
                    let created = ec2
                        .create_snapshot()
                        .volume_id(&volume)
                        .description(&description)
                        .tag_specifications(spec(Ec2Type::Snapshot, &tags))
                        .send()
                        .await;
                    match created {
                        Ok(out) => out.snapshot_id().unwrap_or_default().to_owned(),
                        Err(e) => return failed("CreateSnapshot", &e),
                    }
                }
            };
            made.push(Made { volume, snapshot });
        }
        // Snapshots of small volumes may be complete already: check at once.
        self.check(ctx, p, Snapshots { snapshots: made }).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams, state: Snapshots) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let made: Vec<(String, String)> =
            state.snapshots.iter().map(|m| (m.volume.clone(), m.snapshot.clone())).collect();
        let ids: Vec<String> = made.iter().map(|(_, s)| s.clone()).collect();
        let out = match ec2.describe_snapshots().set_snapshot_ids(Some(ids.clone())).send().await {
            Ok(out) => out,
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        let states: BTreeMap<String, Option<SnapshotState>> = out
            .snapshots()
            .iter()
            .map(|s| (s.snapshot_id().unwrap_or_default().to_owned(), s.state().cloned()))
            .collect();
        for id in &ids {
            match states.get(id) {
                Some(Some(SnapshotState::Completed)) => {}
                Some(Some(SnapshotState::Error)) => {
                    return Step::Failed { retryable: false, error: format!("snapshot {id} ended in state error") }
                }
                Some(_) => return Step::pending(Duration::from_secs(p.check_after_secs), &state),
                None => return Step::Failed { retryable: true, error: format!("snapshot {id} is not found (yet)") },
            }
        }
        let mut deleted = 0;
        if let Some(keep) = p.retain {
            for (volume, snapshot) in &made {
                match retain(&ec2, volume, &ctx.job.task, keep, snapshot).await {
                    Ok(n) => deleted += n,
                    Err(step) => return step,
                }
            }
        }
        let list: Vec<String> = made.iter().map(|(v, s)| format!("{s} of {v}")).collect();
        Step::Done {
            summary: match p.retain {
                Some(keep) => format!("{} completed; {deleted} older deleted, newest {keep} kept", list.join(", ")),
                None => format!("{} completed", list.join(", ")),
            },
        }
    }
}
