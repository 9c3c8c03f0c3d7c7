//! The AWS-clients port: what actions and discovery ask for, an SDK client of a service in an
//! account and region. How accounts are reached (the fleet's own role, member roles through
//! STS, the EC2 budget) is decided by whoever builds the implementation: the binary, and tests.

use super::{AccountError, AwsAccounts};
use async_trait::async_trait;
use aws_credential_types::provider::SharedCredentialsProvider;

/// SDK clients in any account and region.
#[async_trait]
pub trait AwsClients: Send + Sync {
    /// An EC2 client in an account and region.
    async fn ec2(&self, account: &str, region: &str) -> Result<aws_sdk_ec2::Client, AccountError>;

    /// An SNS client in an account and region.
    async fn sns(&self, account: &str, region: &str) -> Result<aws_sdk_sns::Client, AccountError>;

    /// A DynamoDB client in an account and region (actions on tables).
    async fn dynamodb(&self, account: &str, region: &str) -> Result<aws_sdk_dynamodb::Client, AccountError>;

    /// An RDS client in an account and region (actions on instances and clusters).
    async fn rds(&self, account: &str, region: &str) -> Result<aws_sdk_rds::Client, AccountError>;

    /// An SSM client in an account and region (Run Command).
    async fn ssm(&self, account: &str, region: &str) -> Result<aws_sdk_ssm::Client, AccountError>;

    /// An Auto Scaling client in an account and region.
    async fn autoscaling(&self, account: &str, region: &str) -> Result<aws_sdk_autoscaling::Client, AccountError>;

    /// The credentials that act in an account (to presign a request another service sends).
    async fn credentials(&self, account: &str) -> Result<SharedCredentialsProvider, AccountError>;

    /// A Resource Groups Tagging API client in an account and region (discovery).
    async fn tagging(&self, account: &str, region: &str)
        -> Result<aws_sdk_resourcegroupstagging::Client, AccountError>;
}

#[async_trait]
impl AwsClients for AwsAccounts {
    async fn ec2(&self, account: &str, region: &str) -> Result<aws_sdk_ec2::Client, AccountError> {
        AwsAccounts::ec2(self, account, region).await
    }

    async fn sns(&self, account: &str, region: &str) -> Result<aws_sdk_sns::Client, AccountError> {
        AwsAccounts::sns(self, account, region).await
    }

    async fn dynamodb(&self, account: &str, region: &str) -> Result<aws_sdk_dynamodb::Client, AccountError> {
        AwsAccounts::dynamodb(self, account, region).await
    }

    async fn tagging(
        &self,
        account: &str,
        region: &str,
    ) -> Result<aws_sdk_resourcegroupstagging::Client, AccountError> {
        AwsAccounts::tagging(self, account, region).await
    }

    async fn rds(&self, account: &str, region: &str) -> Result<aws_sdk_rds::Client, AccountError> {
        AwsAccounts::rds(self, account, region).await
    }

    async fn ssm(&self, account: &str, region: &str) -> Result<aws_sdk_ssm::Client, AccountError> {
        AwsAccounts::ssm(self, account, region).await
    }

    async fn autoscaling(&self, account: &str, region: &str) -> Result<aws_sdk_autoscaling::Client, AccountError> {
        AwsAccounts::autoscaling(self, account, region).await
    }

    async fn credentials(&self, account: &str) -> Result<SharedCredentialsProvider, AccountError> {
        let config = self.config(account).await?;
        config.credentials_provider().ok_or_else(|| AccountError::Identity("the SDK config has no credentials".into()))
    }
}
