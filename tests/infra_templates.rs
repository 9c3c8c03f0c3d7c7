//! `opsfleet infra render` and the deployment files: the templates name what `setup` creates
//! and grant what `iam-policy` prints, pass `cfn-lint`; the Kubernetes manifests validate
//! against their schemas and the KEDA scaler reads a metric the fleet exports; the Dockerfile
//! builds a small non-root image.

mod support;

use opsfleet_protocol::ports::INDEXES;
use opsfleet_protocol::{names, Config};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::{opsfleet_offline, root};
use yaml_rust2::{Yaml, YamlLoader};

/// A config with every input the templates read: shared and string patterns, a UTC schedule, a
/// shared schedule in a time zone,
/// alarm topics, a member role with a path and an external id.
const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 3
member_role = "arn:aws:iam::{account}:role/ops/OpsFleetMember"
external_id = "do-not-print-1234"
allowed_accounts = ["111122223333", "444455556666"]
alarm_topics = ["arn:aws:sns:us-east-1:123456789012:FLEET-alarms"]

[worker]
shutdown_grace_secs = 40

[[tasks]]
name = "snapshot-stopped"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "ebs-snapshot"

[[tasks]]
name = "tell-stopped"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "notify"
params = { topic_arn = "arn:aws:sns:us-east-1:123456789012:FLEET-oncall" }

[[tasks]]
name = "reboot-on-alarm"
pattern = '''{"detail-type": ["CloudWatch Alarm State Change"], "detail": {"state": {"value": ["ALARM"]}, "alarmName": [{"prefix": "cpu-"}]}}'''
targets = "event"
action = "instance-power"
params = { operation = "reboot" }

[[tasks]]
name = "nightly-retention"
schedule = "cron(0 3 * * ? *)"
targets = { type = "ec2:volume", tags = { Backup = "nightly" } }
action = "snapshot-retention"
params = { keep = 7 }

[[tasks]]
name = "nightly-image"
schedule = { name = "nightly", expression = "cron(0 2 * * ? *)", timezone = "Europe/Paris" }
targets = { type = "ec2:instance", tags = { Backup = "nightly" } }
action = "ami-create"
params = { name = "nightly-{id}-{date}" }

[[tasks]]
name = "nightly-copy"
schedule = { name = "nightly", expression = "cron(0 2 * * ? *)", timezone = "Europe/Paris" }
targets = { type = "ec2:volume", tags = { Backup = "nightly" } }
action = "ebs-snapshot"
"#;

/// Renders a config into a fresh directory; returns the directory.
fn render(config: &Path, name: &str) -> PathBuf {
    let out = root().join("target/e2e").join(format!("render-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let run = opsfleet_offline(&["infra", "render", "--config", config.to_str().unwrap_or_default(), "--out"])
        .arg(&out)
        .output()
        .expect("render");
    assert!(run.status.success(), "render: {}", String::from_utf8_lossy(&run.stderr));
    let listed = String::from_utf8_lossy(&run.stdout).lines().count();
    assert_eq!(listed, 3, "render lists the three templates it wrote");
    out
}

/// A YAML document as JSON.
fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    json_of(&docs[0])
}

fn json_of(node: &Yaml) -> Value {
    match node {
        Yaml::Boolean(b) => json!(b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::String(s) => json!(s),
        Yaml::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        Yaml::Hash(hash) => {
            Value::Object(hash.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), json_of(v))).collect())
        }
        _ => Value::Null,
    }
}

fn stdout_json(args: &[&str]) -> Value {
    let out = opsfleet_offline(args).output().expect("opsfleet");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    template["Resources"].as_object().map(|r| r.iter().filter(|(_, v)| v["Type"] == kind).collect()).unwrap_or_default()
}

