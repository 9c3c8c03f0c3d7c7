//! `opsfleet-core.yaml`: what a fleet runs on, named as the fleet and `opsfleet setup` name it.

use super::{get_att, logical_id, reference};
use crate::cli::catalog;
use opsfleet_backend::aws::TTL_ATTRIBUTE;
use opsfleet_protocol::ports::{QueueSpec, INDEXES};
use opsfleet_protocol::setup::queue_specs;
use opsfleet_protocol::{names, Config};
use serde_json::{json, Map, Value};

/// The logical id of the fleet's role's managed policy.
pub const TASK_POLICY: &str = "TaskPolicy";

/// The logical id of the events queue.
const EVENTS_QUEUE: &str = "EventsQueue";

/// One EventBridge rule: tasks with the same pattern share one, a scheduled task has its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name.
    pub name: String,
    /// The tasks it feeds.
    pub tasks: Vec<String>,
    /// The event pattern, exactly as the tasks have it (none for a schedule).
    pub pattern: Option<Value>,
    /// The schedule expression of a scheduled task.
    pub schedule: Option<String>,
}

/// The rules of a config: one per distinct pattern (named after its first task) and one per
/// scheduled task.
pub fn rules(config: &Config) -> Vec<Rule> {
    let fleet = &config.fleet.name;
    let mut rules: Vec<Rule> = Vec::new();
    for task in &config.tasks {
        let rule = names::rule(fleet, &task.name);
        match &task.schedule {
            Some(schedule) => rules.push(Rule {
                name: rule,
                tasks: vec![task.name.clone()],
                pattern: None,
                schedule: Some(schedule.clone()),
            }),
            None => match rules.iter_mut().find(|r| r.pattern.as_ref() == Some(&task.pattern_json)) {
                Some(shared) => shared.tasks.push(task.name.clone()),
                None => rules.push(Rule {
                    name: rule,
                    tasks: vec![task.name.clone()],
                    pattern: Some(task.pattern_json.clone()),
                    schedule: None,
                }),
            },
        }
    }
    rules
}

/// The logical id of a queue of the fleet (`{fleet}-jobs-0.fifo` → `Jobs0FifoQueue`).
pub fn queue_id(fleet: &str, queue: &str) -> String {
    let short = queue.strip_prefix(fleet).unwrap_or(queue);
    format!("{}Queue", logical_id(short))
}

/// The core stack of a config.
pub fn core_template(config: &Config) -> Value {
    let fleet = &config.fleet.name;
    let mut resources = Map::new();
    for spec in queue_specs(config) {
        resources.insert(queue_id(fleet, &spec.name), queue(fleet, &spec));
    }
    resources.insert("Table".into(), table(config));
    let rules = rules(config);
    let mut rule_arns = Vec::new();
    for rule in &rules {
        let id = format!("{}Rule", logical_id(&rule.name));
        rule_arns.push(get_att(&id, "Arn"));
        let mut properties = json!({
            "Name": rule.name,
            "Description": format!("opsfleet {fleet}: {}", rule.tasks.join(", ")),
            "State": "ENABLED",
            "Targets": [{ "Arn": get_att(EVENTS_QUEUE, "Arn"), "Id": "opsfleet-events" }],
        });
        if let Some(pattern) = &rule.pattern {
            properties["EventPattern"] = pattern.clone();
        }
        if let Some(schedule) = &rule.schedule {
            properties["ScheduleExpression"] = json!(schedule);
        }
        resources.insert(id, json!({ "Type": "AWS::Events::Rule", "Properties": properties }));
    }
    for (n, topic) in config.fleet.alarm_topics.iter().enumerate() {
        let region = topic.split(':').nth(3).unwrap_or_default();
        resources.insert(
            format!("AlarmTopic{n}Subscription"),
            json!({ "Type": "AWS::SNS::Subscription", "Properties": {
                "TopicArn": topic, "Protocol": "sqs", "Endpoint": get_att(EVENTS_QUEUE, "Arn"), "Region": region,
            }}),
        );
    }
    if let Some(policy) = events_queue_policy(config, rule_arns) {
        resources.insert("EventsQueuePolicy".into(), policy);
    }
    resources.insert(
        TASK_POLICY.into(),
        json!({ "Type": "AWS::IAM::ManagedPolicy", "Properties": {
            "Description": format!("opsfleet {fleet}: what `opsfleet iam-policy` prints for this config"),
            "PolicyDocument": catalog::policy(config, false),
        }}),
    );
    resources.insert(
        "TaskRole".into(),
        json!({ "Type": "AWS::IAM::Role", "Properties": {
            "Description": format!("opsfleet {fleet}: the router's and workers' role"),
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "ecs-tasks.amazonaws.com" }, "Action": "sts:AssumeRole",
            }]},
            "ManagedPolicyArns": [reference(TASK_POLICY)],
        }}),
    );
    // What the config decides that lives in the table, not in a resource: the limits, and
    // the topics the notify tasks publish to (the role's policy allows exactly those).
    let limits: Map<String, Value> =
        config.limits.values().map(|l| (l.name.clone(), json!({ "max": l.max, "pool": l.pool.as_str() }))).collect();
    let mut topics: Vec<&str> =
        config.tasks.iter().filter(|t| t.action == "notify").filter_map(|t| t.params["topic_arn"].as_str()).collect();
    topics.dedup();
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!("opsfleet {fleet}: queues, table, EventBridge rules and role (rendered by `opsfleet infra render`)"),
        "Metadata": { "opsfleet": {
            "fleet": fleet,
            "partitions": config.fleet.partitions.get(),
            "limits": limits,
            "notify_topics": topics,
            "rules": rules.iter().map(|r| json!({ "name": r.name, "tasks": r.tasks })).collect::<Vec<_>>(),
        }},
        "Resources": resources,
        "Outputs": {
            "EventsQueueUrl": { "Value": reference(EVENTS_QUEUE) },
            "TableName": { "Value": reference("Table") },
            "TaskRoleArn": { "Value": get_att("TaskRole", "Arn"), "Export": { "Name": export(fleet, "task-role-arn") } },
            "TaskPolicyArn": { "Value": reference(TASK_POLICY), "Export": { "Name": export(fleet, "task-policy-arn") } },
        },
    })
}

