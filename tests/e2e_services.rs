//! End to end with real actions on services beyond EC2: a real client (boto3) sends the
//! event to the events queue of a fleet made by `opsfleet setup`, and the router and worker
//! processes leave the verified effect and a `SUCCEEDED` job in the ledger: a throttling alarm
//! on a DynamoDB table doubles its provisioned capacity within its cap; an RDS event naming a
//! stopped instance leaves a snapshot of it and a copy in another region, and one naming a
//! cluster a snapshot of the cluster; a schedule's event stops the Auto Scaling group its
//! discovery finds by tag. All on moto, with RDS, DynamoDB's control plane and Auto Scaling
//! behind the realism layer for the fleet's processes.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::{Resource, ResourceType};
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::ledger::Status;
use support::action_fleet::{run_fleet, set_up, SetUp};

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
