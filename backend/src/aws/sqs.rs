//! The queue port over Amazon SQS.

use super::errors::{classify, ErrorClass};
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use opsfleet_protocol::ports::{
    DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec, ReceivedMessage, SendFailure,
};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One SQS queue, by URL.
pub struct SqsQueue {
    client: Client,
    name: String,
    url: String,
}

fn error<E>(
    queue: &str,
    operation: &'static str,
    err: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match classify(err) {
        ErrorClass::Missing(_) => QueueError::NotFound { queue: queue.to_owned() },
        ErrorClass::Refused(message) => QueueError::Invalid { queue: queue.to_owned(), operation, message },
        ErrorClass::Retry(message) => QueueError::Unavailable { queue: queue.to_owned(), operation, message },
        ErrorClass::ConditionFailed => {
            QueueError::Invalid { queue: queue.to_owned(), operation, message: "condition failed".into() }
        }
    }
}

/// A long poll's timeouts: the wait plus the usual attempt timeout, so that an attempt is never
/// cut short while SQS is holding it open on purpose.
fn long_poll_timeouts(wait: Duration) -> aws_sdk_sqs::config::timeout::TimeoutConfig {
    let wait = wait.min(Duration::from_secs(20));
    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(wait + super::timeouts::ATTEMPT)
        .operation_timeout(wait + super::timeouts::OPERATION)
        .build()
}

impl SqsQueue {
    /// Looks up a queue's URL by name.
    pub async fn open(client: Client, name: &str) -> Result<Self, QueueError> {
        let out = client.get_queue_url().queue_name(name).send().await.map_err(|e| error(name, "GetQueueUrl", &e))?;
        let url = out.queue_url.ok_or_else(|| QueueError::NotFound { queue: name.to_owned() })?;
        Ok(SqsQueue { client, name: name.to_owned(), url })
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        let invalid =
            |message: String| QueueError::Invalid { queue: self.name.clone(), operation: "SendMessageBatch", message };
        let mut request = self.client.send_message_batch().queue_url(&self.url);
        for (index, message) in messages.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(&message.body)
                .set_message_group_id(message.group_id.clone())
                .set_message_deduplication_id(message.dedup_id.clone());
            if let Some(delay) = message.delay {
                entry = entry.delay_seconds(delay.as_secs().min(900) as i32);
            }
            for (name, value) in &message.attributes {
                let attr = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                entry = entry.message_attributes(name, attr);
            }
            request = request.entries(entry.build().map_err(|e| invalid(e.to_string()))?);
        }
        let out = request.send().await.map_err(|e| error(&self.name, "SendMessageBatch", &e))?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| SendFailure {
                index: f.id.parse().unwrap_or(usize::MAX),
                code: f.code,
                message: f.message.unwrap_or_default(),
                sender_fault: f.sender_fault,
            })
            .collect())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .set_visibility_timeout(visibility.map(|v| v.as_secs().min(43_200) as i32))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(long_poll_timeouts(wait)))
            .send()
            .await
            .map_err(|e| error(&self.name, "ReceiveMessage", &e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let system: HashMap<MessageSystemAttributeName, String> = m.attributes.unwrap_or_default();
                let get = |name: MessageSystemAttributeName| system.get(&name).cloned();
                let attributes: BTreeMap<String, String> = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                    .collect();
                ReceivedMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count: get(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                    sent_ms: get(MessageSystemAttributeName::SentTimestamp).and_then(|c| c.parse().ok()).unwrap_or(0),
                    group_id: get(MessageSystemAttributeName::MessageGroupId),
                    attributes,
                }
            })
            .collect())
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        let mut request = self.client.delete_message_batch().queue_url(&self.url);
        for (index, receipt) in receipts.iter().enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt)
                .build()
                .map_err(|e| QueueError::Invalid {
                    queue: self.name.clone(),
                    operation: "DeleteMessageBatch",
                    message: e.to_string(),
                })?;
            request = request.entries(entry);
        }
        let out = request.send().await.map_err(|e| error(&self.name, "DeleteMessageBatch", &e))?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| DeleteFailure {
                index: f.id.parse().unwrap_or(usize::MAX),
                message: format!("{}: {}", f.code, f.message.unwrap_or_default()),
                sender_fault: f.sender_fault,
            })
            .collect())
    }

    async fn change_visibility_batch(&self, entries: &[(String, Duration)]) -> Result<Vec<DeleteFailure>, QueueError> {
        let mut request = self.client.change_message_visibility_batch().queue_url(&self.url);
        for (index, (receipt, visibility)) in entries.iter().enumerate() {
            let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(receipt)
                .visibility_timeout(visibility.as_secs().min(43_200) as i32)
                .build()
                .map_err(|e| QueueError::Invalid {
                    queue: self.name.clone(),
                    operation: "ChangeMessageVisibilityBatch",
                    message: e.to_string(),
                })?;
            request = request.entries(entry);
        }
        let out = request.send().await.map_err(|e| error(&self.name, "ChangeMessageVisibilityBatch", &e))?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| DeleteFailure {
                index: f.id.parse().unwrap_or(usize::MAX),
                message: format!("{}: {}", f.code, f.message.unwrap_or_default()),
                sender_fault: f.sender_fault,
            })
            .collect())
    }

    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| error(&self.name, "ChangeMessageVisibility", &e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| error(&self.name, "GetQueueAttributes", &e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |name: QueueAttributeName| attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// Creates a queue with its attributes and redrive policy; an existing queue gets its
/// attributes set to the spec's.
pub(super) async fn ensure_queue(client: &Client, spec: &QueueSpec) -> Result<(), QueueError> {
    let mut attributes: HashMap<QueueAttributeName, String> = HashMap::new();
    attributes.insert(QueueAttributeName::VisibilityTimeout, spec.visibility.as_secs().to_string());
    attributes.insert(QueueAttributeName::MessageRetentionPeriod, spec.retention.as_secs().to_string());
    attributes.insert(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "20".into());
    if let Some((dlq, max_receive)) = &spec.dead_letter {
        let dlq_queue = SqsQueue::open(client.clone(), dlq).await?;
        let arn = client
            .get_queue_attributes()
            .queue_url(dlq_queue.url())
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| error(dlq, "GetQueueAttributes", &e))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| QueueError::NotFound { queue: dlq.clone() })?;
        let policy = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receive });
        attributes.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
    }
    if spec.is_fifo() {
        // High-throughput FIFO: deduplication and throughput per message group (one resource).
        attributes.insert(QueueAttributeName::DeduplicationScope, "messageGroup".into());
        attributes.insert(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId".into());
    }
    let mut create_attributes = attributes.clone();
    if spec.is_fifo() {
        create_attributes.insert(QueueAttributeName::FifoQueue, "true".into());
    }
    let created = client.create_queue().queue_name(&spec.name).set_attributes(Some(create_attributes)).send().await;
    match created {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = aws_sdk_sqs::error::ProvideErrorMetadata::code(&e).unwrap_or_default().to_owned();
            if !code.contains("QueueAlreadyExists") && !code.contains("QueueNameExists") {
                return Err(error(&spec.name, "CreateQueue", &e));
            }
            let queue = SqsQueue::open(client.clone(), &spec.name).await?;
            client
                .set_queue_attributes()
                .queue_url(queue.url())
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| error(&spec.name, "SetQueueAttributes", &e))?;
            Ok(())
        }
    }
}
