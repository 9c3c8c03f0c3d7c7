//! `opsfleet-service.yaml`: the router and the workers as ECS Fargate services, the workers
//! scaled by target tracking on backlog per worker.

use super::core::export;
use super::{get_att, reference, METRICS_PORT};
use opsfleet_protocol::{names, Config};
use serde_json::{json, Map, Value};

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
        }}),
    );
    resources.insert(
        "LogGroup".into(),
        json!({ "Type": "AWS::Logs::LogGroup", "Properties": { "LogGroupName": format!("/opsfleet/{fleet}"), "RetentionInDays": 30 } }),
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
            "WorkerMinCount": { "Type": "Number", "MinValue": 1, "Default": 1, "Description": "The fewest workers" },
            "WorkerMaxCount": { "Type": "Number", "MinValue": 1, "Default": 20, "Description": "The most workers" },
            "BacklogPerWorkerTarget": {
                "Type": "Number", "MinValue": 1, "Default": config.worker.max_in_flight.get(),
                "Description": "Visible job messages per worker that target tracking holds: the jobs a worker may have queued \
                                = the queue wait you accept (s) x the jobs per second one worker finishes. \
                                The default is one worker's max_in_flight.",
            },
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
        "TaskRoleArn": { "Fn::ImportValue": export(fleet, "task-role-arn") },
        "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
        "ContainerDefinitions": [{
            "Name": role,
            "Image": reference("Image"),
            "Essential": true,
            "Command": [role, "--config", CONFIG_PATH, "--metrics-addr", format!("0.0.0.0:{METRICS_PORT}")],
            "Environment": [{ "Name": "OPSFLEET_LOG_FORMAT", "Value": "json" }],
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

/// Target tracking on backlog per worker: the partitions' visible job messages (SQS) divided
/// by the running workers (Container Insights), held at `BacklogPerWorkerTarget`.
fn scaling_policy(config: &Config) -> Value {
    let fleet = &config.fleet.name;
    let mut metrics = Vec::new();
    let mut sum = Vec::new();
    for p in 0..config.fleet.partitions.get() {
        let id = format!("jobs{p}");
        metrics.push(json!({
            "Id": id,
            "ReturnData": false,
            "MetricStat": { "Stat": "Sum", "Metric": {
                "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [{ "Name": "QueueName", "Value": names::jobs_queue(fleet, p) }],
            }},
        }));
        sum.push(id);
    }
    metrics.push(json!({
        "Id": "workers",
        "ReturnData": false,
        "MetricStat": { "Stat": "Average", "Metric": {
            "Namespace": "ECS/ContainerInsights", "MetricName": "RunningTaskCount",
            "Dimensions": [
                { "Name": "ClusterName", "Value": reference("Cluster") },
                { "Name": "ServiceName", "Value": get_att("WorkerService", "Name") },
            ],
        }},
    }));
    metrics.push(json!({
        "Id": "backlog_per_worker",
        "Label": "Visible job messages per running worker",
        "Expression": format!("({}) / workers", sum.join(" + ")),
        "ReturnData": true,
    }));
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
