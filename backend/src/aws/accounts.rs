//! Clients in the fleet's accounts and regions: the fleet's own credentials in its own account,
//! and in member accounts the role `fleet.member_role` assumed through STS with
//! `fleet.external_id` (the SDK's `AssumeRoleProvider`, whose credentials are cached until
//! shortly before they expire). Every EC2 client sends through the fleet's [`Ec2Budget`].

use super::budget::{Budgeted, Ec2Budget};
use aws_config::SdkConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use opsfleet_protocol::config::FleetSettings;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Why no client can be made for an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account is not the fleet's own and no member role is configured.
    #[error("account {account} is not the fleet's own ({own}) and fleet.member_role is not set")]
    NoRole {
        /// The account asked for.
        account: String,
        /// The fleet's own account.
        own: String,
    },
    /// The fleet's own account could not be found out (STS `GetCallerIdentity`).
    #[error("finding the fleet's own account failed: {0}")]
    Identity(String),
}

/// Clients per account and region.
pub struct AwsAccounts {
    base: SdkConfig,
    http: SharedHttpClient,
    member_role: Option<String>,
    external_id: Option<String>,
    session: String,
    budget: Arc<Ec2Budget>,
    own: tokio::sync::OnceCell<String>,
    configs: tokio::sync::Mutex<HashMap<String, SdkConfig>>,
    ec2: Mutex<HashMap<(String, String), aws_sdk_ec2::Client>>,
    sns: Mutex<HashMap<(String, String), aws_sdk_sns::Client>>,
    dynamodb: Mutex<HashMap<(String, String), aws_sdk_dynamodb::Client>>,
    tagging: Mutex<HashMap<(String, String), aws_sdk_resourcegroupstagging::Client>>,
    rds: Mutex<HashMap<(String, String), aws_sdk_rds::Client>>,
    ssm: Mutex<HashMap<(String, String), aws_sdk_ssm::Client>>,
    autoscaling: Mutex<HashMap<(String, String), aws_sdk_autoscaling::Client>>,
}

impl AwsAccounts {
    /// Clients from the fleet's SDK config, its member role and external id, shaped by a
    /// budget.
    pub fn new(base: SdkConfig, fleet: &FleetSettings, budget: Arc<Ec2Budget>) -> Self {
        let http = base.http_client().unwrap_or_else(super::default_http_client);
        AwsAccounts {
            base,
            http,
            member_role: fleet.member_role.clone(),
            external_id: fleet.external_id.clone(),
            session: session_name(&fleet.name, &host()),
            budget,
            own: tokio::sync::OnceCell::new(),
            configs: tokio::sync::Mutex::default(),
            ec2: Mutex::default(),
            sns: Mutex::default(),
            dynamodb: Mutex::default(),
            tagging: Mutex::default(),
            rds: Mutex::default(),
            ssm: Mutex::default(),
            autoscaling: Mutex::default(),
        }
    }

    /// The budget EC2 calls are shaped by.
    pub fn budget(&self) -> &Arc<Ec2Budget> {
        &self.budget
    }

    /// Who the fleet's credentials are: the ARN STS `GetCallerIdentity` answers (an operator's
    /// role session, for the audit of what they decided).
    pub async fn caller_arn(&self) -> Result<String, AccountError> {
        let conf = aws_sdk_sts::config::Builder::from(&self.base).interceptor(super::metrics::AwsMetrics).build();
        let identity = aws_sdk_sts::Client::from_conf(conf)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| AccountError::Identity(aws_sdk_sts::error::DisplayErrorContext(&e).to_string()))?;
        identity.arn.ok_or_else(|| AccountError::Identity("no ARN in the answer".into()))
    }

    /// The fleet's own account (STS `GetCallerIdentity`, asked once).
    pub async fn own_account(&self) -> Result<String, AccountError> {
        self.own
            .get_or_try_init(|| async {
                let conf =
                    aws_sdk_sts::config::Builder::from(&self.base).interceptor(super::metrics::AwsMetrics).build();
                let sts = aws_sdk_sts::Client::from_conf(conf);
                let identity = sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| AccountError::Identity(aws_sdk_sts::error::DisplayErrorContext(&e).to_string()))?;
                identity.account.ok_or_else(|| AccountError::Identity("no account in the answer".into()))
            })
            .await
            .cloned()
    }

    /// The SDK config that acts in an account: the fleet's own, or the member role's.
    pub async fn config(&self, account: &str) -> Result<SdkConfig, AccountError> {
        let own = self.own_account().await?;
        if account == own {
            return Ok(self.base.clone());
        }
        let mut configs = self.configs.lock().await;
        if let Some(config) = configs.get(account) {
            return Ok(config.clone());
        }
        let role = self
            .member_role
            .as_ref()
            .ok_or_else(|| AccountError::NoRole { account: account.to_owned(), own: own.clone() })?
            .replace("{account}", account);
        let mut provider = aws_config::sts::AssumeRoleProvider::builder(role).session_name(&self.session);
        if let Some(external_id) = &self.external_id {
            provider = provider.external_id(external_id);
        }
        let provider = provider.configure(&self.base).build().await;
        let config = self.base.to_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build();
        configs.insert(account.to_owned(), config.clone());
        Ok(config)
    }

    /// An EC2 client in an account and region, its calls shaped by the budget.
    pub async fn ec2(&self, account: &str, region: &str) -> Result<aws_sdk_ec2::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.ec2.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region);
        let conf = aws_sdk_ec2::config::Builder::from(&config)
            .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_ec2::Client::from_conf(conf);
        self.ec2.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }

    /// An SNS client in an account and region.
    pub async fn sns(&self, account: &str, region: &str) -> Result<aws_sdk_sns::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.sns.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let conf = aws_sdk_sns::config::Builder::from(&config)
            .region(aws_sdk_sns::config::Region::new(region.to_owned()))
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_sns::Client::from_conf(conf);
        self.sns.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }
}

