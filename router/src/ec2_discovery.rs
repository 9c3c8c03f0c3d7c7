//! Discovery on EC2: the resources of a type with the given tags and states, found with the
//! `Describe*` paginators and server-side filters in every account and region a task names at
//! once (member accounts through the fleet's role), within the fleet's describe budget.

use crate::discovery::{all_or_first_failure, failed, search_places, Discover, Discovered, DiscoveryError};
use async_trait::async_trait;
use aws_sdk_ec2::types::Filter;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::{Resource, ResourceType};
use std::sync::Arc;

/// Finds resources with EC2 `Describe*` calls.
pub struct Ec2Discovery {
    accounts: Arc<dyn AwsClients>,
}

impl Ec2Discovery {
    /// Discovery through these accounts' clients.
    pub fn new(accounts: Arc<dyn AwsClients>) -> Self {
        Ec2Discovery { accounts }
    }
}

fn filters(discovery: &Discovery) -> Vec<Filter> {
    let mut out: Vec<Filter> = discovery
        .query
        .tags
        .iter()
        .map(|(k, v)| match v.as_str() {
            // Any value: the key alone.
            "*" => Filter::builder().name("tag-key").values(k).build(),
            _ => Filter::builder().name(format!("tag:{k}")).values(v).build(),
        })
        .collect();
    if discovery.query.state.is_empty() && discovery.query.kind == ResourceType::Instance {
        // Terminated instances stay listed for an hour; a job on one could only fail.
        let live = ["pending", "running", "stopping", "stopped"].map(str::to_owned).to_vec();
        out.push(Filter::builder().name("instance-state-name").set_values(Some(live)).build());
    } else if !discovery.query.state.is_empty() {
        let name = match discovery.query.kind {
            ResourceType::Instance => "instance-state-name",
            ResourceType::Volume => "status",
            ResourceType::Snapshot => "status",
            ResourceType::Image => "state",
            // Other types take no states (refused when the config is loaded).
            _ => return out,
        };
        out.push(Filter::builder().name(name).set_values(Some(discovery.query.state.clone())).build());
    }
    out
}

impl Ec2Discovery {
    async fn find(&self, discovery: &Discovery, account: &str, region: &str) -> Result<Vec<Resource>, DiscoveryError> {
        let task = discovery.task_name.as_str();
        let place = format!("{account}/{region}");
        let ec2 = self.accounts.ec2(account, region).await.map_err(|e| failed(task, &place, e))?;
        let filters = filters(discovery);
        let resource = |id: &str| Resource {
            account: account.to_owned(),
            region: region.to_owned(),
            kind: discovery.query.kind,
            id: id.to_owned(),
        };
        let mut found = Vec::new();
        match discovery.query.kind {
            ResourceType::Instance => {
                let mut pages = ec2.describe_instances().set_filters(Some(filters)).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| failed(task, &place, aws_sdk_ec2::error::DisplayErrorContext(e)))?;
                    for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                        found.extend(instance.instance_id().map(resource));
                    }
                }
            }
            ResourceType::Volume => {
                let mut pages = ec2.describe_volumes().set_filters(Some(filters)).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| failed(task, &place, aws_sdk_ec2::error::DisplayErrorContext(e)))?;
                    found.extend(page.volumes().iter().filter_map(|v| v.volume_id()).map(resource));
                }
            }
            ResourceType::Snapshot => {
                let mut pages =
                    ec2.describe_snapshots().owner_ids("self").set_filters(Some(filters)).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| failed(task, &place, aws_sdk_ec2::error::DisplayErrorContext(e)))?;
                    found.extend(page.snapshots().iter().filter_map(|s| s.snapshot_id()).map(resource));
                }
            }
            ResourceType::Image => {
                let mut pages = ec2.describe_images().owners("self").set_filters(Some(filters)).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| failed(task, &place, aws_sdk_ec2::error::DisplayErrorContext(e)))?;
                    found.extend(page.images().iter().filter_map(|i| i.image_id()).map(resource));
                }
            }
            other => {
                return Err(DiscoveryError::Failed {
                    task: task.to_owned(),
                    message: format!("{other} is not an EC2 type: EC2's describes cannot find it"),
                })
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Discover for Ec2Discovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        all_or_first_failure(discovery, self.discover_places(discovery).await?)
    }

    async fn discover_places(&self, discovery: &Discovery) -> Result<Discovered, DiscoveryError> {
        Ok(search_places(discovery, |account, region| self.find(discovery, account, region)).await)
    }
}
