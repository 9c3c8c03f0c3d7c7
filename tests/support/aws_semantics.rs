//! What the fault proxy serves of AWS's own behaviour, on the wire: DynamoDB's eventually
//! consistent reads a moment behind the table (the proxy keeps, for a while, what every item was
//! before each write it forwarded) and SQS's second deliveries of standard-queue messages (a
//! message received once is delivered again to a later receive of the same queue; deleting it,
//! or changing its visibility, through the second receipt succeeds and does nothing).

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The receipts of second deliveries start with this.
const SECOND: &str = "second-delivery:";

/// Sends requests upstream with the original request's headers.
pub type Forward<'a> = &'a super::fault_proxy::Forwarder<'a>;

/// Per item (`table|pk|sk`), what it was before each write of the last while, oldest first.
type History = HashMap<String, VecDeque<(Instant, Option<Value>)>>;

/// What the proxy remembers to serve AWS's semantics.
#[derive(Default)]
pub struct AwsSemantics {
    history: Mutex<History>,
    /// One write at a time per item, so the item read before it is what it replaced.
    writing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per queue URL, messages to deliver a second time.
    again: Mutex<HashMap<String, Vec<Value>>>,
    /// Reads served stale.
    pub stale_reads: std::sync::atomic::AtomicU64,
    /// Second deliveries made.
    pub second_deliveries: std::sync::atomic::AtomicU64,
}

/// What the proxy does with a request.
pub enum Served {
    /// Answered: the status and body.
    Answer(u16, Bytes),
    /// Forward it as it is.
    Forward,
}

fn item_key(table: &str, key: &Value) -> Option<String> {
    let pk = key.get("pk")?.get("S")?.as_str()?;
    let sk = key.get("sk")?.get("S")?.as_str()?;
    Some(format!("{table}|{pk}|{sk}"))
}

fn ok_json(value: &Value) -> Served {
    Served::Answer(200, Bytes::from(value.to_string()))
}

impl AwsSemantics {
    /// The item as a read `lag` behind sees it: `Some(before)` when it was written since.
    fn lagged(&self, key: &str, lag: Duration) -> Option<Option<Value>> {
        let horizon = Instant::now().checked_sub(lag)?;
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let writes = history.get_mut(key)?;
        while writes.front().is_some_and(|(at, _)| *at <= horizon) {
            writes.pop_front();
        }
        let before = writes.front().map(|(_, item)| item.clone());
        if writes.is_empty() {
            history.remove(key);
        }
        before
    }

