//! Classic CloudWatch alarm notifications (the JSON CloudWatch publishes to SNS), reshaped as
//! EventBridge `CloudWatch Alarm State Change` events.

use crate::resource::Arn;
use serde_json::{json, Map, Value};

/// Whether an object is a classic CloudWatch alarm message.
pub(super) fn is_alarm_message(object: &Map<String, Value>) -> bool {
    object.contains_key("AlarmName") && object.contains_key("NewStateValue")
}

/// Reshapes a classic alarm message as the EventBridge event CloudWatch would have sent. The
/// region comes from `AlarmArn` (the message's `Region` is a long name such as
/// "EU (Ireland)"); the event id is the SNS message id when there is one.
pub(super) fn to_eventbridge(message: &Map<String, Value>, sns_message_id: Option<&str>) -> Map<String, Value> {
    let text = |key: &str| message.get(key).cloned().unwrap_or(Value::Null);
    let alarm_arn = message.get("AlarmArn").and_then(Value::as_str);
    let region = alarm_arn.and_then(Arn::parse).map(|arn| arn.region.to_owned()).filter(|r| !r.is_empty());
    let account = message
        .get("AWSAccountId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| alarm_arn.and_then(Arn::parse).map(|arn| arn.account.to_owned()));
    let id = sns_message_id.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}:{}",
            alarm_arn.or(message.get("AlarmName").and_then(Value::as_str)).unwrap_or_default(),
            message.get("StateChangeTime").and_then(Value::as_str).unwrap_or_default()
        )
    });
    let trigger = message.get("Trigger").and_then(Value::as_object);
    let metrics = trigger.map(metrics_of).unwrap_or_default();
    let event = json!({
        "version": "0",
        "id": id,
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": account,
        "time": text("StateChangeTime"),
        "region": region,
        "resources": alarm_arn.map(|a| vec![a.to_owned()]).unwrap_or_default(),
        "detail": {
            "alarmName": text("AlarmName"),
            "state": {
                "value": text("NewStateValue"),
                "reason": text("NewStateReason"),
                "timestamp": text("StateChangeTime"),
            },
            "previousState": { "value": text("OldStateValue") },
            "configuration": {
                "description": text("AlarmDescription"),
                "metrics": metrics,
            },
        },
    });
    match event {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The EventBridge `configuration.metrics` list of a classic `Trigger`: one entry for a
/// single-metric alarm, one per entry of `Trigger.Metrics` for a metric-math alarm.
fn metrics_of(trigger: &Map<String, Value>) -> Vec<Value> {
    if let Some(list) = trigger.get("Metrics").and_then(Value::as_array) {
        return list.iter().filter_map(Value::as_object).map(math_metric).collect();
    }
    if !trigger.contains_key("MetricName") {
        return Vec::new();
    }
    vec![json!({
        "id": "m1",
        "metricStat": {
            "metric": {
                "namespace": trigger.get("Namespace").cloned().unwrap_or(Value::Null),
                "name": trigger.get("MetricName").cloned().unwrap_or(Value::Null),
                "dimensions": dimensions(trigger.get("Dimensions")),
            },
            "period": trigger.get("Period").cloned().unwrap_or(Value::Null),
            "stat": trigger.get("Statistic").or(trigger.get("ExtendedStatistic")).cloned().unwrap_or(Value::Null),
        },
        "returnData": true,
    })]
}

fn math_metric(entry: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let field = |k: &str| entry.get(k).cloned();
    if let Some(v) = field("Id") {
        out.insert("id".into(), v);
    }
    if let Some(v) = field("Expression") {
        out.insert("expression".into(), v);
    }
    if let Some(v) = field("Label") {
        out.insert("label".into(), v);
    }
    out.insert("returnData".into(), field("ReturnData").unwrap_or(Value::Bool(false)));
    if let Some(stat) = entry.get("MetricStat").and_then(Value::as_object) {
        let metric = stat.get("Metric").and_then(Value::as_object);
        let get = |k: &str| metric.and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null);
        out.insert(
            "metricStat".into(),
            json!({
                "metric": {
                    "namespace": get("Namespace"),
                    "name": get("MetricName"),
                    "dimensions": dimensions(metric.and_then(|m| m.get("Dimensions"))),
                },
                "period": stat.get("Period").cloned().unwrap_or(Value::Null),
                "stat": stat.get("Stat").cloned().unwrap_or(Value::Null),
            }),
        );
    }
    Value::Object(out)
}

/// Classic dimensions are `[{"name": …, "value": …}]` (either case); EventBridge writes them
/// as one object `{name: value}`.
fn dimensions(list: Option<&Value>) -> Value {
    let mut out = Map::new();
    for dim in list.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object) {
        let name = dim.get("name").or(dim.get("Name")).and_then(Value::as_str);
        let value = dim.get("value").or(dim.get("Value")).cloned();
        if let (Some(name), Some(value)) = (name, value) {
            out.insert(name.to_owned(), value);
        }
    }
    Value::Object(out)
}
