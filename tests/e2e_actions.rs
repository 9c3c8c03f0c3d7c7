//! End to end with real actions: a real client (boto3) sends an "EC2 Instance State-change
//! Notification" (stopped) to the events queue of a fleet made by `opsfleet setup`, and the
//! router and worker processes leave exactly one snapshot of each of the instance's volumes,
//! tagged as opsfleet tags what it makes, and a `SUCCEEDED` job in the ledger; a CPU alarm
//! naming an instance leaves it one size larger (a fallback type, with no capacity for the
//! next rung) and running; a throttling alarm on a DynamoDB table doubles the table's
//! provisioned capacity within its cap; an RDS event naming a stopped instance leaves a
//! snapshot of it and a copy in another region, and one naming a cluster a snapshot of the
//! cluster; a schedule's event stops the Auto Scaling groups its discovery finds by tag. All
//! on moto,
//! with EC2, RDS and DynamoDB's control plane behind the realism layer (eventual consistency,
//! pending snapshots, tables `UPDATING`, throttling buckets, retryable errors) for the fleet's
//! processes.

mod support;

use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::job::job_id;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Planner, Resource, ResourceType};
use opsfleet_testkit::{Ec2Plan, Ec2Realism};
use opsfleet_worker::ledger::{Ledger, Status};
use opsfleet_worker::ActionRegistry;
use std::time::{Duration, Instant};
use support::{opsfleet, python_client, unique_fleet, write_config, ChildGuard};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "snapshot-stopped-instance"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "ebs-snapshot"
params = { retain = 7, description = "{task}: {id} stopped", tags = { StoppedAt = "{event.time}" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_leaves_one_tagged_snapshot_per_volume_and_a_succeeded_job() {
    let SetUp { fleet, path, config, layer, ec2, .. } = set_up("e2e-actions", CONFIG, Ec2Plan::aws()).await;
    // An instance with a second volume.
    let run = ec2.run_instances().image_id("ami-03cf127a").min_count(1).max_count(1).send().await.expect("instance");
    let instance = run.instances()[0].instance_id().expect("id").to_owned();
    let data = ec2.create_volume().availability_zone("us-east-1a").size(4).send().await.expect("volume");
    let data = data.volume_id().expect("id").to_owned();
    ec2.attach_volume().volume_id(&data).instance_id(&instance).device("/dev/sdf").send().await.expect("attach");
    ec2.stop_instances().instance_ids(&instance).send().await.expect("stop");
    layer.settle().await;

    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-stopped"), "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-11-25T10:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": { "instance-id": instance, "state": "stopped" }
    });
    let (job, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let seen = layer.counts();
    assert!(
        seen.get("not_found").copied().unwrap_or(0) > 0,
        "the worker's first check met snapshots no describe knew yet, and waited: {seen:?}"
    );
    layer.settle().await;
    let made = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:opsfleet:job").values(&job).build())
        .send()
        .await
        .expect("snapshots");
    let mut sources: Vec<String> = made.snapshots().iter().filter_map(|s| s.volume_id().map(str::to_owned)).collect();
    sources.sort();
    sources.dedup();
    assert_eq!(made.snapshots().len(), 2, "one snapshot of each volume: {made:?}");
    assert_eq!(sources.len(), 2);
    assert!(sources.contains(&data));
    for snapshot in made.snapshots() {
        let tags: std::collections::BTreeMap<&str, &str> =
            snapshot.tags().iter().filter_map(|t| Some((t.key()?, t.value()?))).collect();
        assert_eq!(tags.get("opsfleet:task"), Some(&"snapshot-stopped-instance"));
        assert_eq!(tags.get("StoppedAt"), Some(&"2026-11-25T10:00:00Z"), "{tags:?}");
        assert_eq!(snapshot.description(), Some(format!("snapshot-stopped-instance: {instance} stopped").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_with_discover_expands_discovery_tasks_from_ec2() {
    let fleet = unique_fleet("plan-discover");
    let marker = fleet.replace('-', "");
    let text = format!(
        r#"
[fleet]
name = "{fleet}"

[[tasks]]
name = "nightly"
pattern = {{ "detail-type" = ["Scheduled Event"] }}
targets = {{ type = "ec2:volume", tags = {{ Backup = "{marker}" }}, regions = ["us-east-1", "us-west-2"] }}
action = "ebs-snapshot"
"#
    );
    let path = write_config(&fleet, &text);
    let config = Config::parse(&text, Some(&ActionRegistry::builtin())).expect("config");
    let accounts = AwsAccounts::new(AwsBackend::sdk_config().await, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let mut wanted = Vec::new();
    for region in ["us-east-1", "us-west-2"] {
        let ec2 = accounts.ec2("123456789012", region).await.expect("ec2");
        let spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
            .tags(aws_sdk_ec2::types::Tag::builder().key("Backup").value(&marker).build())
            .build();
        let out =
            ec2.create_volume().availability_zone(format!("{region}a")).size(1).tag_specifications(spec).send().await;
        wanted.push(out.expect("volume").volume_id().expect("id").to_owned());
    }
    let event = serde_json::json!({"version": "0", "id": "sched-1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "region": "us-east-1", "time": "2026-11-25T00:00:00Z",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/nightly"], "detail": {}});
    let file = support::root().join("target/e2e").join(format!("{fleet}-event.json"));
    std::fs::write(&file, event.to_string()).expect("event");
    let offline = support::opsfleet_offline(&[
        "plan",
        "--config",
        path.to_str().unwrap_or_default(),
        file.to_str().unwrap_or_default(),
    ])
    .output()
    .expect("plan");
    assert!(offline.status.success());
    assert!(offline.stdout.is_empty(), "without --discover nothing is expanded");
    assert!(String::from_utf8_lossy(&offline.stderr).contains("--discover runs it"));
    let out = opsfleet(&[
        "plan",
        "--discover",
        "--config",
        path.to_str().unwrap_or_default(),
        file.to_str().unwrap_or_default(),
    ])
    .output()
    .expect("plan --discover");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("job line")["resource"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    found.sort();
    wanted.sort();
    assert_eq!(found, wanted, "one job per tagged volume in each region");
}

const RESIZE: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "scale-up-busy-instance"
pattern = { source = ["aws.cloudwatch"], "detail-type" = ["CloudWatch Alarm State Change"], detail = { alarmName = [{ prefix = "scale-up-" }], state = { value = ["ALARM"] } } }
targets = "event"
action = "instance-resize"
params = { step = "up", ladder = ["t3.small", "t3.medium", "t3.large"], fallback = ["m5.large"], check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_alarm_resizes_its_instance_one_rung_to_a_fallback_type_and_leaves_it_running() {
    // EC2 on an ordinary day, and no t3.medium to be had.
    let mut plan = Ec2Plan::aws();
    plan.no_capacity_types.insert("t3.medium".into());
    let SetUp { fleet, path, config, layer, ec2, .. } = set_up("e2e-resize", RESIZE, plan).await;
    let run = ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .instance_type("t3.small".into())
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("instance");
    let instance = run.instances()[0].instance_id().expect("id").to_owned();
    layer.settle().await;

    // The alarm as EventBridge delivers it: the instance is its metric's dimension.
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-alarm"), "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": "123456789012", "time": "2026-11-25T10:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:scale-up-web"],
        "detail": {
            "alarmName": "scale-up-web",
            "state": { "value": "ALARM" }, "previousState": { "value": "OK" },
            "configuration": { "metrics": [{ "id": "m1", "metricStat": { "metric": {
                "namespace": "AWS/EC2", "name": "CPUUtilization", "dimensions": { "InstanceId": instance }
            }, "period": 300, "stat": "Average" }, "returnData": true }] }
        }
    });
    let (_, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let out = ec2.describe_instances().instance_ids(&instance).send().await.expect("describe");
    let now = &out.reservations()[0].instances()[0];
    assert_eq!(now.instance_type().map(|t| t.as_str()), Some("m5.large"), "t3.medium had no capacity");
    assert_eq!(now.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("running"));
    let resized = now.tags().iter().find(|t| t.key() == Some("opsfleet:resize")).and_then(|t| t.value());
    assert!(resized.is_some_and(|r| r.ends_with(" t3.small running")), "the record of the resize: {resized:?}");
    assert!(layer.counts().get("no_capacity_type").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
}

/// A fleet made by `opsfleet setup` from `text`, and an EC2 client of its account through a
/// realism layer with `plan`.
const TABLE: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "scale-throttled-table"
pattern = { source = ["aws.cloudwatch"], "detail-type" = ["CloudWatch Alarm State Change"], detail = { configuration = { metrics = { metricStat = { metric = { namespace = ["AWS/DynamoDB"] } } } }, state = { value = ["ALARM"] } } }
targets = "event"
action = "dynamodb-capacity"
params = { multiply = 2, max_write = 8, check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_alarm_on_a_table_doubles_its_capacity_within_the_cap_and_leaves_a_succeeded_job() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, KeySchemaElement, KeyType, ProvisionedThroughput, ScalarAttributeType,
    };
    let SetUp { fleet, path, config, layer, dynamodb, .. } = set_up("e2e-table", TABLE, Ec2Plan::aws()).await;
    let table = format!("{fleet}-orders");
    dynamodb
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attr"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().expect("key"))
        .provisioned_throughput(
            ProvisionedThroughput::builder().read_capacity_units(5).write_capacity_units(5).build().expect("units"),
        )
        .send()
        .await
        .expect("table");

    // The alarm as EventBridge delivers it: the table is its metric's dimension.
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-alarm"), "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": "123456789012", "time": "2026-12-05T10:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:orders-write-throttles"],
        "detail": {
            "alarmName": "orders-write-throttles",
            "state": { "value": "ALARM" }, "previousState": { "value": "OK" },
            "configuration": { "metrics": [{ "id": "m1", "metricStat": { "metric": {
                "namespace": "AWS/DynamoDB", "name": "WriteThrottleEvents", "dimensions": { "TableName": table }
            }, "period": 60, "stat": "Sum" }, "returnData": true }] }
        }
    });
    let (_, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let out = dynamodb.describe_table().table_name(&table).send().await.expect("describe");
    let units = out.table().and_then(|t| t.provisioned_throughput()).expect("units");
    assert_eq!(
        (units.read_capacity_units(), units.write_capacity_units()),
        (Some(10), Some(8)),
        "doubled, write capped"
    );
    assert!(layer.counts().get("table_updating").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
}

const DATABASE: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "snapshot-stopped-database"
pattern = { source = ["aws.rds"], "detail-type" = ["RDS DB Instance Event"], detail = { EventID = ["RDS-EVENT-0087"] } }
targets = "event"
action = "rds-snapshot"
params = { copy_to = [{ region = "us-west-2" }], retain = 7, check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rds_event_leaves_a_snapshot_of_its_instance_copied_to_another_region_and_a_succeeded_job() {
    let SetUp { fleet, path, config, layer, rds, .. } = set_up("e2e-rds", DATABASE, Ec2Plan::aws()).await;
    let db = fleet.replace(['_', '.'], "-").to_ascii_lowercase();
    rds.create_db_instance()
        .db_instance_identifier(&db)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("opsfleet")
        .master_user_password("not-a-secret-1")
        .send()
        .await
        .expect("instance");

    // The event as EventBridge delivers RDS's notification: the instance is its ARN.
    let arn = format!("arn:aws:rds:us-east-1:123456789012:db:{db}");
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-rds"), "detail-type": "RDS DB Instance Event",
        "source": "aws.rds", "account": "123456789012", "time": "2026-12-05T10:00:00Z", "region": "us-east-1",
        "resources": [arn],
        "detail": { "EventCategories": ["notification"], "SourceType": "DB_INSTANCE", "SourceArn": arn,
                    "Message": "DB instance stopped", "SourceIdentifier": db, "EventID": "RDS-EVENT-0087" }
    });
    let (job, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    for region in ["us-east-1", "us-west-2"] {
        let conf = aws_sdk_rds::config::Builder::from(&AwsBackend::sdk_config().await)
            .region(aws_sdk_rds::config::Region::new(region))
            .build();
        let out = aws_sdk_rds::Client::from_conf(conf)
            .describe_db_snapshots()
            .db_instance_identifier(&db)
            .snapshot_type("manual")
            .send()
            .await
            .expect("describe");
        let ids: Vec<&str> = out.db_snapshots().iter().filter_map(|s| s.db_snapshot_identifier()).collect();
        assert_eq!(ids.len(), 1, "one snapshot in {region}: {ids:?}");
        assert!(ids[0].ends_with(&job), "named after its job: {ids:?}");
    }
    assert!(layer.counts().get("pending").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
}

const CLUSTER: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "snapshot-stopped-cluster"
pattern = { source = ["aws.rds"], "detail-type" = ["RDS DB Cluster Event"], detail = { EventID = ["RDS-EVENT-0150"] } }
targets = "event"
action = "rds-snapshot"
params = { retain = 3, check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rds_cluster_event_leaves_a_snapshot_of_its_cluster_and_a_succeeded_job() {
    let SetUp { fleet, path, config, layer, rds, .. } = set_up("e2e-cluster", CLUSTER, Ec2Plan::aws()).await;
    let cluster = fleet.replace(['_', '.'], "-").to_ascii_lowercase();
    rds.create_db_cluster()
        .db_cluster_identifier(&cluster)
        .engine("aurora-postgresql")
        .master_username("opsfleet")
        .master_user_password("not-a-secret-1")
        .send()
        .await
        .expect("cluster");
    let arn = format!("arn:aws:rds:us-east-1:123456789012:cluster:{cluster}");
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-cluster"), "detail-type": "RDS DB Cluster Event",
        "source": "aws.rds", "account": "123456789012", "time": "2026-12-05T10:00:00Z", "region": "us-east-1",
        "resources": [arn],
        "detail": { "EventCategories": ["notification"], "SourceType": "CLUSTER", "SourceArn": arn,
                    "Message": "DB cluster stopped", "SourceIdentifier": cluster, "EventID": "RDS-EVENT-0150" }
    });
    let (job, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let out = rds
        .describe_db_cluster_snapshots()
        .db_cluster_identifier(&cluster)
        .snapshot_type("manual")
        .send()
        .await
        .expect("describe");
    let ids: Vec<&str> = out.db_cluster_snapshots().iter().filter_map(|s| s.db_cluster_snapshot_identifier()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].ends_with(&job), "named after its job: {ids:?}");
}

const GROUPS: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "office-hours-groups"
schedule = { name = "office-hours", expression = "rate(15 minutes)" }
targets = { type = "autoscaling:group", tags = { "Schedule-FLEET" = "*" } }
action = "schedule-power"
params = { tag = "Schedule-FLEET", periods = { later = { days = "daily", begin = "BEGIN", end = "END" } }, check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_stops_the_auto_scaling_group_its_discovery_finds_by_tag_and_saves_its_sizes() {
    use aws_sdk_autoscaling::types::Tag;
    // A period that starts two hours from now (UTC): it wants the group stopped.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let hhmm = |secs: u64| format!("{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60);
    let text = GROUPS.replace("BEGIN", &hhmm(now + 7200)).replace("END", &hhmm(now + 10800));
    let SetUp { fleet, path, config, layer, autoscaling, .. } = set_up("e2e-asg", &text, Ec2Plan::aws()).await;
    let name = format!("{fleet}-web");
    autoscaling
        .create_launch_configuration()
        .launch_configuration_name(&name)
        .image_id("ami-03cf127a")
        .instance_type("t3.micro")
        .send()
        .await
        .expect("launch configuration");
    let tag = Tag::builder()
        .resource_id(&name)
        .resource_type("auto-scaling-group")
        .key(format!("Schedule-{fleet}"))
        .value("later")
        .build();
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_configuration_name(&name)
        .min_size(1)
        .max_size(2)
        .desired_capacity(1)
        .availability_zones("us-east-1a")
        .tags(tag)
        .send()
        .await
        .expect("group");

    // The event the task's schedule sends, as EventBridge delivers it.
    let schedule = config.tasks[0].schedule.clone().expect("a scheduled task");
    let event = serde_json::Value::Object(schedule.event("123456789012", "us-east-1"));
    let group = Resource {
        account: "123456789012".into(),
        region: "us-east-1".into(),
        kind: ResourceType::AutoScalingGroup,
        id: name.clone(),
    };
    let (_, record) = run_fleet(&fleet, &path, config, &layer, &event, Some(&group)).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let out =
        autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(&name).send().await.expect("describe");
    let g = &out.auto_scaling_groups()[0];
    assert_eq!((g.min_size(), g.max_size(), g.desired_capacity()), (Some(0), Some(0), Some(0)), "stopped");
    let saved = g.tags().iter().find(|t| t.key() == Some("opsfleet:asg-size")).and_then(|t| t.value());
    assert_eq!(saved, Some("1 2 1"), "its sizes saved for the start");
}

struct SetUp {
    fleet: String,
    path: std::path::PathBuf,
    config: Config,
    layer: Ec2Realism,
    ec2: aws_sdk_ec2::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    rds: aws_sdk_rds::Client,
    autoscaling: aws_sdk_autoscaling::Client,
}

async fn set_up(name: &str, text: &str, plan: Ec2Plan) -> SetUp {
    let fleet = unique_fleet(name);
    let path = write_config(&fleet, text);
    let setup = opsfleet(&["setup", "--config", path.to_str().unwrap_or_default()]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let config = Config::parse(&std::fs::read_to_string(&path).expect("config"), Some(&ActionRegistry::builtin()))
        .expect("config");
    let emulator = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh");
    let layer = Ec2Realism::start(&emulator, plan).await.expect("the EC2 realism layer");
    let base = layer.sdk_config(&AwsBackend::sdk_config().await);
    let accounts = AwsAccounts::new(base, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let ec2 = accounts.ec2("123456789012", "us-east-1").await.expect("ec2");
    let dynamodb = accounts.dynamodb("123456789012", "us-east-1").await.expect("dynamodb");
    let rds = accounts.rds("123456789012", "us-east-1").await.expect("rds");
    let autoscaling = accounts.autoscaling("123456789012", "us-east-1").await.expect("autoscaling");
    SetUp { fleet, path, config, layer, ec2, dynamodb, rds, autoscaling }
}

/// Runs a router and a worker of the fleet set up at `path` with EC2 behind `layer`, sends
/// `event` to the events queue with a real client (boto3), and waits for the one job it plans
/// (on the resource it names, or on `discovered`, found by its task's discovery) to end: its
/// id and ledger record.
async fn run_fleet(
    fleet: &str,
    path: &std::path::Path,
    config: Config,
    layer: &Ec2Realism,
    event: &serde_json::Value,
    discovered: Option<&Resource>,
) -> (String, opsfleet_worker::ledger::JobRecord) {
    let log = |name: &str| {
        std::fs::File::create(support::root().join("target/e2e").join(format!("{fleet}-{name}.log"))).expect("log")
    };
    let _router = ChildGuard(
        opsfleet(&["router", "--config", path.to_str().unwrap_or_default()])
            .env("AWS_ENDPOINT_URL", &layer.url)
            .stderr(log("router"))
            .spawn()
            .expect("router"),
    );
    let _worker = ChildGuard(
        opsfleet(&["worker", "--config", path.to_str().unwrap_or_default()])
            .env("AWS_ENDPOINT_URL", &layer.url)
            .stderr(log("worker"))
            .spawn()
            .expect("worker"),
    );
    let event = event.to_string();
    let file = support::root().join("target/e2e").join(format!("{fleet}-event.json"));
    std::fs::write(&file, &event).expect("event file");
    let sent = python_client(&["send-files", &format!("{fleet}-events"), file.to_str().unwrap_or_default()]).status();
    assert!(sent.expect("send").success());

    let event = normalize(&event).expect("event");
    let plan = Planner::new(config).plan(&event, 0).expect("plan");
    // The event's one job: the resource it names, or the one its task's discovery finds.
    let id = match (&plan.jobs[..], &plan.discoveries[..], discovered) {
        ([job], [], None) => job.id.clone(),
        ([], [discovery], Some(resource)) => job_id(&event.id, &discovery.task_name, &resource.key()),
        _ => panic!("one job, named by the event or found by one discovery: {plan:?}"),
    };
    let backend = AwsBackend::from_env().await;
    let ledger = Ledger::new(backend.store(fleet).await.expect("table"), Clock::new(), Duration::from_secs(3600));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let record = ledger.job(&id).await.expect("ledger");
        if record.as_ref().is_some_and(|r| r.status.is_final()) {
            return (id, record.expect("record"));
        }
        assert!(Instant::now() < deadline, "the job did not finish: {record:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