    fn item_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(writing.entry(key.to_owned()).or_default())
    }

    /// DynamoDB: serves an eventually consistent read from what the table was `lag` ago, and
    /// forwards a write itself, remembering what it replaced. `target` is the operation.
    pub async fn dynamodb(&self, lag: Duration, target: &str, body: &Bytes, forward: Forward<'_>) -> Served {
        let Ok(request) = serde_json::from_slice::<Value>(body) else { return Served::Forward };
        let table = request.get("TableName").and_then(Value::as_str).unwrap_or_default().to_owned();
        let consistent = request.get("ConsistentRead").and_then(Value::as_bool).unwrap_or(false);
        match target {
            "PutItem" | "UpdateItem" | "DeleteItem" => {
                let key = if target == "PutItem" { request.get("Item") } else { request.get("Key") };
                let Some(key) = key.and_then(|k| item_key(&table, k)) else { return Served::Forward };
                let lock = self.item_lock(&key);
                let _writing = lock.lock().await;
                let pk_sk = request.get(if target == "PutItem" { "Item" } else { "Key" }).cloned().unwrap_or_default();
                let read = json!({
                    "TableName": table,
                    "Key": { "pk": pk_sk["pk"], "sk": pk_sk["sk"] },
                    "ConsistentRead": true,
                });
                let Some((200, before)) = forward.call("GetItem", Bytes::from(read.to_string())).await else {
                    return Served::Forward;
                };
                let before = serde_json::from_slice::<Value>(&before).ok().and_then(|v| v.get("Item").cloned());
                let Some((status, answer)) = forward.call(target, body.clone()).await else {
                    return Served::Answer(500, Bytes::new());
                };
                if status == 200 {
                    let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
                    history.entry(key).or_default().push_back((Instant::now(), before));
                }
                Served::Answer(status, answer)
            }
            "GetItem" if !consistent => {
                let Some(key) = request.get("Key").and_then(|k| item_key(&table, k)) else { return Served::Forward };
                match self.lagged(&key, lag) {
                    Some(before) => {
                        self.stale_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        ok_json(&before.map_or_else(|| json!({}), |item| json!({ "Item": item })))
                    }
                    None => Served::Forward,
                }
            }
            "Query" if !consistent || request.get("IndexName").is_some() => {
                let Some((status, answer)) = forward.call(target, body.clone()).await else {
                    return Served::Answer(500, Bytes::new());
                };
                let Ok(mut found) = serde_json::from_slice::<Value>(&answer) else {
                    return Served::Answer(status, answer);
                };
                if status != 200 {
                    return Served::Answer(status, answer);
                }
                let index = request.get("IndexName").is_some();
                let items: Vec<Value> = found["Items"].as_array().cloned().unwrap_or_default();
                let mut kept = Vec::new();
                for item in items {
                    match item_key(&table, &item).and_then(|key| self.lagged(&key, lag)) {
                        None => kept.push(item),
                        // An index misses what was written within the lag; a query of the
                        // table sees what the items were.
                        Some(_) if index => {}
                        Some(Some(before)) => kept.push(before),
                        Some(None) => {}
                    }
                }
                found["Count"] = json!(kept.len());
                found["Items"] = Value::Array(kept);
                ok_json(&found)
            }
            _ => Served::Forward,
        }
    }

    /// SQS: delivers some standard-queue messages a second time, and takes their second
    /// receipts' deletes and visibility changes.
    pub async fn sqs(&self, share: f64, target: &str, body: &Bytes, forward: Forward<'_>) -> Served {
        let Ok(request) = serde_json::from_slice::<Value>(body) else { return Served::Forward };
        let queue = request.get("QueueUrl").and_then(Value::as_str).unwrap_or_default().to_owned();
        if queue.ends_with(".fifo") {
            return Served::Forward;
        }
        match target {
            "ReceiveMessage" => {
                let waiting: Vec<Value> = {
                    let mut again = self.again.lock().unwrap_or_else(PoisonError::into_inner);
                    let max = request.get("MaxNumberOfMessages").and_then(Value::as_u64).unwrap_or(1) as usize;
                    let list = again.entry(queue.clone()).or_default();
                    let n = list.len().min(max);
                    list.drain(..n).collect()
                };
                if !waiting.is_empty() {
                    self.second_deliveries.fetch_add(waiting.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    return ok_json(&json!({ "Messages": waiting }));
                }
                let Some((status, answer)) = forward.call(target, body.clone()).await else {
                    return Served::Answer(500, Bytes::new());
                };
                if status == 200 {
                    if let Ok(received) = serde_json::from_slice::<Value>(&answer) {
                        let mut copies = Vec::new();
                        for m in received["Messages"].as_array().cloned().unwrap_or_default() {
                            if rand::thread_rng().gen_bool(share.clamp(0.0, 1.0)) {
                                let mut copy = m.clone();
                                let receipt = m["ReceiptHandle"].as_str().unwrap_or_default();
                                copy["ReceiptHandle"] = json!(format!("{SECOND}{receipt}"));
                                copies.push(copy);
                            }
                        }
                        if !copies.is_empty() {
                            self.again
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .entry(queue)
                                .or_default()
                                .extend(copies);
                        }
                    }
                }
                Served::Answer(status, answer)
            }
            "DeleteMessage" | "ChangeMessageVisibility" => {
                if request.get("ReceiptHandle").and_then(Value::as_str).is_some_and(|r| r.starts_with(SECOND)) {
                    return ok_json(&json!({}));
                }
                Served::Forward
            }
            "DeleteMessageBatch" | "ChangeMessageVisibilityBatch" => {
                let entries = request["Entries"].as_array().cloned().unwrap_or_default();
                let (second, real): (Vec<Value>, Vec<Value>) = entries
                    .into_iter()
                    .partition(|e| e["ReceiptHandle"].as_str().is_some_and(|r| r.starts_with(SECOND)));
                if second.is_empty() {
                    return Served::Forward;
                }
                let mut successful: Vec<Value> = second.iter().map(|e| json!({ "Id": e["Id"] })).collect();
                let mut failed = Vec::new();
                if !real.is_empty() {
                    let mut rest = request.clone();
                    rest["Entries"] = Value::Array(real);
                    let Some((status, answer)) = forward.call(target, Bytes::from(rest.to_string())).await else {
                        return Served::Answer(500, Bytes::new());
                    };
                    if status != 200 {
                        return Served::Answer(status, answer);
                    }
                    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
                    successful.extend(answer["Successful"].as_array().cloned().unwrap_or_default());
                    failed.extend(answer["Failed"].as_array().cloned().unwrap_or_default());
                }
                ok_json(&json!({ "Successful": successful, "Failed": failed }))
            }
            _ => Served::Forward,
        }
    }
}