impl AwsAccounts {
    /// A DynamoDB client in an account and region for actions on tables, its calls shaped by
    /// the budget (the fleet's own table is reached through the backend's client, not this).
    pub async fn dynamodb(&self, account: &str, region: &str) -> Result<aws_sdk_dynamodb::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.dynamodb.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region);
        let conf = aws_sdk_dynamodb::config::Builder::from(&config)
            .region(aws_sdk_dynamodb::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_dynamodb::Client::from_conf(conf);
        self.dynamodb.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }

    /// An RDS client in an account and region, its calls shaped by the budget's RDS classes.
    pub async fn rds(&self, account: &str, region: &str) -> Result<aws_sdk_rds::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.rds.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region).for_rds();
        let conf = aws_sdk_rds::config::Builder::from(&config)
            .region(aws_sdk_rds::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_rds::Client::from_conf(conf);
        self.rds.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }

    /// An SSM client in an account and region (Run Command), its calls shaped by the budget.
    pub async fn ssm(&self, account: &str, region: &str) -> Result<aws_sdk_ssm::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.ssm.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region);
        let conf = aws_sdk_ssm::config::Builder::from(&config)
            .region(aws_sdk_ssm::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_ssm::Client::from_conf(conf);
        self.ssm.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }

    /// An Auto Scaling client in an account and region, its calls shaped by the budget.
    pub async fn autoscaling(&self, account: &str, region: &str) -> Result<aws_sdk_autoscaling::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.autoscaling.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region).for_autoscaling();
        let conf = aws_sdk_autoscaling::config::Builder::from(&config)
            .region(aws_sdk_autoscaling::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_autoscaling::Client::from_conf(conf);
        self.autoscaling.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }

    /// A Resource Groups Tagging API client in an account and region (discovery of the types
    /// EC2's describes do not list), its calls shaped by the budget.
    pub async fn tagging(
        &self,
        account: &str,
        region: &str,
    ) -> Result<aws_sdk_resourcegroupstagging::Client, AccountError> {
        let key = (account.to_owned(), region.to_owned());
        if let Some(client) = self.tagging.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(client.clone());
        }
        let config = self.config(account).await?;
        let http = Budgeted::new(self.http.clone(), Arc::clone(&self.budget), account, region);
        let conf = aws_sdk_resourcegroupstagging::config::Builder::from(&config)
            .region(aws_sdk_resourcegroupstagging::config::Region::new(region.to_owned()))
            .http_client(http)
            .interceptor(super::metrics::AwsMetrics)
            .build();
        let client = aws_sdk_resourcegroupstagging::Client::from_conf(conf);
        self.tagging.lock().unwrap_or_else(PoisonError::into_inner).insert(key, client.clone());
        Ok(client)
    }
}

/// The STS session name the member roles are assumed with, so CloudTrail in a member account
/// names the fleet and the machine: `opsfleet-<fleet>-<host>`, in the characters STS takes, at
/// most 64 of them.
pub fn session_name(fleet: &str, host: &str) -> String {
    format!("opsfleet-{fleet}-{host}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .take(64)
        .collect()
}

/// This machine's name (a container's id on ECS), or `unknown`.
fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::session_name;

    #[test]
    fn the_session_names_the_fleet_and_the_host_in_what_sts_takes() {
        assert_eq!(session_name("ops", "ip-10-0-0-1.ec2.internal"), "opsfleet-ops-ip-10-0-0-1.ec2.internal");
        assert_eq!(session_name("ops", "a b/c"), "opsfleet-ops-a-b-c");
        assert_eq!(session_name("ops", &"x".repeat(100)).len(), 64);
    }
}
