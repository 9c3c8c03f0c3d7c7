//! `snapshot-retention`: deletes the snapshots opsfleet made of a volume beyond the newest
//! `keep` and, or, older than `max_age_days`; never a snapshot opsfleet did not make (one
//! without an `opsfleet:job` tag). Idempotent by nature.

use super::ec2::{failed, filter, not_found, opted_out, JOB_TAG};
use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::SnapshotState;
use opsfleet_protocol::ResourceType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
        vec![SnapshotRetentionParams { keep: Some(7), max_age_days: Some(30) }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &SnapshotRetentionParams) -> String {
        let mut rules = Vec::new();
        if let Some(n) = p.keep {
            rules.push(format!("beyond the newest {n}"));
        }
        if let Some(d) = p.max_age_days {
            rules.push(format!("older than {d} days"));
        }
        format!("would delete the snapshots opsfleet made of {} {}", ctx.job.resource.id, rules.join(" or "))
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
        let out = match ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("volume-id", volume))
            .filters(filter("tag-key", JOB_TAG))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return failed("DescribeSnapshots", &e),
        };
        let mut made: Vec<_> =
            out.snapshots().iter().filter(|s| s.state() == Some(&SnapshotState::Completed)).collect();
        made.sort_by(|a, b| b.start_time().map(|t| t.secs()).cmp(&a.start_time().map(|t| t.secs())));
        let oldest_kept = p.max_age_days.map(|d| (ctx.now_ms / 1000) as i64 - i64::from(d) * 86_400);
        let mut deleted = Vec::new();
        for (i, snapshot) in made.iter().enumerate() {
            let beyond = p.keep.is_some_and(|keep| i >= keep as usize);
            let too_old = oldest_kept.is_some_and(|t| snapshot.start_time().is_some_and(|s| s.secs() < t));
            if !(beyond || too_old) {
                continue;
            }
            let id = snapshot.snapshot_id().unwrap_or_default();
            match ec2.delete_snapshot().snapshot_id(id).send().await {
                Ok(_) => deleted.push(id.to_owned()),
                Err(e) if not_found(&e) => {}
                Err(e) => return failed("DeleteSnapshot", &e),
            }
        }
        Step::Done {
            summary: format!("{volume}: {} snapshots deleted, {} kept", deleted.len(), made.len() - deleted.len()),
        }
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &SnapshotRetentionParams, _state: ()) -> Step {
        self.start(ctx, p).await
    }
}