/// The name of an output the core stack exports for the service stack.
pub fn export(fleet: &str, what: &str) -> String {
    format!("{fleet}-{what}")
}

/// One queue, with the attributes `opsfleet setup` gives it, encrypted at rest.
fn queue(fleet: &str, spec: &QueueSpec) -> Value {
    let mut properties = json!({
        "QueueName": spec.name,
        "VisibilityTimeout": spec.visibility.as_secs(),
        "MessageRetentionPeriod": spec.retention.as_secs(),
        "ReceiveMessageWaitTimeSeconds": 20,
        "SqsManagedSseEnabled": true,
    });
    if let Some((dlq, max_receive)) = &spec.dead_letter {
        properties["RedrivePolicy"] =
            json!({ "deadLetterTargetArn": get_att(&queue_id(fleet, dlq), "Arn"), "maxReceiveCount": max_receive });
    }
    if spec.is_fifo() {
        // High-throughput FIFO: deduplication and throughput per message group (one resource).
        properties["FifoQueue"] = json!(true);
        properties["DeduplicationScope"] = json!("messageGroup");
        properties["FifoThroughputLimit"] = json!("perMessageGroupId");
    }
    json!({ "Type": "AWS::SQS::Queue", "UpdateReplacePolicy": "Retain", "DeletionPolicy": "Retain", "Properties": properties })
}

/// The table of locks, limit slots and the ledger: its keys, the audit indexes (keys only),
/// TTL, point-in-time recovery and encryption.
fn table(config: &Config) -> Value {
    let mut attributes = vec![
        json!({ "AttributeName": "pk", "AttributeType": "S" }),
        json!({ "AttributeName": "sk", "AttributeType": "S" }),
    ];
    for index in INDEXES {
        attributes.push(json!({ "AttributeName": index.key, "AttributeType": "S" }));
    }
    attributes.push(json!({ "AttributeName": INDEXES[0].order, "AttributeType": "N" }));
    let indexes: Vec<Value> = INDEXES
        .iter()
        .map(|index| {
            json!({
                "IndexName": index.name,
                "KeySchema": [
                    { "AttributeName": index.key, "KeyType": "HASH" },
                    { "AttributeName": index.order, "KeyType": "RANGE" },
                ],
                "Projection": { "ProjectionType": "KEYS_ONLY" },
            })
        })
        .collect();
    json!({ "Type": "AWS::DynamoDB::Table", "UpdateReplacePolicy": "Retain", "DeletionPolicy": "Retain", "Properties": {
        "TableName": names::table(&config.fleet.name),
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": attributes,
        "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }, { "AttributeName": "sk", "KeyType": "RANGE" }],
        "GlobalSecondaryIndexes": indexes,
        "TimeToLiveSpecification": { "AttributeName": TTL_ATTRIBUTE, "Enabled": true },
        "PointInTimeRecoverySpecification": { "PointInTimeRecoveryEnabled": true },
        "SSESpecification": { "SSEEnabled": true },
    }})
}

/// The events queue admits only the fleet's rules and its alarm topics (none: no policy, and
/// only the account's principals with IAM permissions may send).
fn events_queue_policy(config: &Config, rule_arns: Vec<Value>) -> Option<Value> {
    let send = |service: &str, sources: Value| {
        json!({
            "Effect": "Allow",
            "Principal": { "Service": service },
            "Action": "sqs:SendMessage",
            "Resource": get_att(EVENTS_QUEUE, "Arn"),
            "Condition": { "ArnEquals": { "aws:SourceArn": sources } },
        })
    };
    let mut statements = Vec::new();
    if !rule_arns.is_empty() {
        statements.push(send("events.amazonaws.com", Value::Array(rule_arns)));
    }
    if !config.fleet.alarm_topics.is_empty() {
        statements.push(send("sns.amazonaws.com", json!(config.fleet.alarm_topics)));
    }
    (!statements.is_empty()).then(|| {
        json!({ "Type": "AWS::SQS::QueuePolicy", "Properties": {
            "Queues": [reference(EVENTS_QUEUE)],
            "PolicyDocument": { "Version": "2012-10-17", "Statement": statements },
        }})
    })
}
