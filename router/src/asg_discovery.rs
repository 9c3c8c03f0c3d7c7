//! Discovery of Auto Scaling groups by tags: `DescribeAutoScalingGroups` with tag filters on the
//! server (`tag:KEY` = value, or `tag-key` for any value), paged, in every (account, region) a
//! task names at once, within the fleet's budget. The Tagging API does not list Auto Scaling
//! groups, so they have their own search.

use crate::discovery::{all_or_first_failure, failed, search_places, Discover, Discovered, DiscoveryError};
use async_trait::async_trait;
use aws_sdk_autoscaling::types::Filter;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::{Resource, ResourceType};
use std::sync::Arc;

/// Finds Auto Scaling groups by their tags.
pub struct AsgDiscovery {
    accounts: Arc<dyn AwsClients>,
}

impl AsgDiscovery {
    /// Discovery through these accounts' clients.
    pub fn new(accounts: Arc<dyn AwsClients>) -> Self {
        AsgDiscovery { accounts }
    }

    async fn find(&self, discovery: &Discovery, account: &str, region: &str) -> Result<Vec<Resource>, DiscoveryError> {
        let task = discovery.task_name.as_str();
        let place = format!("{account}/{region}");
        let asg = self.accounts.autoscaling(account, region).await.map_err(|e| failed(task, &place, e))?;
        let filters: Vec<Filter> = discovery
            .query
            .tags
            .iter()
            .map(|(k, v)| match v.as_str() {
                "*" => Filter::builder().name("tag-key").values(k).build(),
                _ => Filter::builder().name(format!("tag:{k}")).values(v).build(),
            })
            .collect();
        let mut pages = asg.describe_auto_scaling_groups().set_filters(Some(filters)).into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed(task, &place, aws_sdk_autoscaling::error::DisplayErrorContext(e)))?;
            for name in page.auto_scaling_groups().iter().filter_map(|g| g.auto_scaling_group_name()) {
                let resource = Resource {
                    account: account.to_owned(),
                    region: region.to_owned(),
                    kind: ResourceType::AutoScalingGroup,
                    id: name.to_owned(),
                };
                match resource.check() {
                    Ok(()) => found.push(resource),
                    Err(error) => {
                        tracing::warn!(task, %error, "A discovered resource cannot be acted on; it is left out.");
                        metrics::counter!("opsfleet_discovery_unusable_total", "type" => ResourceType::AutoScalingGroup.as_str())
                            .increment(1);
                    }
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Discover for AsgDiscovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        all_or_first_failure(discovery, self.discover_places(discovery).await?)
    }

    async fn discover_places(&self, discovery: &Discovery) -> Result<Discovered, DiscoveryError> {
        Ok(search_places(discovery, |account, region| self.find(discovery, account, region)).await)
    }
}
