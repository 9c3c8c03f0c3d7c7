//! `ebs-snapshot`: a snapshot of a volume, or of every volume attached to an instance; done
//! when every snapshot is `completed`, then older snapshots this task made of each volume are
//! deleted beyond `retain`.
//!
//! An instance's volumes are snapshotted together with `CreateSnapshots`: one crash-consistent
//! set, each snapshot carrying its volume's tags.
//!
//! Application-consistent sets: with `pre_commands`, an instance's applications are first
//! quiesced with Run Command (a file-system freeze, a database flush), the set is made once they
//! succeed, and `post_commands` (the thaw) run right after the create returns (the point in
//! time is fixed then), before the snapshots complete. A failed freeze, or a create that fails
//! after it, still runs the thaw. Each command is sent once per job (its comment names the job
//! and the attempt that froze), so a retry sends none of them twice; every freeze of the job
//! without its thaw is thawed before the job goes on.
//!
//! Idempotent by job: before creating, it looks for snapshots tagged with the job's id (again
//! after EC2's consistency window on a later attempt), so a redelivered job or one whose
//! create lost its reply makes no second set. A snapshot not found right after its create is
//! waited for, not failed.

use super::ec2::{
    create_failed, failed, filter, look_before_making, made_tags, not_visible, opted_out, sent_once, spec, JOB_TAG,
    TASK_TAG,
};
use super::ssm::{self, Outcome};
use super::{default_check_after_secs, Action, ActionContext, Step};
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    CopyTagsFromSource, InstanceSpecification, ResourceType as Ec2Type, Snapshot, SnapshotState, Tag,
};
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
    /// Of an instance: leave its boot volume out.
    #[serde(default)]
    pub exclude_boot_volume: bool,
    /// Of an instance: shell commands run with Run Command before the snapshots (a freeze);
    /// templates.
    #[serde(default)]
    pub pre_commands: Vec<String>,
    /// Of an instance: shell commands run right after the snapshots are made (a thaw), and
    /// after a failed freeze; templates.
    #[serde(default)]
    pub post_commands: Vec<String>,
    /// The longest each of those commands may run, in seconds.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    120
}

/// The shell parameters of hook commands: the commands, rendered, and their timeout.
fn hook(ctx: &ActionContext<'_>, commands: &[String], timeout: u64) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("commands".to_owned(), commands.iter().map(|c| ctx.render(c)).collect()),
        ("executionTimeout".to_owned(), vec![timeout.to_string()]),
    ])
}

fn hooked(p: &EbsSnapshotParams) -> bool {
    !p.pre_commands.is_empty() || !p.post_commands.is_empty()
}

/// Sends the thaw of every freeze of this job that has none yet (`post N` for each `pre N`);
/// the last thaw's id, if any.
async fn thaw_outstanding(
    ctx: &ActionContext<'_>,
    p: &EbsSnapshotParams,
    also: Option<u32>,
) -> Result<Option<String>, Step> {
    if p.post_commands.is_empty() {
        return Ok(None);
    }
    let sent = ssm::purposes_sent(ctx).await?;
    let mut freezes: Vec<String> = sent.iter().filter_map(|s| s.strip_prefix("pre ")).map(str::to_owned).collect();
    freezes.extend(also.map(|a| a.to_string()));
    freezes.sort();
    freezes.dedup();
    let mut last = None;
    for attempt in freezes {
        let purpose = format!("post {attempt}");
        let id = ssm::send_once(ctx, &purpose, "AWS-RunShellScript", hook(ctx, &p.post_commands, p.hook_timeout_secs))
            .await?;
        last = Some(id);
    }
    if last.is_none() && p.pre_commands.is_empty() {
        // A thaw without a freeze: once per job.
        let id =
            ssm::send_once(ctx, "post", "AWS-RunShellScript", hook(ctx, &p.post_commands, p.hook_timeout_secs)).await?;
        last = Some(id);
    }
    Ok(last)
}

