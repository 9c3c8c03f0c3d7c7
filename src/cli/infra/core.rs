//! `opsfleet-core.yaml`: what a fleet runs on, named as the fleet and `opsfleet setup` name it.

use super::{get_att, logical_id, reference};
use crate::cli::catalog;
use opsfleet_backend::aws::TTL_ATTRIBUTE;
use opsfleet_protocol::config::{Schedule, SCHEDULE_GROUP};
use opsfleet_protocol::ports::{QueueSpec, INDEXES};
use opsfleet_protocol::setup::queue_specs;
use opsfleet_protocol::{names, Config};
use serde_json::{json, Map, Value};

/// The logical id of the fleet's role's managed policy.
pub const TASK_POLICY: &str = "TaskPolicy";

/// The logical id of the routers' role's managed policy.
pub const ROUTER_POLICY: &str = "RouterPolicy";

/// The logical id of the events queue.
const EVENTS_QUEUE: &str = "EventsQueue";

/// The logical id of the events DLQ.
const EVENTS_DLQ: &str = "EventsDlqQueue";

/// The logical id of the role EventBridge Scheduler sends scheduled events with.
pub const SCHEDULER_ROLE: &str = "SchedulerRole";

/// One EventBridge rule or Scheduler schedule: tasks with the same pattern share a rule, tasks
/// with the same schedule share it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's or schedule's name.
    pub name: String,
    /// The tasks it feeds.
    pub tasks: Vec<String>,
    /// The event pattern, exactly as the tasks have it (none for a schedule).
    pub pattern: Option<Value>,
    /// The schedule of scheduled tasks.
    pub schedule: Option<Schedule>,
}

