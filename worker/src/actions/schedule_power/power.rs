//! Reading and setting the power of each kind of resource `schedule-power` acts on: EC2
//! instances, RDS instances and clusters, and Auto Scaling groups (stopped: minimum, maximum
//! and desired capacity 0, the sizes saved in `opsfleet:asg-size` and restored at start).

use super::super::ec2::{describe_instance, failed as ec2_failed, opted_out, tag as ec2_tag};
use super::super::rds::{failed as rds_failed, not_found as rds_not_found, tag as rds_tag};
use super::super::{ActionContext, Step};
use aws_sdk_ec2::types::InstanceStateName;
use opsfleet_protocol::ResourceType;

/// The tag an Auto Scaling group's sizes are saved in while it is stopped: `<min> <max> <desired>`.
pub const SAVED_SIZE: &str = "opsfleet:asg-size";

/// Where a resource's power is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    /// Running (an RDS resource that is available, backing up or being modified).
    Running,
    /// Stopped.
    Stopped,
    /// On its way somewhere (pending, stopping, starting, rebooting, …): its state named.
    Changing(String),
    /// Gone or failed for good: its state named.
    Gone(String),
}

/// A resource as read: its power, tags, ARN (RDS) and whether it can hibernate (EC2).
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its power.
    pub power: Power,
    /// Its tags.
    pub tags: Vec<(String, String)>,
    /// Its ARN (RDS; empty for EC2).
    pub arn: String,
    /// Whether it was launched with hibernation enabled (EC2).
    pub hibernates: bool,
    /// An Auto Scaling group's minimum, maximum and desired capacity.
    pub sizes: Option<(i32, i32, i32)>,
}

fn of_rds(status: &str) -> Power {
    match status {
        "available"
        | "backing-up"
        | "modifying"
        | "maintenance"
        | "storage-optimization"
        | "upgrading"
        | "configuring-enhanced-monitoring"
        | "configuring-log-exports" => Power::Running,
        "stopped" => Power::Stopped,
        "deleting" | "deleted" | "failed" | "inaccessible-encryption-credentials" => Power::Gone(status.to_owned()),
        other => Power::Changing(other.to_owned()),
    }
}

fn rds_pairs(tags: &[aws_sdk_rds::types::Tag]) -> Vec<(String, String)> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

async fn rds(ctx: &ActionContext<'_>) -> Result<aws_sdk_rds::Client, Step> {
    let r = &ctx.job.resource;
    ctx.aws()?.rds(&r.account, &r.region).await.map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
}

/// The resource as it is now; one that opted out is the skipped step.
pub async fn read(ctx: &ActionContext<'_>) -> Result<Seen, Step> {
    let r = &ctx.job.resource;
    let id = r.id.as_str();
    let gone = || Step::Failed { retryable: false, error: format!("{} {id} does not exist", r.kind) };
    let seen = match r.kind {
        ResourceType::Instance => {
            let ec2 = ctx.ec2().await?;
            let instance = describe_instance(&ec2, id).await?;
            if let Some(skip) = opted_out(id, instance.tags()) {
                return Err(skip);
            }
            let state = instance.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Pending);
            let power = match state {
                InstanceStateName::Running => Power::Running,
                InstanceStateName::Stopped => Power::Stopped,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown => {
                    Power::Gone(state.as_str().to_owned())
                }
                other => Power::Changing(other.as_str().to_owned()),
            };
            let tags =
                instance.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect();
            let hibernates = instance.hibernation_options().and_then(|h| h.configured()).unwrap_or(false);
            return Ok(Seen { power, tags, arn: String::new(), hibernates, sizes: None });
        }
        ResourceType::RdsCluster => {
            let out = match rds(ctx).await?.describe_db_clusters().db_cluster_identifier(id).send().await {
                Ok(out) => out,
                Err(e) if rds_not_found(&e) => return Err(gone()),
                Err(e) => return Err(rds_failed("DescribeDBClusters", &e)),
            };
            let c = out.db_clusters().first().ok_or_else(gone)?;
            let arn = c.db_cluster_arn().unwrap_or_default().to_owned();
            Seen {
                power: of_rds(c.status().unwrap_or_default()),
                tags: rds_pairs(c.tag_list()),
                arn,
                hibernates: false,
                sizes: None,
            }
        }
        ResourceType::AutoScalingGroup => {
            let asg = autoscaling(ctx).await?;
            let out = match asg.describe_auto_scaling_groups().auto_scaling_group_names(id).send().await {
                Ok(out) => out,
                Err(e) => return Err(ec2_failed("DescribeAutoScalingGroups", &e)),
            };
            let g = out.auto_scaling_groups().first().ok_or_else(gone)?;
            let sizes = (g.min_size().unwrap_or(0), g.max_size().unwrap_or(0), g.desired_capacity().unwrap_or(0));
            let power = if sizes == (0, 0, 0) { Power::Stopped } else { Power::Running };
            let tags = g
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                .collect();
            Seen { power, tags, arn: String::new(), hibernates: false, sizes: Some(sizes) }
        }
        _ => {
            let out = match rds(ctx).await?.describe_db_instances().db_instance_identifier(id).send().await {
                Ok(out) => out,
                Err(e) if rds_not_found(&e) => return Err(gone()),
                Err(e) => return Err(rds_failed("DescribeDBInstances", &e)),
            };
            let i = out.db_instances().first().ok_or_else(gone)?;
            let arn = i.db_instance_arn().unwrap_or_default().to_owned();
            Seen {
                power: of_rds(i.db_instance_status().unwrap_or_default()),
                tags: rds_pairs(i.tag_list()),
                arn,
                hibernates: false,
                sizes: None,
            }
        }
    };
    let skip = seen.tags.iter().any(|(k, v)| k == super::super::ec2::SKIP_TAG && v.eq_ignore_ascii_case("true"));
    if skip {
        return Err(Step::Skipped { reason: format!("{} {id} is tagged opsfleet:skip = true", r.kind) });
    }
    Ok(seen)
}

