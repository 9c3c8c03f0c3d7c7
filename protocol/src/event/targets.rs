//! The resources an event names itself (`targets = "event"`).

use super::Event;
use crate::resource::{is_account_id, Arn, Resource, ResourceType};
use serde_json::Value;

/// Why the resources of an event cannot be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A resource has no account: neither its ARN nor the event names one.
    #[error("resource {id} has no account: neither its ARN nor the event names one")]
    NoAccount {
        /// The resource id.
        id: String,
    },
    /// A resource has no region: neither its ARN nor the event names one.
    #[error("resource {id} has no region: neither its ARN nor the event names one")]
    NoRegion {
        /// The resource id.
        id: String,
    },
    /// A resource's id, account or region cannot be acted on (see [`Resource::check`]).
    #[error("{0}")]
    Invalid(String),
}

/// The resources an event names: the instance of an EC2 state-change event; the snapshot of an
/// EBS snapshot notification; the volume of an EBS volume notification; every `InstanceId`,
/// `VolumeId`, `TableName`, `DBInstanceIdentifier`, `DBClusterIdentifier` and
/// `AutoScalingGroupName` dimension of every
/// metric of a CloudWatch alarm event (composite alarms name none); the resource of a tag
/// change; otherwise the ARNs in `resources` of EC2 resources, DynamoDB tables, RDS instances
/// and clusters and Auto Scaling groups (RDS and Auto Scaling events name theirs this way). Account and
/// region come from the ARN when it names them, else from the event. Duplicates are removed;
/// the order is that of the event.
pub fn named_resources(event: &Event) -> Result<Vec<Resource>, TargetError> {
    let mut found: Vec<(ResourceType, String, Option<String>, Option<String>)> = Vec::new();
    let detail = event.detail();
    match event.detail_type.as_str() {
        "EC2 Instance State-change Notification" => {
            if let Some(id) = detail.get("instance-id").and_then(Value::as_str) {
                found.push((ResourceType::Instance, id.to_owned(), None, None));
            }
        }
        "EBS Snapshot Notification" => {
            let arn = detail.get("snapshot_id").and_then(Value::as_str);
            match arn.and_then(Arn::parse).and_then(|a| a.ec2_resource()) {
                Some(r) => found.push(owned(r)),
                None => found.extend(from_resources(event)),
            }
        }
        "CloudWatch Alarm State Change" => {
            let metrics = detail.get("configuration").and_then(|c| c.get("metrics")).and_then(Value::as_array);
            for metric in metrics.into_iter().flatten() {
                let dims = metric.pointer("/metricStat/metric/dimensions").and_then(Value::as_object);
                for (name, value) in dims.into_iter().flatten() {
                    let kind = match name.as_str() {
                        "InstanceId" => ResourceType::Instance,
                        "VolumeId" => ResourceType::Volume,
                        "TableName" => ResourceType::DynamoTable,
                        "DBInstanceIdentifier" => ResourceType::RdsInstance,
                        "DBClusterIdentifier" => ResourceType::RdsCluster,
                        "AutoScalingGroupName" => ResourceType::AutoScalingGroup,
                        _ => continue,
                    };
                    if let Some(id) = value.as_str() {
                        found.push((kind, id.to_owned(), None, None));
                    }
                }
            }
        }
        _ => found.extend(from_resources(event)),
    }
    let mut out: Vec<Resource> = Vec::with_capacity(found.len());
    let mut seen = std::collections::HashSet::with_capacity(found.len());
    for (kind, id, account, region) in found {
        let account = account
            .or_else(|| event.account.clone())
            .filter(|a| is_account_id(a))
            .ok_or_else(|| TargetError::NoAccount { id: id.chars().take(64).collect() })?;
        let region = region
            .or_else(|| event.region.clone())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| TargetError::NoRegion { id: id.chars().take(64).collect() })?;
        let resource = Resource { account, region, kind, id };
        resource.check().map_err(TargetError::Invalid)?;
        if seen.insert(resource.key()) {
            out.push(resource);
        }
    }
    Ok(out)
}

type Found = (ResourceType, String, Option<String>, Option<String>);

fn owned((kind, id, account, region): (ResourceType, &str, Option<&str>, Option<&str>)) -> Found {
    (kind, id.to_owned(), account.map(str::to_owned), region.map(str::to_owned))
}

fn from_resources(event: &Event) -> Vec<Found> {
    event.resources().filter_map(Arn::parse).filter_map(|arn| arn.resource()).map(owned).collect()
}