/// The rules of a config: one per distinct pattern (named after its first task) and one per
/// distinct schedule.
pub fn rules(config: &Config) -> Vec<Rule> {
    let fleet = &config.fleet.name;
    let mut rules: Vec<Rule> = Vec::new();
    for task in &config.tasks {
        let shared = match &task.schedule {
            Some(schedule) => rules.iter_mut().find(|r| r.schedule.as_ref().is_some_and(|s| s.name == schedule.name)),
            None => rules.iter_mut().find(|r| r.pattern.as_ref() == Some(&task.pattern_json)),
        };
        match shared {
            Some(shared) => shared.tasks.push(task.name.clone()),
            None => rules.push(Rule {
                name: task.schedule.as_ref().map_or_else(|| names::rule(fleet, &task.name), |s| s.name.clone()),
                tasks: vec![task.name.clone()],
                pattern: task.schedule.is_none().then(|| task.pattern_json.clone()),
                schedule: task.schedule.clone(),
            }),
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
    for rule in &rules {
        match rule.schedule.as_ref().filter(|s| s.timezone.is_some()) {
            Some(schedule) => {
                resources
                    .insert(format!("{}Schedule", logical_id(&rule.name)), scheduler_schedule(fleet, rule, schedule));
            }
            None => {
                resources.insert(format!("{}Rule", logical_id(&rule.name)), events_rule(fleet, rule));
            }
        }
    }
    if rules.iter().any(|r| r.schedule.as_ref().is_some_and(|s| s.timezone.is_some())) {
        resources.insert(SCHEDULER_ROLE.into(), scheduler_role(fleet));
    }
    for (n, topic) in config.fleet.alarm_topics.iter().enumerate() {
        let region = topic.split(':').nth(3).unwrap_or_default();
        resources.insert(
            format!("AlarmTopic{n}Subscription"),
            json!({ "Type": "AWS::SNS::Subscription", "Properties": {
                "TopicArn": topic, "Protocol": "sqs", "Endpoint": get_att(EVENTS_QUEUE, "Arn"), "Region": region,
                // What SNS cannot deliver lands in the events DLQ rather than nowhere.
                "RedrivePolicy": { "deadLetterTargetArn": get_att(EVENTS_DLQ, "Arn") },
            }}),
        );
    }
    resources.insert("FleetQueuesPolicy".into(), tls_only_policy(config));
    if let Some(policy) = event_bus_policy(config) {
        resources.insert("EventBusPolicy".into(), policy);
    }
    if let Some(policy) = events_queue_policy(config) {
        resources.insert("EventsQueuePolicy".into(), policy);
    }
    // What `opsfleet iam-policy` prints, as one managed policy or, past IAM's size, several
    // (`validate` refuses a config that would need more than a role takes).
    let policy_ids = managed_policies(&mut resources, TASK_POLICY, &catalog::policy(config, false), || {
        format!("opsfleet {fleet}: what `opsfleet iam-policy` prints for this config")
    });
    let router_policy_ids = managed_policies(&mut resources, ROUTER_POLICY, &catalog::router_policy(config), || {
        format!("opsfleet {fleet}: what `opsfleet iam-policy --router` prints for this config")
    });
    resources.insert(
        "RouterRole".into(),
        json!({ "Type": "AWS::IAM::Role", "Properties": {
            "Description": format!("opsfleet {fleet}: the routers' role, without the actions' writes"),
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "ecs-tasks.amazonaws.com" }, "Action": "sts:AssumeRole",
            }]},
            "ManagedPolicyArns": router_policy_ids.iter().map(|id| reference(id)).collect::<Vec<_>>(),
            "Tags": [{ "Key": "opsfleet:fleet", "Value": fleet }],
        }}),
    );
    resources.insert(
        "TaskRole".into(),
        json!({ "Type": "AWS::IAM::Role", "Properties": {
            "Description": format!("opsfleet {fleet}: the workers' role (and a router run with them)"),
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "ecs-tasks.amazonaws.com" }, "Action": "sts:AssumeRole",
            }]},
            "ManagedPolicyArns": policy_ids.iter().map(|id| reference(id)).collect::<Vec<_>>(),
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
            "RouterRoleArn": { "Value": get_att("RouterRole", "Arn"), "Export": { "Name": export(fleet, "router-role-arn") } },
            "TaskPolicyArn": { "Value": reference(TASK_POLICY), "Export": { "Name": export(fleet, "task-policy-arn") } },
            "TaskPolicyArns": {
                "Description": "Every part of the fleet's policy (one unless it is past IAM's size), for a role of your own",
                "Value": { "Fn::Join": [",", policy_ids.iter().map(|id| reference(id)).collect::<Vec<_>>()] },
            },
            "EventBusArn": {
                "Description": "The bus member accounts forward their events to (the member stack's FleetEventBusArn)",
                "Value": { "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default" },
            },
        },
    })
}

/// Adds a policy as managed policies `{base}`, `{base}2`…, one unless it is past IAM's size;
/// returns their logical ids.
fn managed_policies(
    resources: &mut Map<String, Value>,
    base: &str,
    policy: &Value,
    description: impl Fn() -> String,
) -> Vec<String> {
    let parts = catalog::split_policy(policy).unwrap_or_default();
    let ids: Vec<String> =
        (0..parts.len()).map(|n| if n == 0 { base.to_owned() } else { format!("{base}{}", n + 1) }).collect();
    for (n, document) in parts.into_iter().enumerate() {
        resources.insert(
            ids[n].clone(),
            json!({ "Type": "AWS::IAM::ManagedPolicy", "Properties": {
                "Description": format!("{} ({} of {})", description(), n + 1, ids.len()),
                "PolicyDocument": document,
            }}),
        );
    }
    ids
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
        "Tags": [{ "Key": "opsfleet:fleet", "Value": fleet }],
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
        "DeletionProtectionEnabled": true,
        "Tags": [{ "Key": "opsfleet:fleet", "Value": config.fleet.name }],
    }})
}