async fn autoscaling(ctx: &ActionContext<'_>) -> Result<aws_sdk_autoscaling::Client, Step> {
    let r = &ctx.job.resource;
    ctx.aws()?
        .autoscaling(&r.account, &r.region)
        .await
        .map_err(|e| Step::Failed { retryable: true, error: e.to_string() })
}

/// An Auto Scaling group to sizes: stopped to 0, 0, 0 with its sizes saved first; started to
/// its saved sizes.
async fn size_group(ctx: &ActionContext<'_>, seen: &Seen, run: bool) -> Result<(), Step> {
    let id = ctx.job.resource.id.as_str();
    let (min, max, desired) = if run {
        let saved = seen.tags.iter().find(|(k, _)| k == SAVED_SIZE).map(|(_, v)| v.as_str()).unwrap_or_default();
        let sizes: Vec<i32> = saved.split(' ').filter_map(|n| n.parse().ok()).collect();
        match sizes[..] {
            [min, max, desired] => (min, max, desired),
            _ => {
                return Err(Step::Failed {
                    retryable: false,
                    error: format!("group {id} is at size 0 with no sizes saved in {SAVED_SIZE} to start it with"),
                })
            }
        }
    } else {
        if let Some((min, max, desired)) = seen.sizes.filter(|s| *s != (0, 0, 0)) {
            record(ctx, seen, SAVED_SIZE, &format!("{min} {max} {desired}")).await?;
        }
        (0, 0, 0)
    };
    let update = autoscaling(ctx)
        .await?
        .update_auto_scaling_group()
        .auto_scaling_group_name(id)
        .min_size(min)
        .max_size(max)
        .desired_capacity(desired)
        .send()
        .await;
    update.map(|_| ()).map_err(|e| ec2_failed("UpdateAutoScalingGroup", &e))
}

/// Starts or stops the resource (an EC2 instance that can hibernate hibernates when asked).
pub async fn set(ctx: &ActionContext<'_>, seen: &Seen, run: bool, hibernate: bool) -> Result<(), Step> {
    let r = &ctx.job.resource;
    let id = r.id.as_str();
    match (r.kind, run) {
        (ResourceType::AutoScalingGroup, _) => size_group(ctx, seen, run).await,
        (ResourceType::Instance, true) => {
            let sent = ctx.ec2().await?.start_instances().instance_ids(id).send().await;
            sent.map(|_| ()).map_err(|e| ec2_failed("StartInstances", &e))
        }
        (ResourceType::Instance, false) => {
            let sent = ctx.ec2().await?.stop_instances().instance_ids(id).hibernate(hibernate).send().await;
            sent.map(|_| ()).map_err(|e| ec2_failed("StopInstances", &e))
        }
        (ResourceType::RdsCluster, true) => {
            let sent = rds(ctx).await?.start_db_cluster().db_cluster_identifier(id).send().await;
            sent.map(|_| ()).map_err(|e| rds_failed("StartDBCluster", &e))
        }
        (ResourceType::RdsCluster, false) => {
            let sent = rds(ctx).await?.stop_db_cluster().db_cluster_identifier(id).send().await;
            sent.map(|_| ()).map_err(|e| rds_failed("StopDBCluster", &e))
        }
        (_, true) => {
            let sent = rds(ctx).await?.start_db_instance().db_instance_identifier(id).send().await;
            sent.map(|_| ()).map_err(|e| rds_failed("StartDBInstance", &e))
        }
        (_, false) => {
            let sent = rds(ctx).await?.stop_db_instance().db_instance_identifier(id).send().await;
            sent.map(|_| ()).map_err(|e| rds_failed("StopDBInstance", &e))
        }
    }
}

/// Tags the resource with `key = value`.
pub async fn record(ctx: &ActionContext<'_>, seen: &Seen, key: &str, value: &str) -> Result<(), Step> {
    let r = &ctx.job.resource;
    if r.kind == ResourceType::Instance {
        let sent = ctx.ec2().await?.create_tags().resources(&r.id).tags(ec2_tag(key, value)).send().await;
        return sent.map(|_| ()).map_err(|e| ec2_failed("CreateTags", &e));
    }
    if r.kind == ResourceType::AutoScalingGroup {
        let tag = aws_sdk_autoscaling::types::Tag::builder()
            .resource_id(&r.id)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(false)
            .build();
        let sent = autoscaling(ctx).await?.create_or_update_tags().tags(tag).send().await;
        return sent.map(|_| ()).map_err(|e| ec2_failed("CreateOrUpdateTags", &e));
    }
    let sent = rds(ctx).await?.add_tags_to_resource().resource_name(&seen.arn).tags(rds_tag(key, value)).send().await;
    sent.map(|_| ()).map_err(|e| rds_failed("AddTagsToResource", &e))
}
