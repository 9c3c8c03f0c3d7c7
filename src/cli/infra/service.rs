//! `opsfleet-service.yaml`: the router and the workers as ECS Fargate services, the workers
//! scaled on the fleet's job backlog (target tracking per running worker, and a step policy
//! that wakes the first worker from zero).

use super::alarms::HAS_ALARM_TOPIC;
use super::core::export;
use super::{get_att, reference, METRICS_PORT};
use opsfleet_protocol::Config;
use opsfleet_worker::sampler::{EMF_METRIC, EMF_NAMESPACE_ENV};
use serde_json::{json, Map, Value};

/// The condition that `LogKmsKeyArn` is set.
const HAS_LOG_KEY: &str = "HasLogKey";

/// Where the image holds the fleet's config.
pub const CONFIG_PATH: &str = "/etc/opsfleet/fleet.toml";

/// Fargate's longest `stopTimeout`, in seconds.
const FARGATE_MAX_STOP_TIMEOUT: u32 = 120;

/// How long ECS waits after SIGTERM before SIGKILL: the worker's shutdown grace and a margin
/// for releasing what it holds, within Fargate's 120 s.
pub fn stop_timeout(config: &Config) -> u32 {
    (config.worker.shutdown_grace_secs + 10).min(FARGATE_MAX_STOP_TIMEOUT)
}

/// The service stack of a config.
pub fn service_template(config: &Config) -> Value {
    let fleet = &config.fleet.name;
    let mut resources = Map::new();
    resources.insert(
        "Cluster".into(),
        json!({ "Type": "AWS::ECS::Cluster", "Properties": {
            "ClusterName": fleet,
            // Container Insights publishes RunningTaskCount, the divisor of backlog per worker.
            "ClusterSettings": [{ "Name": "containerInsights", "Value": "enabled" }],
            "Tags": [{ "Key": "opsfleet:fleet", "Value": fleet }],
        }}),
    );
    resources.insert(
        "LogGroup".into(),
        json!({ "Type": "AWS::Logs::LogGroup", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain", "Properties": {
            "LogGroupName": format!("/opsfleet/{fleet}"),
            "RetentionInDays": reference("LogRetentionDays"),
            "KmsKeyId": { "Fn::If": [HAS_LOG_KEY, reference("LogKmsKeyArn"), reference("AWS::NoValue")] },
        }}),
    );
    resources.insert(
        "ExecutionRole".into(),
        json!({ "Type": "AWS::IAM::Role", "Properties": {
            "AssumeRolePolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": { "Service": "ecs-tasks.amazonaws.com" }, "Action": "sts:AssumeRole",
            }]},
            "ManagedPolicyArns": [{ "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy" }],
        }}),
    );
    resources.insert("RouterTaskDefinition".into(), task_definition(config, "router", "256", "512", 30));
    resources
        .insert("WorkerTaskDefinition".into(), task_definition(config, "worker", "512", "1024", stop_timeout(config)));
    resources.insert("RouterService".into(), service("router", "RouterTaskDefinition", Some(reference("RouterCount"))));
    // No DesiredCount: CloudFormation would set it back on every update (a new image) and undo
    // the autoscaler; the first deploy starts at ECS's default of one, and the scalable
    // target's minimum raises it to WorkerMinCount.
    resources.insert("WorkerService".into(), service("worker", "WorkerTaskDefinition", None));
    resources.insert(
        "WorkerScalableTarget".into(),
        json!({ "Type": "AWS::ApplicationAutoScaling::ScalableTarget", "Properties": {
            "ServiceNamespace": "ecs",
            "ScalableDimension": "ecs:service:DesiredCount",
            "ResourceId": { "Fn::Join": ["/", ["service", reference("Cluster"), get_att("WorkerService", "Name")]] },
            "MinCapacity": reference("WorkerMinCount"),
            "MaxCapacity": reference("WorkerMaxCount"),
        }}),
    );
    resources.insert("WorkerScalingPolicy".into(), scaling_policy(config));
    resources.insert("WorkerWakePolicy".into(), wake_policy(config));
    resources.insert("WorkerWakeAlarm".into(), wake_alarm(config));
    resources.extend(super::alarms::alarms(config));
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "opsfleet {fleet}: router and workers on ECS Fargate, workers scaled on backlog per worker \
             (rendered by `opsfleet infra render`; deploy opsfleet-core.yaml first)"
        ),
        "Parameters": {
            "Image": { "Type": "String", "Description": format!("The opsfleet image, built with this config at {CONFIG_PATH}") },
            "Subnets": { "Type": "List<AWS::EC2::Subnet::Id>", "Description": "Subnets of the tasks (with a route to the AWS APIs)" },
            "SecurityGroups": { "Type": "List<AWS::EC2::SecurityGroup::Id>", "Description": "Security groups of the tasks (egress to the AWS APIs; ingress on the metrics port for Prometheus)" },
            "AssignPublicIp": { "Type": "String", "AllowedValues": ["ENABLED", "DISABLED"], "Default": "DISABLED" },
            "RouterCount": { "Type": "Number", "MinValue": 1, "Default": 1, "Description": "Routers (each polls the events queue; one handles thousands of events per second)" },
            "WorkerMinCount": { "Type": "Number", "MinValue": 0, "Default": 1, "Description": "The fewest workers (0: none while no job waits; the first job then waits a minute or two for one to start)" },
            "WorkerMaxCount": { "Type": "Number", "MinValue": 1, "Default": 20, "Description": "The most workers" },
            "LogRetentionDays": {
                "Type": "Number", "Default": 30,
                "AllowedValues": [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653],
                "Description": "How long the fleet's logs are kept (the log group itself is kept when the stack is deleted)",
            },
            "LogKmsKeyArn": {
                "Type": "String", "Default": "",
                "Description": "A KMS key to encrypt the logs with (its policy must let CloudWatch Logs use it; empty: CloudWatch's own encryption)",
            },
            "AlarmTopicArn": {
                "Type": "String", "Default": "",
                "Description": "The SNS topic the CloudWatch alarms notify (empty: the alarms only show in the console)",
            },
            "BacklogPerWorkerTarget": {
                "Type": "Number", "MinValue": 1, "Default": config.worker.max_in_flight.get(),
                "Description": "Job messages (visible or in flight) per running worker that target tracking holds: \
                                the jobs one worker handles at once, plus those you accept queued behind them. \
                                The default is one worker's max_in_flight.",
            },
        },
        "Conditions": {
            HAS_ALARM_TOPIC: { "Fn::Not": [{ "Fn::Equals": [reference("AlarmTopicArn"), ""] }] },
            HAS_LOG_KEY: { "Fn::Not": [{ "Fn::Equals": [reference("LogKmsKeyArn"), ""] }] },
        },
        "Resources": resources,
        "Outputs": {
            "ClusterName": { "Value": reference("Cluster") },
            "WorkerServiceName": { "Value": get_att("WorkerService", "Name") },
        },
    })
}