/// The default event bus admits the events member accounts forward: from every account of
/// `organization_id`, else from each of `allowed_accounts` (none listed: only this account's
/// own events, and no policy).
fn event_bus_policy(config: &Config) -> Option<Value> {
    let fleet = &config.fleet;
    let (principal, condition) = match (&fleet.organization_id, fleet.allowed_accounts.as_slice()) {
        (Some(organization), _) => {
            (json!("*"), Some(json!({ "StringEquals": { "aws:PrincipalOrgID": organization } })))
        }
        (None, []) => return None,
        (None, accounts) => (json!({ "AWS": accounts }), None),
    };
    let mut statement = json!({
        "Effect": "Allow",
        "Principal": principal,
        "Action": "events:PutEvents",
        "Resource": { "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default" },
    });
    if let Some(condition) = condition {
        statement["Condition"] = condition;
    }
    Some(json!({ "Type": "AWS::Events::EventBusPolicy", "Properties": {
        "EventBusName": "default",
        "StatementId": format!("opsfleet-{}-members", fleet.name),
        "Statement": statement,
    }}))
}

/// The events queue and its DLQ admit the fleet's rules, by their name's prefix `{fleet}.`
/// (which no other fleet's rule has, a fleet's name having no dot) so the policy's size does not
/// grow with the rules, and its alarm topics; and refuse every request not over TLS.
fn events_queue_policy(config: &Config) -> Option<Value> {
    let queues = json!([get_att(EVENTS_QUEUE, "Arn"), get_att(EVENTS_DLQ, "Arn")]);
    let send = |service: &str, condition: Value| {
        json!({
            "Sid": format!("From{}", if service.starts_with("events") { "FleetRules" } else { "AlarmTopics" }),
            "Effect": "Allow",
            "Principal": { "Service": service },
            "Action": "sqs:SendMessage",
            "Resource": queues,
            "Condition": condition,
        })
    };
    let mut statements = Vec::new();
    if !config.tasks.is_empty() {
        let rules = json!({ "Fn::Sub": format!(
            "arn:${{AWS::Partition}}:events:${{AWS::Region}}:${{AWS::AccountId}}:rule/{}", rule_prefix(&config.fleet.name)
        )});
        statements.push(send("events.amazonaws.com", json!({ "ArnLike": { "aws:SourceArn": rules } })));
    }
    if !config.fleet.alarm_topics.is_empty() {
        statements
            .push(send("sns.amazonaws.com", json!({ "ArnEquals": { "aws:SourceArn": config.fleet.alarm_topics } })));
    }
    statements.push(json!({
        "Sid": "TlsOnly",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": queues,
        "Condition": { "Bool": { "aws:SecureTransport": "false" } },
    }));
    Some(json!({ "Type": "AWS::SQS::QueuePolicy", "Properties": {
        "Queues": [reference(EVENTS_QUEUE), reference(EVENTS_DLQ)],
        "PolicyDocument": { "Version": "2012-10-17", "Statement": statements },
    }}))
}

/// Every queue but the events queue and its DLQ (whose own policy says as much) refuses
/// requests not over TLS. The resource names the fleet's queues by prefix: the policy is
/// attached to these queues only, so the prefix reaches no other fleet's.
fn tls_only_policy(config: &Config) -> Value {
    let fleet = &config.fleet.name;
    let queues: Vec<Value> = queue_specs(config)
        .iter()
        .filter(|q| q.name != names::events_queue(fleet) && q.name != names::events_dlq(fleet))
        .map(|q| reference(&queue_id(fleet, &q.name)))
        .collect();
    json!({ "Type": "AWS::SQS::QueuePolicy", "Properties": {
        "Queues": queues,
        "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:*",
            "Resource": { "Fn::Sub": format!("arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{fleet}-*") },
            "Condition": { "Bool": { "aws:SecureTransport": "false" } },
        }]},
    }})
}

