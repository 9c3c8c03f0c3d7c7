//! The service stack's CloudWatch alarms: the safety net for a fleet run without Prometheus.
//! Each notifies `AlarmTopicArn` (when given) on the way into alarm and back.

use super::core::rules;
use super::logical_id;
use super::service::EMF_NAMESPACE;
use opsfleet_protocol::{names, Config};
use opsfleet_worker::sampler::EMF_METRIC;
use serde_json::{json, Map, Value};

/// The condition that `AlarmTopicArn` is set.
pub const HAS_ALARM_TOPIC: &str = "HasAlarmTopic";

/// How old the events queue's oldest message may grow before the routers are deemed stuck.
const EVENTS_MAX_AGE_SECS: u32 = 900;

/// The alarms of a config, by logical id.
pub fn alarms(config: &Config) -> Map<String, Value> {
    let fleet = &config.fleet.name;
    let mut alarms = Map::new();
    let mut dlqs = vec![names::events_dlq(fleet), names::checks_dlq(fleet)];
    dlqs.extend((0..config.fleet.partitions.get()).map(|p| names::jobs_dlq(fleet, p)));
    for dlq in dlqs {
        alarms.insert(
            format!("{}Alarm", logical_id(dlq.strip_prefix(fleet.as_str()).unwrap_or(&dlq))),
            alarm(
                format!("opsfleet {fleet}: {dlq} holds dead letters (opsfleet dlq list shows why)"),
                metric("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", &dlq, "Maximum"),
                "GreaterThanOrEqualToThreshold",
                1,
                1,
                "notBreaching",
            ),
        );
    }
    let events = names::events_queue(fleet);
    alarms.insert(
        "EventsQueueAgeAlarm".into(),
        alarm(
            format!("opsfleet {fleet}: events wait over {EVENTS_MAX_AGE_SECS} s in {events}: no router takes them"),
            metric("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", &events, "Maximum"),
            "GreaterThanThreshold",
            EVENTS_MAX_AGE_SECS,
            3,
            "notBreaching",
        ),
    );
    for rule in rules(config).iter().filter(|r| r.schedule.as_ref().is_none_or(|s| s.timezone.is_none())) {
        alarms.insert(
            format!("{}FailedAlarm", logical_id(&rule.name)),
            alarm(
                format!(
                    "opsfleet {fleet}: EventBridge rule {} failed to deliver events to the events queue",
                    rule.name
                ),
                metric("AWS/Events", "FailedInvocations", "RuleName", &rule.name, "Sum"),
                "GreaterThanOrEqualToThreshold",
                1,
                1,
                "notBreaching",
            ),
        );
    }
    if config.tasks.iter().any(|t| t.schedule.as_ref().is_some_and(|s| s.timezone.is_some())) {
        alarms.insert(
            "SchedulerDroppedAlarm".into(),
            alarm(
                format!("opsfleet {fleet}: EventBridge Scheduler dropped scheduled events in this account"),
                json!({ "Namespace": "AWS/Scheduler", "MetricName": "InvocationDroppedCount", "Statistic": "Sum" }),
                "GreaterThanOrEqualToThreshold",
                1,
                1,
                "notBreaching",
            ),
        );
    }
    // The scaling signal, as Prometheus's absent(): no backlog reported for 15 minutes.
    alarms.insert(
        "ScalingSignalMissingAlarm".into(),
        alarm(
            format!("opsfleet {fleet}: no process reported the job backlog for 15 minutes; autoscaling is blind"),
            metric(EMF_NAMESPACE, EMF_METRIC, "Fleet", fleet, "SampleCount"),
            "LessThanThreshold",
            1,
            3,
            "breaching",
        ),
    );
    alarms
}

/// A metric with one dimension and the statistic an alarm reads.
fn metric(namespace: &str, name: &str, dimension: &str, value: &str, statistic: &str) -> Value {
    json!({
        "Namespace": namespace, "MetricName": name, "Statistic": statistic,
        "Dimensions": [{ "Name": dimension, "Value": value }],
    })
}

/// An alarm over 5-minute periods, notifying the alarm topic both ways.
fn alarm(description: String, metric: Value, comparison: &str, threshold: u32, periods: u32, missing: &str) -> Value {
    let notify = json!({ "Fn::If": [HAS_ALARM_TOPIC, [{ "Ref": "AlarmTopicArn" }], { "Ref": "AWS::NoValue" }] });
    let mut properties = json!({
        "AlarmDescription": description,
        "ComparisonOperator": comparison,
        "Threshold": threshold,
        "EvaluationPeriods": periods,
        "Period": 300,
        "TreatMissingData": missing,
        "AlarmActions": notify,
        "OKActions": notify,
    });
    if let (Value::Object(properties), Value::Object(metric)) = (&mut properties, metric) {
        properties.extend(metric);
    }
    json!({ "Type": "AWS::CloudWatch::Alarm", "Properties": properties })
}
