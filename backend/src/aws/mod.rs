//! The AWS backend: SQS queues and a DynamoDB table through the official SDK. Region,
//! endpoint and credentials come from the SDK's standard chain (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, profiles, instance and task roles).

mod accounts;
pub mod budget;
mod clients;
mod dynamodb;
mod errors;
pub mod metrics;
mod sqs;
pub mod timeouts;

pub use accounts::{AccountError, AwsAccounts};
pub use clients::AwsClients;

pub use dynamodb::{DynamoStore, TTL_ATTRIBUTE};
pub use sqs::SqsQueue;

use async_trait::async_trait;
use opsfleet_protocol::ports::{Backend, Queue, QueueError, QueueSpec, Store, StoreError};
use std::sync::Arc;

/// SQS and DynamoDB clients built from the SDK's standard configuration chain.
#[derive(Clone)]
pub struct AwsBackend {
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl AwsBackend {
    /// Clients from the environment, profiles and roles, as every AWS tool reads them, with
    /// the fleet's [`timeouts`] and the SDK's standard retry mode.
    pub async fn from_env() -> Self {
        Self::from_config(&Self::sdk_config().await)
    }

    /// The SDK config every client of the fleet starts from: the standard chain, the fleet's
    /// [`timeouts`], standard retries.
    pub async fn sdk_config() -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(default_http_client())
            .timeout_config(timeouts::config())
            .retry_config(aws_config::retry::RetryConfig::standard())
            .load()
            .await
    }

    /// Clients from an already loaded SDK config.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let sqs = aws_sdk_sqs::config::Builder::from(config).interceptor(metrics::AwsMetrics).build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(config).interceptor(metrics::AwsMetrics).build();
        AwsBackend { sqs: aws_sdk_sqs::Client::from_conf(sqs), dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb) }
    }

    /// Clients from an SDK config with SQS and DynamoDB at endpoints of their own, as
    /// `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB` set them for a process (tests
    /// that talk to two emulators from one process).
    pub fn with_endpoints(config: &aws_config::SdkConfig, sqs: &str, dynamodb: &str) -> Self {
        let sqs = aws_sdk_sqs::config::Builder::from(config).endpoint_url(sqs).interceptor(metrics::AwsMetrics).build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(config)
            .endpoint_url(dynamodb)
            .interceptor(metrics::AwsMetrics)
            .build();
        AwsBackend { sqs: aws_sdk_sqs::Client::from_conf(sqs), dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb) }
    }

    /// The SQS client.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// The DynamoDB client.
    pub fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        &self.dynamodb
    }
}

/// The HTTPS client every AWS client of the fleet sends through (the SDK's default: hyper with
/// rustls), made here so that the EC2 budget can wrap it.
pub fn default_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .build_https()
}

#[async_trait]
impl Backend for AwsBackend {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(SqsQueue::open(self.sqs.clone(), name).await?))
    }

    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(DynamoStore::open(self.dynamodb.clone(), table).await?))
    }

    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        sqs::ensure_queue(&self.sqs, spec).await
    }

    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        dynamodb::ensure_table(&self.dynamodb, table).await
    }
}