/// The task definition of `role` (`router` or `worker`): the image's opsfleet with the
/// fleet's role, JSON logs, metrics on [`METRICS_PORT`] and a health check on them.
fn task_definition(config: &Config, role: &str, cpu: &str, memory: &str, stop_timeout: u32) -> Value {
    let fleet = &config.fleet.name;
    json!({ "Type": "AWS::ECS::TaskDefinition", "Properties": {
        "Family": format!("{fleet}-{role}"),
        "Cpu": cpu,
        "Memory": memory,
        "NetworkMode": "awsvpc",
        "RequiresCompatibilities": ["FARGATE"],
        "RuntimePlatform": { "CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX" },
        "TaskRoleArn": { "Fn::ImportValue": export(fleet, if role == "router" { "router-role-arn" } else { "task-role-arn" }) },
        "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
        "ContainerDefinitions": [{
            "Name": role,
            "Image": reference("Image"),
            "Essential": true,
            "Command": [role, "--config", CONFIG_PATH, "--metrics-addr", format!("0.0.0.0:{METRICS_PORT}")],
            "Environment": [
                { "Name": "OPSFLEET_LOG_FORMAT", "Value": "json" },
                { "Name": EMF_NAMESPACE_ENV, "Value": EMF_NAMESPACE },
            ],
            "PortMappings": [{ "ContainerPort": METRICS_PORT, "Protocol": "tcp" }],
            "StopTimeout": stop_timeout,
            "HealthCheck": {
                "Command": ["CMD", "/usr/local/bin/opsfleet", "healthcheck", "--address", format!("127.0.0.1:{METRICS_PORT}")],
                "Interval": 30, "Timeout": 5, "Retries": 3, "StartPeriod": 60,
            },
            "LogConfiguration": { "LogDriver": "awslogs", "Options": {
                "awslogs-group": reference("LogGroup"),
                "awslogs-region": reference("AWS::Region"),
                "awslogs-stream-prefix": role,
            }},
        }],
    }})
}

/// An ECS Fargate service: rolling deploys that start new tasks before stopping old ones. A
/// service the autoscaler sizes has no `count`.
fn service(role: &str, task_definition: &str, count: Option<Value>) -> Value {
    let mut service = json!({ "Type": "AWS::ECS::Service", "Properties": {
        "ServiceName": role,
        "Cluster": reference("Cluster"),
        "LaunchType": "FARGATE",
        "TaskDefinition": reference(task_definition),
        "DeploymentConfiguration": {
            "MinimumHealthyPercent": 100, "MaximumPercent": 200,
            "DeploymentCircuitBreaker": { "Enable": true, "Rollback": true },
        },
        "NetworkConfiguration": { "AwsvpcConfiguration": {
            "Subnets": reference("Subnets"), "SecurityGroups": reference("SecurityGroups"), "AssignPublicIp": reference("AssignPublicIp"),
        }},
    }});
    if let Some(count) = count {
        service["Properties"]["DesiredCount"] = count;
    }
    service
}

