//! Discovery of the types EC2's describes do not list (DynamoDB tables, RDS instances and
//! clusters) with the Resource Groups Tagging API: one paged `GetResources` per (account,
//! region), filtered by the type and the task's tags on the server, in every place a task names
//! at once, within the fleet's budget.
//!
//! The Tagging API lists only resources that carry tags, and like EC2's describes it lags tag
//! changes: a resource tagged moments ago may be missing from one run and found by the next.
//! A resource whose name opsfleet cannot key (a table name over 64 characters) is left out
//! with a warning and `opsfleet_discovery_unusable_total`, so it holds back none of the others.

use crate::discovery::{all_or_first_failure, failed, search_places, Discover, Discovered, DiscoveryError};
use async_trait::async_trait;
use aws_sdk_resourcegroupstagging::types::TagFilter;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::resource::Arn;
use opsfleet_protocol::Resource;
use std::sync::Arc;

/// Finds resources with the Tagging API's `GetResources`.
pub struct TaggedDiscovery {
    accounts: Arc<dyn AwsClients>,
}

impl TaggedDiscovery {
    /// Discovery through these accounts' clients.
    pub fn new(accounts: Arc<dyn AwsClients>) -> Self {
        TaggedDiscovery { accounts }
    }

    async fn find(&self, discovery: &Discovery, account: &str, region: &str) -> Result<Vec<Resource>, DiscoveryError> {
        let task = discovery.task_name.as_str();
        let place = format!("{account}/{region}");
        let tagging = self.accounts.tagging(account, region).await.map_err(|e| failed(task, &place, e))?;
        // `*` is any value: the tag's key alone.
        let filters: Vec<TagFilter> = discovery
            .query
            .tags
            .iter()
            .map(|(k, v)| {
                if v == "*" {
                    TagFilter::builder().key(k).build()
                } else {
                    TagFilter::builder().key(k).values(v).build()
                }
            })
            .collect();
        let mut pages = tagging
            .get_resources()
            .resource_type_filters(discovery.query.kind.as_str())
            .set_tag_filters(Some(filters))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| failed(task, &place, aws_sdk_resourcegroupstagging::error::DisplayErrorContext(e)))?;
            for arn in page.resource_tag_mapping_list().iter().filter_map(|m| m.resource_arn()) {
                let Some((kind, id, _, _)) = Arn::parse(arn).and_then(|a| a.resource()) else { continue };
                if kind != discovery.query.kind {
                    continue;
                }
                let resource =
                    Resource { account: account.to_owned(), region: region.to_owned(), kind, id: id.to_owned() };
                match resource.check() {
                    Ok(()) => found.push(resource),
                    Err(error) => {
                        tracing::warn!(task, %error, "A discovered resource cannot be acted on; it is left out.");
                        metrics::counter!("opsfleet_discovery_unusable_total", "type" => kind.as_str()).increment(1);
                    }
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Discover for TaggedDiscovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        all_or_first_failure(discovery, self.discover_places(discovery).await?)
    }

    async fn discover_places(&self, discovery: &Discovery) -> Result<Discovered, DiscoveryError> {
        Ok(search_places(discovery, |account, region| self.find(discovery, account, region)).await)
    }
}