/// The commands of an application-consistent set, as far as they went.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Hooks {
    /// The freeze command's id, once sent.
    #[serde(default)]
    pub pre: Option<String>,
    /// The thaw command's id, once sent.
    #[serde(default)]
    pub post: Option<String>,
    /// When the last of them was sent, Unix ms.
    #[serde(default)]
    pub sent_ms: u64,
}

/// The snapshots a pending `ebs-snapshot` waits for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Snapshots {
    /// One per volume.
    #[serde(default)]
    pub snapshots: Vec<Made>,
    /// When they were made, Unix ms (0 in states written before it was recorded).
    #[serde(default)]
    pub made_ms: u64,
    /// The freeze and thaw commands, with `pre_commands`.
    #[serde(default)]
    pub hooks: Hooks,
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

/// What to snapshot: a volume with its tags, or an instance with the volumes to leave out.
enum Source {
    Volume(String, Vec<Tag>),
    Instance { id: String, opted_out: Vec<String> },
}

/// What the job snapshots; an opted-out or volume-less resource is skipped.
async fn source(ec2: &Client, ctx: &ActionContext<'_>) -> Result<Source, Step> {
    let id = &ctx.job.resource.id;
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
        let ids: Vec<String> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.volume_id()))
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return Err(Step::Skipped { reason: format!("instance {id} has no EBS volume") });
        }
        let out = ec2
            .describe_volumes()
            .set_volume_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| failed("DescribeVolumes", &e))?;
        let opted_out: Vec<String> = out
            .volumes()
            .iter()
            .filter(|v| opted_out("", v.tags()).is_some())
            .filter_map(|v| v.volume_id().map(str::to_owned))
            .collect();
        if opted_out.len() == ids.len() {
            return Err(Step::Skipped { reason: format!("every volume of {id} is tagged opsfleet:skip = true") });
        }
        return Ok(Source::Instance { id: id.clone(), opted_out });
    }
    let out = ec2.describe_volumes().volume_ids(id).send().await.map_err(|e| failed("DescribeVolumes", &e))?;
    let volume = out
        .volumes()
        .first()
        .ok_or_else(|| Step::Failed { retryable: false, error: format!("volume {id} does not exist") })?;
    if let Some(skip) = opted_out(id, volume.tags()) {
        return Err(skip);
    }
    Ok(Source::Volume(id.clone(), volume.tags().to_vec()))
}

/// The snapshots this account owns matching the filters (every page), newest first.
async fn snapshots(ec2: &Client, filters: &[(&str, &str)]) -> Result<Vec<Snapshot>, Step> {
    let mut request = ec2.describe_snapshots().owner_ids("self");
    for (name, value) in filters {
        request = request.filters(filter(name, value));
    }
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        found.extend(page.map_err(|e| failed("DescribeSnapshots", &e))?.snapshots().iter().cloned());
    }
    found.sort_by(|a, b| b.start_time().map(|t| t.secs()).cmp(&a.start_time().map(|t| t.secs())));
    Ok(found)
}

/// What this job made already, none in `error` (a failed snapshot is made again).
async fn made_by_job(ec2: &Client, ctx: &ActionContext<'_>) -> Result<Option<Vec<Made>>, Step> {
    let tag = format!("tag:{JOB_TAG}");
    let made: Vec<Made> = snapshots(ec2, &[(&tag, &ctx.job.id)])
        .await?
        .iter()
        .filter(|s| s.state() != Some(&SnapshotState::Error))
        .map(|s| Made {
            volume: s.volume_id().unwrap_or_default().to_owned(),
            snapshot: s.snapshot_id().unwrap_or_default().to_owned(),
        })
        .collect();
    Ok((!made.is_empty()).then_some(made))
}

