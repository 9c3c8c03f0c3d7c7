//! `schedule-power`: Instance Scheduler's model. Named periods (days, begin and end times, an
//! IANA time zone); a tag on each resource naming its period (`Schedule = office-hours`); a
//! scheduled task that brings every tagged resource to the state its period wants now,
//! running or stopped (EC2 instances, hibernated where they were launched for it; RDS
//! instances and clusters; Auto Scaling groups, whose sizes are saved at the stop and restored
//! at the start).
//!
//! Desired state, reconciled: each run decides from the clock, not from the run before, so a
//! missed run is caught up by the next, and an RDS instance that RDS started again after seven
//! days stopped is stopped again. The state a period last asked for is recorded on the
//! resource (`opsfleet:schedule = <period> <running|stopped>`): a resource someone started or
//! stopped by hand since is left so until its period next changes its mind, unless
//! `enforce = true` (a database is stopped all the same: RDS's own restart looks the same). Idempotent by nature: starting what is starting changes nothing, and the
//! job is done once the resource reads back in the state wanted.

mod period;
mod power;

pub use period::Period;

use super::{Action, ActionContext, Step};
use async_trait::async_trait;
use opsfleet_protocol::ResourceType;
use power::{Power, Seen};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The tag recording the state a period last asked of the resource.
pub const SCHEDULE_RECORD: &str = "opsfleet:schedule";

/// The params of `schedule-power`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePowerParams {
    /// The tag whose value names a resource's period.
    #[serde(default = "default_tag")]
    pub tag: String,
    /// The periods, by name: `{ days, begin, end, tz }`.
    pub periods: BTreeMap<String, Period>,
    /// Also stop (or start) what someone started (or stopped) by hand since the period last
    /// changed its mind.
    #[serde(default)]
    pub enforce: bool,
    /// Hibernate EC2 instances launched with hibernation enabled instead of stopping them.
    #[serde(default)]
    pub hibernate: bool,
    /// Seconds between the checks that wait for the state.
    #[serde(default = "default_check_after_secs")]
    pub check_after_secs: u64,
}

fn default_tag() -> String {
    "Schedule".into()
}

fn default_check_after_secs() -> u64 {
    15
}

/// What a pending `schedule-power` waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Wanted {
    /// The period.
    pub period: String,
    /// Whether it wants the resource running.
    pub run: bool,
}

fn state(run: bool) -> &'static str {
    if run {
        "running"
    } else {
        "stopped"
    }
}

/// The `schedule-power` action.
pub struct SchedulePower;

impl SchedulePower {
    /// Brings the resource one step towards what its period wants now.
    async fn reconcile(&self, ctx: &ActionContext<'_>, p: &SchedulePowerParams) -> Step {
        let r = &ctx.job.resource;
        let seen: Seen = or_step!(power::read(ctx).await);
        let Some(name) = seen.tags.iter().find(|(k, _)| *k == p.tag).map(|(_, v)| v.clone()) else {
            return Step::Skipped { reason: format!("{} {} has no {} tag", r.kind, r.id, p.tag) };
        };
        let Some(period) = p.periods.get(&name) else {
            let known: Vec<&str> = p.periods.keys().map(String::as_str).collect();
            return Step::Failed {
                retryable: false,
                error: format!(
                    "{} {}: tag {} = {name} names no period (known: {})",
                    r.kind,
                    r.id,
                    p.tag,
                    known.join(", ")
                ),
            };
        };
        let compiled = match period.compile() {
            Ok(c) => c,
            Err(e) => return Step::Failed { retryable: false, error: format!("period {name}: {e}") },
        };
        let run = compiled.running_at(ctx.now_ms);
        let wanted = Wanted { period: name.clone(), run };
        let why = format!("{name} ({}) wants it {}", period.text(), state(run));
        let record = format!("{name} {}", state(run));
        let recorded = seen.tags.iter().find(|(k, _)| k == SCHEDULE_RECORD).map(|(_, v)| v.as_str());
        let pending = Step::pending(Duration::from_secs(p.check_after_secs), &wanted);
        match &seen.power {
            Power::Gone(what) => {
                return Step::Failed { retryable: false, error: format!("{} {} is {what}", r.kind, r.id) };
            }
            Power::Changing(_) => return pending,
            now if *now == if run { Power::Running } else { Power::Stopped } => {
                if recorded != Some(record.as_str()) {
                    or_step!(power::record(ctx, &seen, SCHEDULE_RECORD, &record).await);
                }
                return Step::Done { summary: format!("{} is {}: {why}", r.id, state(run)) };
            }
            _ => {}
        }
        // The resource is not as the period wants it. Since the period last changed its mind
        // (the record), someone set it by hand: left so unless enforced. A database running when
        // its period wants it stopped is stopped all the same: RDS starts a stopped database
        // again by itself after seven days, and that cannot be told from a start by hand.
        let database = matches!(r.kind, ResourceType::RdsInstance | ResourceType::RdsCluster);
        let enforce = p.enforce || (database && !run);
        if recorded == Some(record.as_str()) && !enforce {
            return Step::Done {
                summary: format!("{} left {} by hand although {why} (enforce = true to override)", r.id, state(!run)),
            };
        }
        or_step!(power::set(ctx, &seen, run, p.hibernate && seen.hibernates).await);
        pending
    }
}

