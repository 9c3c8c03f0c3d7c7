//! `snapshot-retention`: deletes the snapshots opsfleet's tasks made of a volume beyond the
//! newest `keep` of each task, or older than `max_age_days`, or both (then only those both
//! beyond `keep` and too old: `keep` is a floor). Never a snapshot opsfleet did not make (one
//! without an `opsfleet:job` tag), never one behind an image (`ami-create`'s, or any image's:
//! EC2 answers `InvalidSnapshot.InUse` and the snapshot is counted as in use), and never a
//! task's newest. Idempotent by nature.

use super::ec2::{failed, filter, not_found, opted_out, JOB_TAG, TASK_TAG};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{Snapshot, SnapshotState};
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The params of `snapshot-retention`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRetentionParams {
    /// Keep the newest N snapshots opsfleet made of the volume.
    #[serde(default)]
    pub keep: Option<u32>,
    /// Delete those older than N days (at least one of keep and max_age_days).
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// Only snapshots these tasks made (none: any task's).
    #[serde(default)]
    pub tasks: Vec<String>,
}

/// The `snapshot-retention` action.
pub struct SnapshotRetention;

#[async_trait]
impl Action for SnapshotRetention {
    const NAME: &'static str = "snapshot-retention";
    type Params = SnapshotRetentionParams;
    type State = ();

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Volume]
    }

    fn examples(&self) -> Vec<SnapshotRetentionParams> {
        vec![SnapshotRetentionParams { keep: Some(7), max_age_days: Some(30), tasks: vec!["nightly-backup".into()] }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &SnapshotRetentionParams) -> String {
        let mut rules = Vec::new();
        if let Some(n) = p.keep {
            rules.push(format!("beyond the newest {n}"));
        }
        if let Some(d) = p.max_age_days {
            rules.push(format!("older than {d} days"));
        }
        let rules = rules.join(" and ");
        format!(
            "would delete the snapshots opsfleet made of {} {rules}, keeping each task's newest",
            ctx.job.resource.id
        )
    }

    fn statements(&self, _params: &SnapshotRetentionParams) -> Vec<Value> {
        use super::iam::*;
        vec![
            allow(&["ec2:DescribeVolumes", "ec2:DescribeSnapshots"], &["*"]),
            allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()),
        ]
    }

    fn validate(&self, p: &SnapshotRetentionParams) -> Result<(), String> {
        if p.keep.is_none() && p.max_age_days.is_none() {
            return Err("params: give `keep`, `max_age_days`, or both".into());
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &SnapshotRetentionParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let volume = ctx.job.resource.id.as_str();
        // The volume may be gone; its snapshots are still kept in bounds.
        match ec2.describe_volumes().volume_ids(volume).send().await {
            Ok(out) => {
                if let Some(skip) = out.volumes().first().and_then(|v| opted_out(volume, v.tags())) {
                    return skip;
                }
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return failed("DescribeVolumes", &e),
        }
        let mut pages = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("volume-id", volume))
            .filters(filter("tag-key", JOB_TAG))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            match page {
                Ok(out) => found.extend(out.snapshots().iter().cloned()),
                Err(e) => return failed("DescribeSnapshots", &e),
            }
        }
        // Each task's snapshots, newest first; none behind an image, none of other tasks.
        let mut by_task: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
        for snapshot in found {
            let task = snapshot.tags().iter().find(|t| t.key() == Some(TASK_TAG)).and_then(|t| t.value());
            let task = task.unwrap_or_default().to_owned();
            let of_image = snapshot.description().is_some_and(|d| d.starts_with("Created by CreateImage"));
            if snapshot.state() != Some(&SnapshotState::Completed)
                || of_image
                || (!p.tasks.is_empty() && !p.tasks.contains(&task))
            {
                continue;
            }
            by_task.entry(task).or_default().push(snapshot);
        }
        let oldest_kept = p.max_age_days.map(|d| (ctx.now_ms / 1000) as i64 - i64::from(d) * 86_400);
        let (mut deleted, mut in_use, mut kept) = (0, 0, 0);
        for made in by_task.values_mut() {
            made.sort_by(|a, b| b.start_time().map(|t| t.secs()).cmp(&a.start_time().map(|t| t.secs())));
            for (i, snapshot) in made.iter().enumerate() {
                let beyond = p.keep.is_none_or(|keep| i >= keep as usize);
                let too_old = oldest_kept.is_none_or(|t| snapshot.start_time().is_some_and(|s| s.secs() < t));
                // A task's newest snapshot stays, however old: its backups may have stopped.
                if i == 0 || !(beyond && too_old) {
                    kept += 1;
                    continue;
                }
                let id = snapshot.snapshot_id().unwrap_or_default();
                match ec2.delete_snapshot().snapshot_id(id).send().await {
                    Ok(_) => deleted += 1,
                    Err(e) if not_found(&e) => {}
                    Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("InvalidSnapshot.InUse") => {
                        in_use += 1;
                        kept += 1;
                    }
                    Err(e) => return failed("DeleteSnapshot", &e),
                }
            }
        }
        let in_use = if in_use > 0 { format!(" ({in_use} in use by an image)") } else { String::new() };
        Step::Done { summary: format!("{volume}: {deleted} snapshots deleted, {kept} kept{in_use}") }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &SnapshotRetentionParams, _state: ()) -> Step {
        self.start(ctx, p).await
    }
}
