//! Turning an SQS body into an [`Event`].

use super::{alarm, Event, EventError};
use serde_json::{Map, Value};

/// Normalizes one SQS message body: a raw EventBridge event, an SNS notification wrapping an
/// EventBridge event, or an SNS notification (or bare message) of a classic CloudWatch alarm,
/// which is reshaped as a `CloudWatch Alarm State Change` event.
pub fn normalize(body: &str) -> Result<Event, EventError> {
    let value: Value = serde_json::from_str(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(EventError::NotAnObject);
    };
    if is_sns_notification(&object) {
        return from_sns(object);
    }
    if object.contains_key("detail-type") || object.contains_key("source") {
        return from_eventbridge(object, None);
    }
    if alarm::is_alarm_message(&object) {
        return from_eventbridge(alarm::to_eventbridge(&object, None), None);
    }
    Err(EventError::Unrecognized)
}

fn is_sns_notification(object: &Map<String, Value>) -> bool {
    object.get("Type").and_then(Value::as_str) == Some("Notification") && object.contains_key("Message")
}

fn from_sns(envelope: Map<String, Value>) -> Result<Event, EventError> {
    let message_id = envelope.get("MessageId").and_then(Value::as_str).unwrap_or_default().to_owned();
    let sns_error = |reason: &str| EventError::SnsMessage { message_id: message_id.clone(), reason: reason.to_owned() };
    let text = envelope.get("Message").and_then(Value::as_str).ok_or_else(|| sns_error("not a string"))?;
    let inner: Value = serde_json::from_str(text).map_err(|_| sns_error("not JSON"))?;
    let Value::Object(inner) = inner else {
        return Err(sns_error("JSON but not an object"));
    };
    let fallback_id = (!message_id.is_empty()).then_some(message_id.as_str());
    if inner.contains_key("detail-type") {
        return from_eventbridge(inner, fallback_id);
    }
    if alarm::is_alarm_message(&inner) {
        return from_eventbridge(alarm::to_eventbridge(&inner, fallback_id), None);
    }
    Err(sns_error("neither an EventBridge event nor a CloudWatch alarm message"))
}

fn from_eventbridge(document: Map<String, Value>, fallback_id: Option<&str>) -> Result<Event, EventError> {
    let text = |field: &'static str| -> Result<Option<String>, EventError> {
        match document.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(EventError::Field { field, problem: "is not a string" }),
        }
    };
    let required = |field: &'static str| -> Result<String, EventError> {
        text(field)?.filter(|s| !s.is_empty()).ok_or(EventError::Field { field, problem: "is missing" })
    };
    let id = match text("id")? {
        Some(id) if !id.is_empty() => id,
        _ => fallback_id.map(str::to_owned).ok_or(EventError::Field { field: "id", problem: "is missing" })?,
    };
    let source = required("source")?;
    let detail_type = required("detail-type")?;
    let account = text("account")?;
    let region = text("region")?;
    let time = text("time")?;
    match document.get("detail") {
        None | Some(Value::Object(_)) => {}
        Some(_) => return Err(EventError::Field { field: "detail", problem: "is not an object" }),
    }
    match document.get("resources") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(EventError::Field { field: "resources", problem: "is not an array of strings" }),
    }
    let mut document = document;
    document.entry("id").or_insert_with(|| Value::String(id.clone()));
    Ok(Event { id, source, detail_type, account, region, time, document })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_json_and_non_objects() {
        assert!(matches!(normalize("nope"), Err(EventError::NotJson(_))));
        assert_eq!(normalize("[1]"), Err(EventError::NotAnObject));
        assert_eq!(normalize(r#"{"hello": 1}"#), Err(EventError::Unrecognized));
    }

    #[test]
    fn requires_id_source_and_detail_type() {
        let err = normalize(r#"{"source": "aws.ec2", "detail-type": "X"}"#).unwrap_err();
        assert_eq!(err.to_string(), "event field `id` is missing");
        let err = normalize(r#"{"id": "1", "detail-type": "X"}"#).unwrap_err();
        assert_eq!(err.to_string(), "event field `source` is missing");
        let err = normalize(r#"{"id": "1", "source": "s", "detail-type": "X", "detail": 3}"#).unwrap_err();
        assert_eq!(err.to_string(), "event field `detail` is not an object");
    }

    #[test]
    fn unknown_detail_types_are_events() {
        let event = normalize(r#"{"id": "1", "source": "my.app", "detail-type": "Whatever", "detail": {}}"#).unwrap();
        assert_eq!(event.detail_type, "Whatever");
        assert_eq!(event.account, None);
    }

    #[test]
    fn sns_wrapped_eventbridge_event_takes_sns_id_when_missing() {
        let inner = r#"{"source": "aws.ec2", "detail-type": "X", "account": "123456789012"}"#;
        let body = serde_json::json!({"Type": "Notification", "MessageId": "sns-1", "Message": inner}).to_string();
        let event = normalize(&body).unwrap();
        assert_eq!(event.id, "sns-1");
        assert_eq!(event.document["id"], "sns-1");
        assert_eq!(event.account.as_deref(), Some("123456789012"));
    }

    #[test]
    fn sns_with_garbage_message_names_the_message() {
        let body = serde_json::json!({"Type": "Notification", "MessageId": "m-9", "Message": "hi"}).to_string();
        assert_eq!(normalize(&body).unwrap_err().to_string(), "SNS notification m-9: Message is not JSON");
    }
}
