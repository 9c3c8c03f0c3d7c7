//! The baseline on the wire: a bare SDK client doing the minimum any exactly-once worker must do
//! per job — send it in a batch, receive it in a batch, one conditional DynamoDB write, delete
//! it in a batch — on one FIFO queue and the fleet's table, with as many receive loops as the
//! fleet has pollers, sending and receiving at once.

use crate::baseline::Baseline;
use anyhow::{bail, Context};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::future::join_all;
use opsfleet_protocol::ports::{OutgoingMessage, MAX_BATCH};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The clients and where the baseline runs.
pub struct Wire {
    /// The SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// The DynamoDB client.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The table the conditional writes go to (the fleet's own).
    pub table: String,
    /// The FIFO queue to make and use (`….fifo`).
    pub queue: String,
}

/// Sends `messages` from `senders` tasks while `receivers` loops receive, write and delete
/// them; returns when every message was written and deleted.
pub async fn measure(
    wire: &Wire,
    messages: &[OutgoingMessage],
    senders: usize,
    receivers: usize,
) -> anyhow::Result<Baseline> {
    let url = wire
        .sqs
        .create_queue()
        .queue_name(&wire.queue)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .context("cannot create the baseline queue")?
        .queue_url
        .context("the baseline queue has no URL")?;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let total = messages.len();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let chunks: Vec<Vec<OutgoingMessage>> = messages.chunks(MAX_BATCH).map(<[_]>::to_vec).collect();
    let per_sender = chunks.len().div_ceil(senders.max(1)).max(1);
    let mut chunks = chunks.into_iter();
    for _ in 0..senders.max(1) {
        let mine: Vec<Vec<OutgoingMessage>> = chunks.by_ref().take(per_sender).collect();
        let (sqs, url) = (wire.sqs.clone(), url.clone());
        tasks.spawn(async move {
            for batch in mine {
                send(&sqs, &url, batch).await?;
            }
            Ok(())
        });
    }
    for _ in 0..receivers.max(1) {
        let (sqs, dynamodb, table, url, done) =
            (wire.sqs.clone(), wire.dynamodb.clone(), wire.table.clone(), url.clone(), Arc::clone(&done));
        tasks.spawn(async move {
            while done.load(Ordering::SeqCst) < total {
                let received = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(MAX_BATCH as i32)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .context("baseline receive failed")?
                    .messages
                    .unwrap_or_default();
                let writes = received.iter().map(|m| {
                    let id = m.message_id().unwrap_or_default().to_owned();
                    dynamodb
                        .put_item()
                        .table_name(&table)
                        .item("pk", AttributeValue::S(format!("baseline#{id}")))
                        .item("sk", AttributeValue::S("job".into()))
                        .item("status", AttributeValue::S("SUCCEEDED".into()))
                        .condition_expression("attribute_not_exists(pk)")
                        .send()
                });
                for written in join_all(writes).await {
                    written.context("baseline conditional write failed")?;
                }
                let entries: Vec<DeleteMessageBatchRequestEntry> = received
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                    })
                    .collect::<Result<_, _>>()
                    .context("invalid delete entry")?;
                if !entries.is_empty() {
                    sqs.delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .context("baseline delete failed")?;
                }
                done.fetch_add(received.len(), Ordering::SeqCst);
            }
            Ok(())
        });
    }
    while let Some(finished) = tasks.join_next().await {
        finished.context("a baseline task panicked")??;
    }
    let took = started.elapsed();
    if done.load(Ordering::SeqCst) < total {
        bail!("the baseline finished {} of {total} messages", done.load(Ordering::SeqCst));
    }
    let _ = wire.sqs.delete_queue().queue_url(&url).send().await;
    // Sending and draining overlap: the whole run counts as the drain.
    Ok(Baseline { messages: total, send: Duration::ZERO, drain: took })
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, batch: Vec<OutgoingMessage>) -> anyhow::Result<()> {
    let entries: Vec<SendMessageBatchRequestEntry> = batch
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .set_message_group_id(m.group_id)
                .set_message_deduplication_id(m.dedup_id)
                .build()
        })
        .collect::<Result<_, _>>()
        .context("invalid send entry")?;
    let out = sqs
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .context("baseline send failed")?;
    if let Some(f) = out.failed.first() {
        bail!("baseline send refused: {}: {}", f.code, f.message.clone().unwrap_or_default());
    }
    Ok(())
}
