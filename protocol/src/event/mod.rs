//! Events in: every SQS body the router accepts becomes one normalized [`Event`] in the
//! EventBridge shape, so one task pattern serves raw EventBridge events, SNS-wrapped ones and
//! classic CloudWatch alarm notifications alike.

mod alarm;
mod normalize;
mod targets;

#[cfg(test)]
mod fixtures_tests;

pub use normalize::normalize;
pub use targets::{named_resources, TargetError};

use serde_json::{Map, Value};

/// One event in the EventBridge shape, validated once at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event id (for SNS-carried alarms, the SNS message id): the seed of job ids.
    pub id: String,
    /// `source`, such as `aws.ec2`.
    pub source: String,
    /// `detail-type`, such as `EC2 Instance State-change Notification`.
    pub detail_type: String,
    /// The account the event comes from, when it names one.
    pub account: Option<String>,
    /// The region the event comes from, when it names one.
    pub region: Option<String>,
    /// The event time as written in the event (RFC 3339).
    pub time: Option<String>,
    /// The whole event document, which patterns match against.
    pub document: Map<String, Value>,
}

impl Event {
    /// The event's `detail` object (empty when the event has none).
    pub fn detail(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.document.get("detail").and_then(Value::as_object).unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    /// The strings of the event's `resources` array.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.document.get("resources").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
    }
}

/// Why a body is not an event. Each message names what is wrong in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON but not an object")]
    NotAnObject,
    /// The body is neither an EventBridge event, an SNS notification, nor an alarm message.
    #[error(
        "body is not an event: no `detail-type`/`source`, not an SNS notification, not a CloudWatch alarm message"
    )]
    Unrecognized,
    /// An SNS notification whose `Message` is not an event.
    #[error("SNS notification {message_id}: Message is {reason}")]
    SnsMessage {
        /// The SNS `MessageId`.
        message_id: String,
        /// What is wrong with the message.
        reason: String,
    },
    /// A required field is missing or has the wrong type.
    #[error("event field `{field}` {problem}")]
    Field {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}
