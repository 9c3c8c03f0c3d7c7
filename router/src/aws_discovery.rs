//! Discovery in AWS for every resource type: EC2's describes for EC2 types, Auto Scaling's for
//! groups, the Tagging API for the others.

use crate::asg_discovery::AsgDiscovery;
use crate::discovery::{Discover, Discovered, DiscoveryError};
use crate::ec2_discovery::Ec2Discovery;
use crate::tagged_discovery::TaggedDiscovery;
use async_trait::async_trait;
use opsfleet_backend::aws::AwsClients;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::{Resource, ResourceType};
use std::sync::Arc;

/// Finds resources of any type, each with its service's way.
pub struct AwsDiscovery {
    ec2: Ec2Discovery,
    tagged: TaggedDiscovery,
    groups: AsgDiscovery,
}

impl AwsDiscovery {
    /// Discovery through these accounts' clients.
    pub fn new(accounts: Arc<dyn AwsClients>) -> Self {
        AwsDiscovery {
            ec2: Ec2Discovery::new(Arc::clone(&accounts)),
            tagged: TaggedDiscovery::new(Arc::clone(&accounts)),
            groups: AsgDiscovery::new(accounts),
        }
    }

    fn of(&self, discovery: &Discovery) -> &dyn Discover {
        match discovery.query.kind {
            ResourceType::AutoScalingGroup => &self.groups,
            kind if kind.is_ec2() => &self.ec2,
            _ => &self.tagged,
        }
    }
}

#[async_trait]
impl Discover for AwsDiscovery {
    async fn discover(&self, discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        self.of(discovery).discover(discovery).await
    }

    async fn discover_places(&self, discovery: &Discovery) -> Result<Discovered, DiscoveryError> {
        self.of(discovery).discover_places(discovery).await
    }
}