/// The CloudWatch namespace the fleet's sampler writes the backlog to (embedded metric format
/// on stdout, extracted by CloudWatch Logs from the tasks' log stream).
pub const EMF_NAMESPACE: &str = "opsfleet";

/// The metric math both scaling policies read: the backlog the sampler (a router or a worker)
/// writes, and the running workers (Container Insights; none reported reads as zero). Two
/// metrics whatever the partition count, within target tracking's ten.
fn backlog_and_workers(config: &Config, stat_period: Option<u32>) -> Vec<Value> {
    let stat = |metric: Value, stat: &str| match stat_period {
        Some(period) => json!({ "Stat": stat, "Metric": metric, "Period": period }),
        None => json!({ "Stat": stat, "Metric": metric }),
    };
    vec![
        json!({
            "Id": "backlog",
            "ReturnData": false,
            "MetricStat": stat(json!({
                "Namespace": EMF_NAMESPACE, "MetricName": EMF_METRIC,
                "Dimensions": [{ "Name": "Fleet", "Value": config.fleet.name }],
            }), "Maximum"),
        }),
        json!({
            "Id": "workers",
            "ReturnData": false,
            "MetricStat": stat(json!({
                "Namespace": "ECS/ContainerInsights", "MetricName": "RunningTaskCount",
                "Dimensions": [
                    { "Name": "ClusterName", "Value": reference("Cluster") },
                    { "Name": "ServiceName", "Value": get_att("WorkerService", "Name") },
                ],
            }), "Average"),
        }),
    ]
}

/// The metric-math expression a policy or an alarm reads, over [`backlog_and_workers`].
fn expression(id: &str, label: &str, expression: &str) -> Value {
    json!({ "Id": id, "Label": label, "Expression": expression, "ReturnData": true })
}

/// Target tracking on backlog per running worker, held at `BacklogPerWorkerTarget`: the
/// desired count follows the backlog (⌈backlog ÷ target⌉), not the workers' own reports.
fn scaling_policy(config: &Config) -> Value {
    let fleet = &config.fleet.name;
    let mut metrics = backlog_and_workers(config, None);
    metrics.push(expression(
        "backlog_per_worker",
        "Job messages per running worker",
        "IF(FILL(workers, 0) > 0, backlog / FILL(workers, 0), backlog)",
    ));
    json!({ "Type": "AWS::ApplicationAutoScaling::ScalingPolicy", "Properties": {
        "PolicyName": format!("{fleet}-backlog-per-worker"),
        "PolicyType": "TargetTrackingScaling",
        "ScalingTargetId": reference("WorkerScalableTarget"),
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": reference("BacklogPerWorkerTarget"),
            // Out fast, in slowly: a worker stopped drains within its grace, then its jobs go elsewhere.
            "ScaleOutCooldown": 60,
            "ScaleInCooldown": 300,
            "CustomizedMetricSpecification": { "Metrics": metrics },
        },
    }})
}

/// Target tracking multiplies the running count, so it cannot leave zero: this step policy
/// starts one worker when jobs wait and none runs, and target tracking takes it from there.
fn wake_policy(config: &Config) -> Value {
    json!({ "Type": "AWS::ApplicationAutoScaling::ScalingPolicy", "Properties": {
        "PolicyName": format!("{}-wake-from-zero", config.fleet.name),
        "PolicyType": "StepScaling",
        "ScalingTargetId": reference("WorkerScalableTarget"),
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ExactCapacity",
            "Cooldown": 60,
            "StepAdjustments": [{ "MetricIntervalLowerBound": 0, "ScalingAdjustment": 1 }],
        },
    }})
}

/// The alarm that fires the wake policy: jobs waiting while no worker runs, over one minute.
fn wake_alarm(config: &Config) -> Value {
    let mut metrics = backlog_and_workers(config, Some(60));
    metrics.push(expression(
        "waiting_without_workers",
        "Jobs waiting while no worker runs",
        "IF(FILL(workers, 0) < 1 AND backlog > 0, 1, 0)",
    ));
    json!({ "Type": "AWS::CloudWatch::Alarm", "Properties": {
        "AlarmDescription": format!("opsfleet {}: jobs wait and no worker runs; starts one", config.fleet.name),
        "Metrics": metrics,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "Threshold": 1,
        "EvaluationPeriods": 1,
        "TreatMissingData": "notBreaching",
        "AlarmActions": [reference("WorkerWakePolicy")],
    }})
}