#[async_trait]
impl Action for SchedulePower {
    const NAME: &'static str = "schedule-power";
    type Params = SchedulePowerParams;
    type State = Wanted;

    fn targets(&self) -> &'static [ResourceType] {
        &[ResourceType::Instance, ResourceType::RdsInstance, ResourceType::RdsCluster, ResourceType::AutoScalingGroup]
    }

    fn examples(&self) -> Vec<SchedulePowerParams> {
        let office =
            Period { days: "mon-fri".into(), begin: "08:00".into(), end: "18:00".into(), tz: "Europe/Berlin".into() };
        vec![SchedulePowerParams {
            tag: default_tag(),
            periods: BTreeMap::from([("office-hours".into(), office)]),
            enforce: false,
            hibernate: true,
            check_after_secs: default_check_after_secs(),
        }]
    }

    fn describe(&self, ctx: ActionContext<'_>, p: &SchedulePowerParams) -> String {
        let names: Vec<&str> = p.periods.keys().map(String::as_str).collect();
        format!(
            "would bring {} to the state its {} tag's period wants now (periods: {})",
            ctx.job.resource.id,
            p.tag,
            names.join(", ")
        )
    }

    fn statements(&self, _p: &SchedulePowerParams) -> Vec<Value> {
        use super::iam::*;
        use super::rds::iam::{CLUSTERS, INSTANCES as DATABASES};
        const GROUPS: &str = "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*";
        vec![
            allow(&["ec2:DescribeInstances", "rds:DescribeDBInstances", "rds:DescribeDBClusters"], &["*"]),
            allow_if(&["ec2:StartInstances", "ec2:StopInstances"], &[INSTANCES], not_opted_out()),
            kms_grant_for_ec2(),
            tag_instances_with(SCHEDULE_RECORD),
            allow_if(
                &["rds:StartDBInstance", "rds:StopDBInstance", "rds:StartDBCluster", "rds:StopDBCluster"],
                &[DATABASES, CLUSTERS],
                not_opted_out(),
            ),
            allow(&["autoscaling:DescribeAutoScalingGroups"], &["*"]),
            allow_if(&["autoscaling:UpdateAutoScalingGroup"], &[GROUPS], not_opted_out()),
            allow_if(
                &["autoscaling:CreateOrUpdateTags"],
                &[GROUPS],
                json!({
                    "ForAllValues:StringEquals": { "aws:TagKeys": [SCHEDULE_RECORD, power::SAVED_SIZE] },
                    "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" },
                }),
            ),
            allow_if(
                &["rds:AddTagsToResource"],
                &[DATABASES, CLUSTERS],
                json!({
                    "ForAllValues:StringEquals": { "aws:TagKeys": [SCHEDULE_RECORD] },
                    "StringNotEquals": { "aws:ResourceTag/opsfleet:skip": "true" },
                }),
            ),
        ]
    }

    fn validate(&self, p: &SchedulePowerParams) -> Result<(), String> {
        super::check_after_in_range(p.check_after_secs)?;
        if p.periods.is_empty() {
            return Err("params: give at least one period".into());
        }
        if p.tag.is_empty() || p.tag.starts_with("opsfleet:") {
            return Err(format!("params: tag `{}` cannot name periods (empty, or opsfleet's own)", p.tag));
        }
        for (name, period) in &p.periods {
            period.compile().map_err(|e| format!("params: periods.{name}: {e}"))?;
        }
        Ok(())
    }

    async fn start(&self, ctx: ActionContext<'_>, p: &SchedulePowerParams) -> Step {
        self.reconcile(&ctx, p).await
    }

    async fn check(&self, ctx: ActionContext<'_>, p: &SchedulePowerParams, _wanted: Wanted) -> Step {
        self.reconcile(&ctx, p).await
    }
}