/// The prefix of every rule and schedule name of a fleet, with a wildcard: `{fleet}.*`.
pub fn rule_prefix(fleet: &str) -> String {
    format!("{}*", names::rule(fleet, ""))
}

/// Where EventBridge and Scheduler retry a delivery, and put what they could not deliver: the
/// events DLQ, where `opsfleet dlq` shows it with the rest.
fn delivery_policy() -> (Value, Value) {
    (
        json!({ "MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86_400 }),
        json!({ "Arn": get_att(EVENTS_DLQ, "Arn") }),
    )
}

/// An EventBridge rule: the tasks' pattern, or a UTC schedule, sending to the events queue.
fn events_rule(fleet: &str, rule: &Rule) -> Value {
    let (retry, dead_letter) = delivery_policy();
    let mut properties = json!({
        "Name": rule.name,
        "Description": format!("opsfleet {fleet}: {}", rule.tasks.join(", ")),
        "State": "ENABLED",
        "Targets": [{
            "Arn": get_att(EVENTS_QUEUE, "Arn"), "Id": "opsfleet-events",
            "RetryPolicy": retry, "DeadLetterConfig": dead_letter,
        }],
    });
    if let Some(pattern) = &rule.pattern {
        properties["EventPattern"] = pattern.clone();
    }
    if let Some(schedule) = &rule.schedule {
        properties["ScheduleExpression"] = json!(schedule.expression);
    }
    json!({ "Type": "AWS::Events::Rule", "Properties": properties })
}

/// An EventBridge Scheduler schedule in a time zone, sending the events queue a
/// `Scheduled Event` shaped as EventBridge's, with `source` `aws.scheduler` and the
/// schedule's ARN as its resource.
fn scheduler_schedule(fleet: &str, rule: &Rule, schedule: &Schedule) -> Value {
    let (retry, dead_letter) = delivery_policy();
    let input = concat!(
        r#"{"version":"0","id":"<aws.scheduler.execution-id>","detail-type":"Scheduled Event","#,
        r#""source":"aws.scheduler","account":"${AWS::AccountId}","time":"<aws.scheduler.scheduled-time>","#,
        r#""region":"${AWS::Region}","resources":["<aws.scheduler.schedule-arn>"],"detail":{}}"#
    );
    json!({ "Type": "AWS::Scheduler::Schedule", "Properties": {
        "Name": rule.name,
        "GroupName": SCHEDULE_GROUP,
        "Description": format!("opsfleet {fleet}: {}", rule.tasks.join(", ")),
        "State": "ENABLED",
        "ScheduleExpression": schedule.expression,
        "ScheduleExpressionTimezone": schedule.timezone,
        "FlexibleTimeWindow": { "Mode": "OFF" },
        "Target": {
            "Arn": get_att(EVENTS_QUEUE, "Arn"),
            "RoleArn": get_att(SCHEDULER_ROLE, "Arn"),
            "Input": { "Fn::Sub": input },
            "RetryPolicy": { "MaximumRetryAttempts": retry["MaximumRetryAttempts"], "MaximumEventAgeInSeconds": retry["MaximumEventAgeInSeconds"] },
            "DeadLetterConfig": dead_letter,
        },
    }})
}

/// The role Scheduler sends the fleet's scheduled events with: to the events queue and its DLQ
/// only, and only for this account's schedules.
fn scheduler_role(fleet: &str) -> Value {
    json!({ "Type": "AWS::IAM::Role", "Properties": {
        "Description": format!("opsfleet {fleet}: EventBridge Scheduler sends the fleet's scheduled events"),
        "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": { "Service": "scheduler.amazonaws.com" }, "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "aws:SourceAccount": reference("AWS::AccountId") } },
        }]},
        "Policies": [{ "PolicyName": "send-events", "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sqs:SendMessage",
            "Resource": [get_att(EVENTS_QUEUE, "Arn"), get_att(EVENTS_DLQ, "Arn")],
        }]}}],
    }})
}