#[test]
fn the_templates_follow_the_config() {
    let fleet = support::unique_fleet("infra");
    let path = support::write_config(&fleet, CONFIG);
    let config = Config::parse(&std::fs::read_to_string(&path).expect("config"), None).expect("valid");
    let out = render(&path, &fleet);
    let core = load(&out.join("opsfleet-core.yaml"));
    let service = load(&out.join("opsfleet-service.yaml"));
    let member = load(&out.join("member-role.yaml"));

    // The queues and the table, named as `opsfleet setup` names them.
    let mut queues: Vec<&str> =
        of_type(&core, "AWS::SQS::Queue").iter().filter_map(|(_, q)| q["Properties"]["QueueName"].as_str()).collect();
    let mut expected: Vec<String> =
        opsfleet_protocol::setup::queue_specs(&config).into_iter().map(|s| s.name).collect();
    queues.sort_unstable();
    expected.sort_unstable();
    assert_eq!(queues, expected);
    for (_, queue) in of_type(&core, "AWS::SQS::Queue") {
        let p = &queue["Properties"];
        assert_eq!(p["SqsManagedSseEnabled"], true, "{queue}");
        let fifo = p["QueueName"].as_str().is_some_and(|n| n.ends_with(".fifo"));
        assert_eq!(p["FifoQueue"] == true && p["FifoThroughputLimit"] == "perMessageGroupId", fifo, "{queue}");
    }
    let table = &of_type(&core, "AWS::DynamoDB::Table")[0].1["Properties"];
    assert_eq!(table["TableName"], names::table(&fleet));
    let indexes: Vec<&str> = table["GlobalSecondaryIndexes"]
        .as_array()
        .expect("GSIs")
        .iter()
        .filter_map(|i| i["IndexName"].as_str())
        .collect();
    assert_eq!(indexes, INDEXES.map(|i| i.name));
    assert_eq!(table["TimeToLiveSpecification"], json!({ "AttributeName": "expires_at", "Enabled": true }));
    assert_eq!(table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true);
    assert_eq!(table["SSESpecification"]["SSEEnabled"], true);

    // One rule per distinct pattern, exactly as the tasks have it, and one per UTC schedule; a
    // schedule in a time zone is a Scheduler schedule, one for the two tasks sharing it.
    let rules = of_type(&core, "AWS::Events::Rule");
    let schedules = of_type(&core, "AWS::Scheduler::Schedule");
    assert_eq!((rules.len(), schedules.len()), (3, 1), "{rules:#?} {schedules:#?}");
    for task in &config.tasks {
        let fed: Vec<_> = rules
            .iter()
            .chain(&schedules)
            .filter(|(_, r)| r["Properties"]["Description"].as_str().is_some_and(|d| d.contains(&task.name)))
            .collect();
        assert_eq!(fed.len(), 1, "{} is fed by one rule or schedule", task.name);
        let p = &fed[0].1["Properties"];
        match &task.schedule {
            Some(schedule) => {
                assert_eq!(p["ScheduleExpression"], json!(schedule.expression));
                assert_eq!(p["Name"], json!(schedule.name));
                assert_eq!(p.get("ScheduleExpressionTimezone"), schedule.timezone.as_ref().map(|z| json!(z)).as_ref());
            }
            None => assert_eq!(p["EventPattern"], task.pattern_json, "{}", task.name),
        }
        // Every delivery is retried, then dead-lettered to the events DLQ.
        let target = if p["Targets"].is_array() { &p["Targets"][0] } else { &p["Target"] };
        assert_eq!(
            target["DeadLetterConfig"]["Arn"],
            json!({ "Fn::GetAtt": ["EventsDlqQueue", "Arn"] }),
            "{}",
            task.name
        );
        assert!(target["RetryPolicy"]["MaximumRetryAttempts"].as_u64().is_some_and(|n| n > 0), "{}", task.name);
    }
    let scheduled = &schedules[0].1["Properties"];
    assert_eq!(scheduled["Name"], format!("{fleet}.nightly"));
    assert!(
        scheduled["Description"].as_str().is_some_and(|d| d.ends_with("nightly-image, nightly-copy")),
        "{scheduled}"
    );
    // Scheduler sends what the tasks' pattern matches: its input, with the placeholders filled
    // as Scheduler and CloudFormation fill them, is an event both tasks match.
    let input = scheduled["Target"]["Input"]["Fn::Sub"].as_str().expect("input");
    let filled = input
        .replace("${AWS::AccountId}", "111122223333")
        .replace("${AWS::Region}", "eu-west-1")
        .replace("<aws.scheduler.execution-id>", "d0a8c1b2")
        .replace("<aws.scheduler.scheduled-time>", "2026-03-29T00:00:00Z")
        .replace(
            "<aws.scheduler.schedule-arn>",
            &format!("arn:aws:scheduler:eu-west-1:111122223333:schedule/default/{fleet}.nightly"),
        );
    let event: serde_json::Map<String, Value> = serde_json::from_str(&filled).expect("the input is JSON");
    let matched: Vec<&str> =
        config.tasks.iter().filter(|t| t.pattern.matches(&event)).map(|t| t.name.as_str()).collect();
    assert_eq!(matched, ["nightly-image", "nightly-copy"]);
    let role = &core["Resources"]["SchedulerRole"]["Properties"];
    assert_eq!(scheduled["Target"]["RoleArn"], json!({ "Fn::GetAtt": ["SchedulerRole", "Arn"] }));
    assert_eq!(role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"], "scheduler.amazonaws.com");
    assert_eq!(role["Policies"][0]["PolicyDocument"]["Statement"][0]["Action"], "sqs:SendMessage");
    assert_eq!(
        rules
            .iter()
            .filter(|(_, r)| r["Properties"]["Description"]
                .as_str()
                .is_some_and(|d| d.contains("snapshot-stopped, tell-stopped")))
            .count(),
        1
    );
    // The events queue and its DLQ admit the fleet's rules by their names' prefix (its size does
    // not grow with them) and the alarm topics, which it is subscribed to; only over TLS.
    let policy = &of_type(&core, "AWS::SQS::QueuePolicy")[0].1["Properties"]["PolicyDocument"]["Statement"];
    let statements = policy.as_array().expect("statements");
    assert_eq!(
        statements[0]["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"],
        format!("arn:${{AWS::Partition}}:events:${{AWS::Region}}:${{AWS::AccountId}}:rule/{fleet}.*")
    );
    assert_eq!(statements[1]["Condition"]["ArnEquals"]["aws:SourceArn"], json!(config.fleet.alarm_topics));
    assert_eq!(
        (&statements[2]["Effect"], &statements[2]["Condition"]["Bool"]["aws:SecureTransport"]),
        (&json!("Deny"), &json!("false"))
    );
    // Every other queue refuses requests not over TLS.
    let others = &core["Resources"]["FleetQueuesPolicy"]["Properties"];
    assert_eq!(others["Queues"].as_array().map(Vec::len), Some(expected.len() - 2), "{others}");
    assert_eq!(others["PolicyDocument"]["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"], "false");
    for rule in &rules {
        assert!(rule.1["Properties"]["Name"].as_str().is_some_and(|n| n.starts_with(&format!("{fleet}."))), "{rule:?}");
    }
    let subscriptions = of_type(&core, "AWS::SNS::Subscription");
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0].1["Properties"]["TopicArn"], json!(config.fleet.alarm_topics[0]));
    assert_eq!(
        subscriptions[0].1["Properties"]["RedrivePolicy"]["deadLetterTargetArn"],
        json!({ "Fn::GetAtt": ["EventsDlqQueue", "Arn"] })
    );

    // What lives in the table rather than in a resource is written down beside them.
    let meta = &core["Metadata"]["opsfleet"];
    assert_eq!(meta["partitions"], 3);
    assert_eq!(meta["notify_topics"], json!([format!("arn:aws:sns:us-east-1:123456789012:{fleet}-oncall")]));
    let limits: Vec<&String> = meta["limits"].as_object().map(|l| l.keys().collect()).unwrap_or_default();
    assert_eq!(limits, config.limits.keys().collect::<Vec<_>>());

    // The role's policy is exactly what `iam-policy` prints; the member role's too.
    let config_arg = path.to_str().unwrap_or_default();
    let printed = stdout_json(&["iam-policy", "--config", config_arg]);
    assert_eq!(core["Resources"]["TaskPolicy"]["Properties"]["PolicyDocument"], printed);
    // The routers' role: what `iam-policy --router` prints, and none of the actions' writes.
    let printed = stdout_json(&["iam-policy", "--config", config_arg, "--router"]);
    assert_eq!(core["Resources"]["RouterPolicy"]["Properties"]["PolicyDocument"], printed);
    let router_actions = printed["Statement"].to_string();
    for write in ["ec2:CreateSnapshot", "ec2:RebootInstances", "ec2:CreateImage", "sns:Publish", "ec2:DeleteSnapshot"] {
        assert!(!router_actions.contains(write), "the routers' role holds {write}");
    }
    assert!(router_actions.contains("sqs:ReceiveMessage") && router_actions.contains("sts:AssumeRole"));
    let fleet_role = "arn:aws:iam::111111111111:role/opsfleet-task";
    let printed = stdout_json(&["iam-policy", "--config", config_arg, "--member", "--fleet-role", fleet_role]);
    let role = &member["Resources"]["MemberRole"]["Properties"];
    assert_eq!(role["ManagedPolicyArns"], json!([{ "Ref": "MemberPolicy" }]));
    assert_eq!(member["Resources"]["MemberPolicy"]["Properties"]["PolicyDocument"], printed["Policy"]);
    assert_eq!((&role["RoleName"], &role["Path"]), (&json!("OpsFleetMember"), &json!("/ops/")));
    assert_eq!(
        role["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        json!({ "Ref": "ExternalId" })
    );

    // Member accounts' events reach the fleet: the bus admits the allowed accounts, and the
    // member stack forwards what each distinct task pattern matches (no schedule: those fire
    // here) to the bus the core stack names, except in the fleet's own account.
    let bus = &core["Resources"]["EventBusPolicy"]["Properties"];
    assert_eq!(bus["Statement"]["Principal"], json!({ "AWS": ["111122223333", "444455556666"] }));
    assert_eq!(bus["Statement"]["Action"], "events:PutEvents");
    assert!(core["Outputs"]["EventBusArn"]["Value"]["Fn::Sub"]
        .as_str()
        .is_some_and(|a| a.ends_with(":event-bus/default")));
    let forwards = of_type(&member, "AWS::Events::Rule");
    let patterns: Vec<&Value> = rules.iter().filter_map(|(_, r)| r["Properties"].get("EventPattern")).collect();
    assert_eq!(forwards.len(), patterns.len(), "one forwarding rule per distinct pattern");
    for (_, forward) in &forwards {
        let p = &forward["Properties"];
        assert!(patterns.contains(&&p["EventPattern"]), "{p}");
        assert_eq!(p["Targets"][0]["Arn"], json!({ "Ref": "FleetEventBusArn" }));
        assert_eq!(p["Targets"][0]["RoleArn"], json!({ "Fn::GetAtt": ["ForwardRole", "Arn"] }));
        assert_eq!(forward["Condition"], "Forward");
    }
    assert_eq!(member["Resources"]["MemberRole"]["Condition"], "CreateRole", "IAM holds the role once per account");
    let forward_role =
        &member["Resources"]["ForwardRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0];
    assert_eq!(
        (&forward_role["Action"], &forward_role["Resource"]),
        (&json!("events:PutEvents"), &json!({ "Ref": "FleetEventBusArn" }))
    );
    // With an organization, the bus admits its accounts instead.
    let organization = support::write_config(
        &format!("{fleet}-org"),
        &CONFIG
            .replace("allowed_accounts = [\"111122223333\", \"444455556666\"]", "organization_id = \"o-a1b2c3d4e5\""),
    );
    let org_core = load(&render(&organization, &format!("{fleet}-org")).join("opsfleet-core.yaml"));
    let statement = &org_core["Resources"]["EventBusPolicy"]["Properties"]["Statement"];
    assert_eq!(statement["Principal"], "*");
    assert_eq!(statement["Condition"]["StringEquals"]["aws:PrincipalOrgID"], "o-a1b2c3d4e5");

    // The services run on the core stack's role, stop after the grace, and scale on backlog.
    let tasks = of_type(&service, "AWS::ECS::TaskDefinition");
    for (id, output) in [("WorkerTaskDefinition", "TaskRoleArn"), ("RouterTaskDefinition", "RouterRoleArn")] {
        let import = json!({ "Fn::ImportValue": core["Outputs"][output]["Export"]["Name"] });
        assert_eq!(service["Resources"][id]["Properties"]["TaskRoleArn"], import, "{id}");
    }
    // An update (a new image) leaves the autoscaled worker count alone: no DesiredCount.
    assert!(service["Resources"]["WorkerService"]["Properties"].get("DesiredCount").is_none());
    assert_eq!(service["Resources"]["RouterService"]["Properties"]["DesiredCount"], json!({ "Ref": "RouterCount" }));
    let worker = &service["Resources"]["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    assert!(worker["StopTimeout"].as_u64().is_some_and(|t| t > 40 && t <= 120), "{worker}");
    // Scaling reads one backlog metric the sampler writes (routers too), whatever the
    // partition count: within target tracking's ten metrics, and awake from zero.
    let spec = &service["Resources"]["WorkerScalingPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"];
    let metrics = spec["CustomizedMetricSpecification"]["Metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 3, "{metrics:?}");
    let backlog = &metrics[0]["MetricStat"]["Metric"];
    assert_eq!((&backlog["Namespace"], &backlog["MetricName"]), (&json!("opsfleet"), &json!("JobsBacklog")));
    assert_eq!(backlog["Dimensions"], json!([{ "Name": "Fleet", "Value": fleet }]));
    for (_, definition) in &tasks {
        let env = &definition["Properties"]["ContainerDefinitions"][0]["Environment"];
        assert!(env
            .as_array()
            .is_some_and(|e| e.contains(&json!({ "Name": "OPSFLEET_EMF_NAMESPACE", "Value": "opsfleet" }))));
    }
    assert_eq!(service["Parameters"]["WorkerMinCount"]["MinValue"], 0);
    let wake = &service["Resources"]["WorkerWakeAlarm"]["Properties"];
    assert_eq!(wake["AlarmActions"], json!([{ "Ref": "WorkerWakePolicy" }]));
    assert!(wake["Metrics"].to_string().contains("JobsBacklog"));
    let step = &service["Resources"]["WorkerWakePolicy"]["Properties"]["StepScalingPolicyConfiguration"];
    assert_eq!(
        (&step["AdjustmentType"], &step["StepAdjustments"][0]["ScalingAdjustment"]),
        (&json!("ExactCapacity"), &json!(1))
    );

    // CloudWatch alarms for a fleet without Prometheus, to the alarm topic when given: every
    // DLQ, the events queue's age, each rule's failed deliveries, Scheduler's drops, and the
    // scaling signal gone (missing data is the alarm).
    let alarms = of_type(&service, "AWS::CloudWatch::Alarm");
    let on = |metric: &str| alarms.iter().filter(|(_, a)| a["Properties"]["MetricName"] == metric).count();
    assert_eq!(on("ApproximateNumberOfMessagesVisible"), 3 + 2, "one per DLQ");
    assert_eq!(on("FailedInvocations"), rules.len(), "one per EventBridge rule");
    assert_eq!((on("ApproximateAgeOfOldestMessage"), on("InvocationDroppedCount")), (1, 1));
    let signal = alarms.iter().find(|(_, a)| a["Properties"]["MetricName"] == "JobsBacklog").expect("signal alarm");
    assert_eq!(signal.1["Properties"]["TreatMissingData"], "breaching");
    for (id, alarm) in alarms.iter().filter(|(id, _)| id.as_str() != "WorkerWakeAlarm") {
        assert_eq!(
            alarm["Properties"]["AlarmActions"],
            json!({ "Fn::If": ["HasAlarmTopic", [{ "Ref": "AlarmTopicArn" }], { "Ref": "AWS::NoValue" }] }),
            "{id}"
        );
    }
    let logs = &service["Resources"]["LogGroup"];
    assert_eq!(
        (&logs["DeletionPolicy"], &logs["Properties"]["RetentionInDays"]),
        (&json!("Retain"), &json!({ "Ref": "LogRetentionDays" }))
    );
    assert_eq!(table["DeletionProtectionEnabled"], true);

    // Secrets stay out of every file.
    for name in ["opsfleet-core.yaml", "opsfleet-service.yaml", "member-role.yaml"] {
        assert!(!std::fs::read_to_string(out.join(name)).unwrap_or_default().contains("do-not-print-1234"), "{name}");
    }
}

#[test]
fn a_policy_past_iams_size_is_rendered_as_several_managed_policies_the_role_all_attaches() {
    let fleet = support::unique_fleet("split");
    let mut text = String::from("[fleet]\nname = \"FLEET\"\n");
    for n in 0..150 {
        text.push_str(&format!(
            "\n[[tasks]]\nname = \"t{n}\"\npattern = {{ source = [\"x\"] }}\ntargets = \"event\"\naction = \"notify\"\nparams = {{ topic_arn = \"arn:aws:sns:us-east-1:123456789012:team-{n:03}-alarms\" }}\n"
        ));
    }
    let path = support::write_config(&fleet, &text);
    let core = load(&render(&path, &fleet).join("opsfleet-core.yaml"));
    let policies: Vec<_> =
        of_type(&core, "AWS::IAM::ManagedPolicy").into_iter().filter(|(id, _)| id.starts_with("TaskPolicy")).collect();
    assert!(policies.len() >= 2, "{} policies", policies.len());
    let attached = &core["Resources"]["TaskRole"]["Properties"]["ManagedPolicyArns"];
    assert_eq!(attached.as_array().map(Vec::len), Some(policies.len()));
    for (id, policy) in &policies {
        assert!(attached.as_array().is_some_and(|a| a.contains(&json!({ "Ref": id }))), "{id} is attached");
        let size = policy["Properties"]["PolicyDocument"].to_string().chars().filter(|c| !c.is_whitespace()).count();
        assert!(size <= 6_144, "{id}: {size} characters");
    }
    // Every topic the tasks publish to is granted by one of them.
    let all: String = policies.iter().map(|(_, p)| p["Properties"]["PolicyDocument"].to_string()).collect();
    assert!((0..150).all(|n| all.contains(&format!(":team-{n:03}-alarms\""))));
}

/// The virtualenv's bin directory, where `tests/run.sh` installs cfn-lint and
/// kubernetes-validate.
fn venv_bin() -> PathBuf {
    let python = std::env::var("OPSFLEET_TEST_PYTHON")
        .expect("the infra checks need the test tools: run them with tests/run.sh");
    PathBuf::from(python).parent().map(Path::to_path_buf).unwrap_or_default()
}

#[test]
fn every_rendered_template_passes_cfn_lint() {
    let fleet = support::unique_fleet("lint");
    let rich = render(&support::write_config(&fleet, CONFIG), &fleet);
    let example = render(&root().join("examples/fleet.toml"), &format!("{fleet}-example"));
    for dir in [rich, example] {
        for name in ["opsfleet-core.yaml", "opsfleet-service.yaml", "member-role.yaml"] {
            let out =
                std::process::Command::new(venv_bin().join("cfn-lint")).arg(dir.join(name)).output().expect("cfn-lint");
            assert!(
                out.status.success(),
                "cfn-lint {}:\n{}{}",
                dir.join(name).display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_kubernetes_manifests_validate_and_scale_on_a_metric_the_fleet_exports() {
    let k8s = root().join("infra/k8s");
    let plain = [
        "serviceaccount.yaml",
        "router-serviceaccount.yaml",
        "router-deployment.yaml",
        "worker-deployment.yaml",
        "poddisruptionbudget.yaml",
    ];
    let out = std::process::Command::new(venv_bin().join("kubernetes-validate"))
        .arg("--strict")
        .args(plain.map(|f| k8s.join(f)))
        .output()
        .expect("kubernetes-validate");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // KEDA's CRD is not in the validator: check what the scaler needs.
    let scaled = load(&k8s.join("keda-scaledobject.yaml"));
    let worker = load(&k8s.join("worker-deployment.yaml"));
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["kind"], "ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], worker["metadata"]["name"]);
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], worker["kind"]);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(
        trigger["metricType"], "AverageValue",
        "the backlog is divided by the pods the HPA wants, not reported per worker"
    );
    let query = trigger["metadata"]["query"].as_str().expect("query");
    let exporter = std::fs::read_to_string(root().join("src/cli/exporter.rs")).expect("exporter");
    assert!(query.contains("opsfleet_jobs_backlog") && exporter.contains("(\"opsfleet_jobs_backlog\""), "{query}");
    assert!(trigger["metadata"]["threshold"].as_str().and_then(|t| t.parse::<f64>().ok()).is_some_and(|t| t > 0.0));
    assert!(trigger["metadata"]["serverAddress"].as_str().is_some_and(|a| a.starts_with("http")));
    let (min, max) = (&scaled["spec"]["minReplicaCount"], &scaled["spec"]["maxReplicaCount"]);
    assert!(min.as_u64() == Some(0) && max.as_u64() > min.as_u64(), "{min} {max}");
    assert!(worker["spec"].get("replicas").is_none(), "the HPA owns the worker count");

    // The restricted Pod Security Standard: non-root, no privilege escalation, every
    // capability dropped, the runtime's seccomp profile; a pinned image.
    for file in ["router-deployment.yaml", "worker-deployment.yaml"] {
        let pod = &load(&k8s.join(file))["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{file}");
        for container in pod["containers"].as_array().expect("containers") {
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{file}");
            let image = container["image"].as_str().unwrap_or_default();
            assert_eq!(image.rsplit_once(':').map(|(_, tag)| tag), Some(env!("CARGO_PKG_VERSION")), "{file}: {image}");
            assert!(
                container["env"].to_string().find("AWS_REGION").is_none(),
                "{file}: the region comes from the pod's identity"
            );
        }
    }
    // Liveness is the health check, which fails on a stalled long-poll loop as ECS's does.
    for file in ["router-deployment.yaml", "worker-deployment.yaml"] {
        let probe = &load(&k8s.join(file))["spec"]["template"]["spec"]["containers"][0]["livenessProbe"];
        assert_eq!(probe["exec"]["command"][1], "healthcheck", "{file}");
    }
    // A disruption budget per component, and a PodMonitor naming the jobs the rules expect.
    let budgets = std::fs::read_to_string(k8s.join("poddisruptionbudget.yaml")).expect("PDB");
    let budgets: Vec<Value> = YamlLoader::load_from_str(&budgets).expect("YAML").iter().map(json_of).collect();
    for component in ["router", "worker"] {
        let budget = budgets.iter().find(|b| b["metadata"]["name"] == format!("opsfleet-{component}")).expect("a PDB");
        assert_eq!(budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], component);
        assert_eq!(budget["spec"]["maxUnavailable"], 1);
    }
    let monitor = load(&k8s.join("podmonitor.yaml"));
    assert_eq!(monitor["kind"], "PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], worker["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]);
    assert_eq!(endpoint["relabelings"][0]["replacement"], "opsfleet-$1");

    // The pods stop after the grace of the config they run, as the IRSA service account.
    let example = Config::parse(&std::fs::read_to_string(root().join("examples/fleet.toml")).expect("example"), None)
        .expect("valid");
    let spec = &worker["spec"]["template"]["spec"];
    let grace = spec["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(grace > u64::from(example.worker.shutdown_grace_secs), "{grace}");
    let account = load(&k8s.join("serviceaccount.yaml"));
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);
    assert!(account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .is_some_and(|a| a.starts_with("arn:aws:iam::")));
    assert_eq!(spec["containers"][0]["args"][0], "worker");
    // The routers run as their own account, whose role holds none of the actions' writes.
    let router = load(&k8s.join("router-deployment.yaml"));
    let router_account = load(&k8s.join("router-serviceaccount.yaml"));
    assert_eq!(router["spec"]["template"]["spec"]["serviceAccountName"], router_account["metadata"]["name"]);
    assert_ne!(router_account["metadata"]["name"], account["metadata"]["name"]);
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_of_the_binary() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(stages[0].starts_with("FROM rust:") && stages[0].ends_with(" AS build"), "{}", stages[0]);
    assert!(stages[1].contains("-slim"), "a slim runtime: {}", stages[1]);
    let runtime = &lines[lines.iter().position(|l| l == stages[1]).unwrap_or_default()..];
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=build ") && l.ends_with("/usr/local/bin/opsfleet")));
    let user = runtime.iter().find(|l| l.starts_with("USER ")).expect("USER in the runtime stage");
    assert!(!user.contains("root") && !user.trim_start_matches("USER ").starts_with("0"), "{user}");
    assert!(runtime.iter().any(|l| l.contains("/etc/opsfleet/fleet.toml")));
    assert!(runtime.iter().any(|l| l.starts_with("HEALTHCHECK") || l.contains("opsfleet\", \"healthcheck")));
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(ignored.lines().any(|l| l == "target"), "the build context leaves target/ out");
    // The health check the image runs answers 1 when nothing serves metrics.
    let addr = support::free_loopback_addr();
    let out = opsfleet_offline(&["healthcheck", "--address", &addr]).output().expect("healthcheck");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("unhealthy: nothing answers on"));
}