/// Deletes the snapshots this task made of a volume beyond the newest `keep` (completed ones
/// only, never `current`), and those of this task that ended in `error`; returns how many went.
async fn retain(ec2: &Client, volume: &str, task: &str, keep: u32, current: &str) -> Result<usize, Step> {
    let tag = format!("tag:{TASK_TAG}");
    let made = snapshots(ec2, &[("volume-id", volume), (&tag, task)]).await?;
    let completed =
        made.iter().filter(|s| s.state() == Some(&SnapshotState::Completed) && s.snapshot_id() != Some(current));
    // The snapshot just made is one of those kept, whatever the clock says of the others.
    let beyond = completed.skip(keep.saturating_sub(1) as usize);
    let failed_ones = made.iter().filter(|s| s.state() == Some(&SnapshotState::Error));
    let mut deleted = 0;
    for snapshot in beyond.chain(failed_ones) {
        let id = snapshot.snapshot_id().unwrap_or_default();
        match ec2.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => deleted += 1,
            Err(e) if super::ec2::not_found(&e) => {}
            Err(e) => return Err(failed("DeleteSnapshot", &e)),
        }
    }
    Ok(deleted)
}

/// Makes the snapshots: one of a volume, or the set of an instance's volumes.
async fn make(ec2: &Client, ctx: &ActionContext<'_>, p: &EbsSnapshotParams, source: Source) -> Result<Vec<Made>, Step> {
    let description = ctx.render(&p.description);
    match source {
        Source::Volume(volume, tags) => {
            let copied = if p.copy_tags { tags.as_slice() } else { &[] };
            let tags = made_tags(ctx, &volume, copied, &p.tags);
            let out = ec2
                .create_snapshot()
                .volume_id(&volume)
                .description(&description)
                .tag_specifications(spec(Ec2Type::Snapshot, &tags))
                .customize()
                .config_override(sent_once())
                .send()
                .await
                .map_err(|e| create_failed("CreateSnapshot", &e))?;
            Ok(vec![Made { volume, snapshot: out.snapshot_id().unwrap_or_default().to_owned() }])
        }
        Source::Instance { id, opted_out } => {
            let instance = InstanceSpecification::builder()
                .instance_id(&id)
                .exclude_boot_volume(p.exclude_boot_volume)
                .set_exclude_data_volume_ids((!opted_out.is_empty()).then_some(opted_out))
                .build();
            let tags = made_tags(ctx, &id, &[], &p.tags);
            let mut request = ec2
                .create_snapshots()
                .instance_specification(instance)
                .description(&description)
                .tag_specifications(spec(Ec2Type::Snapshot, &tags));
            if p.copy_tags {
                request = request.copy_tags_from_source(CopyTagsFromSource::Volume);
            }
            let out = request
                .customize()
                .config_override(sent_once())
                .send()
                .await
                .map_err(|e| create_failed("CreateSnapshots", &e))?;
            let made: Vec<Made> = out
                .snapshots()
                .iter()
                .map(|s| Made {
                    volume: s.volume_id().unwrap_or_default().to_owned(),
                    snapshot: s.snapshot_id().unwrap_or_default().to_owned(),
                })
                .collect();
            if made.is_empty() {
                return Err(Step::Skipped { reason: format!("instance {id} has no volume left to snapshot") });
            }
            Ok(made)
        }
    }
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
            exclude_boot_volume: false,
            pre_commands: vec!["fsfreeze --freeze /data".into()],
            post_commands: vec!["fsfreeze --unfreeze /data".into()],
            hook_timeout_secs: default_hook_timeout(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams) -> String {
        let what = match ctx.job.resource.kind {
            ResourceType::Instance if p.exclude_boot_volume => {
                format!("the data volumes of {} as one set", ctx.job.resource.id)
            }
            ResourceType::Instance => format!("every volume of {} as one set", ctx.job.resource.id),
            _ => ctx.job.resource.id.clone(),
        };
        let hooks = if hooked(p) { ", between its pre_commands and post_commands" } else { "" };
        match p.retain {
            Some(n) => format!("would snapshot {what}{hooks} and keep the newest {n} this task made"),
            None => format!("would snapshot {what}{hooks}"),
        }
    }

    fn validate(&self, p: &EbsSnapshotParams) -> Result<(), String> {
        if !(1..=3600).contains(&p.hook_timeout_secs) {
            return Err(format!("params: hook_timeout_secs {} is not between 1 and 3600", p.hook_timeout_secs));
        }
        super::check_after_in_range(p.check_after_secs)
    }

    fn statements(&self, p: &EbsSnapshotParams) -> Vec<Value> {
        use super::iam::*;
        let mut out = vec![
            allow(&["ec2:DescribeInstances", "ec2:DescribeVolumes", "ec2:DescribeSnapshots"], &["*"]),
            allow(&["ec2:CreateSnapshot", "ec2:CreateSnapshots"], &[VOLUMES, INSTANCES]),
            allow_if(&["ec2:CreateSnapshot", "ec2:CreateSnapshots"], &[SNAPSHOTS], tagged_by_opsfleet()),
            allow_if(&["ec2:CreateTags"], &[SNAPSHOTS], on_create(&["CreateSnapshot", "CreateSnapshots"])),
        ];
        if p.retain.is_some() {
            out.push(allow_if(&["ec2:DeleteSnapshot"], &[SNAPSHOTS], made_by_opsfleet()));
        }
        if hooked(p) {
            out.push(allow(&["ssm:ListCommands", "ssm:GetCommandInvocation"], &["*"]));
            out.push(allow_if(
                &["ssm:SendCommand"],
                &[INSTANCES],
                serde_json::json!({ "StringNotEquals": { "ssm:resourceTag/opsfleet:skip": "true" } }),
            ));
            out.push(allow(&["ssm:SendCommand"], &["arn:aws:ssm:*::document/AWS-RunShellScript"]));
        }
        out
    }

    fn templates(&self, p: &EbsSnapshotParams) -> Vec<(String, String)> {
        let mut out = vec![("description".to_owned(), p.description.clone())];
        out.extend(p.tags.iter().map(|(k, v)| (format!("tags.{k}"), v.clone())));
        out.extend(p.pre_commands.iter().enumerate().map(|(i, c)| (format!("pre_commands[{i}]"), c.clone())));
        out.extend(p.post_commands.iter().enumerate().map(|(i, c)| (format!("post_commands[{i}]"), c.clone())));
        out
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        let source = or_step!(source(&ec2, &ctx).await);
        if hooked(p) && ctx.job.resource.kind != ResourceType::Instance {
            let id = &ctx.job.resource.id;
            return Step::Failed {
                retryable: false,
                error: format!("pre_commands and post_commands run on an instance; {id} is a volume"),
            };
        }
        let mut state = Snapshots { snapshots: Vec::new(), made_ms: ctx.now_ms, hooks: Hooks::default() };
        match or_step!(look_before_making(&ctx, || made_by_job(&ec2, &ctx)).await) {
            Some(made) => {
                // Made by an earlier attempt: whatever it froze is thawed.
                state.snapshots = made;
                state.hooks.post = or_step!(thaw_outstanding(&ctx, p, None).await);
            }
            None if !p.pre_commands.is_empty() => {
                let purpose = format!("pre {}", ctx.attempt);
                let freeze = hook(&ctx, &p.pre_commands, p.hook_timeout_secs);
                state.hooks.pre = Some(or_step!(ssm::send_once(&ctx, &purpose, "AWS-RunShellScript", freeze).await));
                state.hooks.sent_ms = ctx.now_ms;
                return Step::pending(Duration::from_secs(p.check_after_secs.min(5)), &state);
            }
            None => {
                state.snapshots = or_step!(make(&ec2, &ctx, p, source).await);
                state.hooks.post = or_step!(thaw_outstanding(&ctx, p, None).await);
            }
        }
        state.hooks.sent_ms = ctx.now_ms;
        // Snapshots of small volumes may be complete already: check at once.
        self.check(ctx, p, state).await.checked_after(Duration::from_secs(p.check_after_secs))
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &EbsSnapshotParams, mut state: Snapshots) -> Step {
        let ec2 = or_step!(ctx.ec2().await);
        if state.snapshots.is_empty() {
            // Frozen (or freezing): the set is made once the freeze succeeded, then thawed.
            let Some(pre) = state.hooks.pre.clone() else {
                return Step::Failed { retryable: false, error: "no snapshots and no freeze to wait for".into() };
            };
            let freeze_attempt = ctx.attempt;
            match or_step!(ssm::outcome(&ctx, &pre, state.hooks.sent_ms).await) {
                Outcome::Running => return Step::pending(Duration::from_secs(p.check_after_secs.min(5)), &state),
                Outcome::Failed(why) => {
                    let thawed = thaw_outstanding(&ctx, p, Some(freeze_attempt)).await;
                    let note = if thawed.is_ok() { "; the thaw was sent" } else { "; sending the thaw failed" };
                    return Step::Failed { retryable: false, error: format!("the freeze (pre_commands) {why}{note}") };
                }
                Outcome::Succeeded(_) => {
                    let made = match source(&ec2, &ctx).await {
                        Ok(source) => make(&ec2, &ctx, p, source).await,
                        Err(step) => Err(step),
                    };
                    let thaw = thaw_outstanding(&ctx, p, Some(freeze_attempt)).await;
                    state.snapshots = or_step!(made);
                    state.made_ms = ctx.now_ms;
                    state.hooks.post = or_step!(thaw);
                    state.hooks.sent_ms = ctx.now_ms;
                    return Step::pending(Duration::from_secs(p.check_after_secs), &state);
                }
            }
        }
        if let Some(post) = state.hooks.post.clone() {
            match or_step!(ssm::outcome(&ctx, &post, state.hooks.sent_ms).await) {
                Outcome::Running => return Step::pending(Duration::from_secs(p.check_after_secs.min(5)), &state),
                Outcome::Failed(why) => {
                    let ids: Vec<&str> = state.snapshots.iter().map(|m| m.snapshot.as_str()).collect();
                    return Step::Failed {
                        retryable: false,
                        error: format!("snapshots {} were made; the thaw (post_commands) {why}", ids.join(", ")),
                    };
                }
                Outcome::Succeeded(_) => {}
            }
        }
        let ids: Vec<String> = state.snapshots.iter().map(|m| m.snapshot.clone()).collect();
        let pending = || Step::pending(Duration::from_secs(p.check_after_secs), &state);
        let out = match ec2.describe_snapshots().set_snapshot_ids(Some(ids.clone())).send().await {
            Ok(out) => out,
            // Right after a create, a describe by id may not know the snapshot yet.
            Err(e) if super::ec2::not_found(&e) => {
                return not_visible("snapshot", &ids.join(", "), state.made_ms, &ctx, pending())
            }
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
                    return Step::Failed { retryable: true, error: format!("snapshot {id} ended in state error") }
                }
                Some(_) => return pending(),
                None => return not_visible("snapshot", id, state.made_ms, &ctx, pending()),
            }
        }
        let mut deleted = 0;
        if let Some(keep) = p.retain {
            for m in &state.snapshots {
                deleted += or_step!(retain(&ec2, &m.volume, &ctx.job.task, keep, &m.snapshot).await);
            }
        }
        let list: Vec<String> = state.snapshots.iter().map(|m| format!("{} of {}", m.snapshot, m.volume)).collect();
        Step::Done {
            summary: match p.retain {
                Some(keep) => format!("{} completed; {deleted} older deleted, newest {keep} kept", list.join(", ")),
                None => format!("{} completed", list.join(", ")),
            },
        }
    }
}
