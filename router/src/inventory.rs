//! A discoverer over a fixed inventory of resources and their tags: what the demo and tests
//! use where EC2 `Describe*` calls are not available.

use crate::discovery::{Discover, DiscoveryError};
use async_trait::async_trait;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::Resource;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One resource of an inventory, with its tags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    /// The resource.
    #[serde(flatten)]
    pub resource: Resource,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Its state (`running`, `available`, …), if known.
    #[serde(default)]
    pub state: Option<String>,
}

/// Finds resources in a fixed list, with the same filters as EC2 discovery: type, every tag
/// equal, state among those asked for, account and region among those asked for.
pub struct StaticInventory {
    items: Vec<InventoryItem>,
}

impl StaticInventory {
    /// An inventory of the given items.
    pub fn new(items: Vec<InventoryItem>) -> Self {
        StaticInventory { items }
    }

    /// Reads an inventory from a JSON array of `{account, region, type, id, tags}`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        Ok(Self::new(serde_json::from_str(text)?))
    }
}

#[async_trait]
impl Discover for StaticInventory {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        let query = &discovery.query;
        Ok(self
            .items
            .iter()
            .filter(|item| item.resource.kind == query.kind)
            .filter(|item| discovery.accounts.contains(&item.resource.account))
            .filter(|item| discovery.regions.contains(&item.resource.region))
            .filter(|item| query.tags.iter().all(|(k, v)| item.tags.get(k).is_some_and(|have| v == "*" || have == v)))
            .filter(|item| query.state.is_empty() || item.state.as_ref().is_some_and(|s| query.state.contains(s)))
            .map(|item| item.resource.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsfleet_protocol::config::DiscoveryQuery;
    use opsfleet_protocol::ResourceType;

    #[tokio::test]
    async fn filters_by_type_tags_account_and_region() {
        let inventory = StaticInventory::from_json(
            r#"[
            {"account": "123456789012", "region": "us-east-1", "type": "ec2:volume", "id": "vol-1", "tags": {"Backup": "nightly"}},
            {"account": "123456789012", "region": "us-east-1", "type": "ec2:volume", "id": "vol-2", "tags": {"Backup": "weekly"}},
            {"account": "123456789012", "region": "us-west-2", "type": "ec2:volume", "id": "vol-3", "tags": {"Backup": "nightly"}},
            {"account": "123456789012", "region": "us-east-1", "type": "ec2:instance", "id": "i-1", "tags": {"Backup": "nightly"}}
        ]"#,
        )
        .expect("inventory");
        let discovery = Discovery {
            task: 0,
            task_name: "t".into(),
            query: DiscoveryQuery {
                kind: ResourceType::Volume,
                tags: [("Backup".to_owned(), "nightly".to_owned())].into(),
                state: vec![],
                regions: vec![],
                accounts: vec![],
            },
            accounts: vec!["123456789012".into()],
            regions: vec!["us-east-1".into()],
        };
        let found = inventory.discover(&discovery).await.expect("discover");
        assert_eq!(found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["vol-1"]);
    }
}
