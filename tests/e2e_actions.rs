//! End to end with real EC2 actions: a real client (boto3) sends an event to the events queue
//! of a fleet made by `opsfleet setup`, and the router and worker processes leave the verified
//! effect and a `SUCCEEDED` job in the ledger: an "EC2 Instance State-change Notification"
//! (stopped) leaves exactly one snapshot of each of the instance's volumes, tagged as opsfleet
//! tags what it makes; a CPU alarm naming an instance leaves it one size larger (a fallback
//! type, with no capacity for the next rung) and running; an AMI that became available is
//! copied to another region. All on moto, with EC2 behind the realism layer (eventual
//! consistency, pending snapshots and images, throttling buckets, retryable errors) for the
//! fleet's processes. The other services' are in `e2e_services.rs`.

mod support;

use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::Config;
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::ledger::Status;
use opsfleet_worker::ActionRegistry;
use support::action_fleet::{run_fleet, set_up, SetUp};
use support::{opsfleet, unique_fleet, write_config};

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

const IMAGES: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "copy-new-image"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 AMI State Change"], region = ["us-east-1"], detail = { State = ["available"] } }
targets = "event"
action = "image-copy"
params = { destination_region = "us-west-2", retain = 3, check_after_secs = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_became_available_is_copied_to_another_region_and_its_job_succeeds() {
    let SetUp { fleet, path, config, layer, ec2, .. } = set_up("e2e-image", IMAGES, Ec2Plan::aws()).await;
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
    let image = ec2.create_image().instance_id(&instance).name(format!("{fleet}-web")).send().await.expect("image");
    let image = image.image_id().expect("image id").to_owned();
    layer.settle().await;

    // The notification as EventBridge delivers it: the image is its ARN (which names no account).
    let event = serde_json::json!({
        "version": "0", "id": format!("{fleet}-ami"), "detail-type": "EC2 AMI State Change",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-12-05T10:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1::image/{image}")],
        "detail": { "ImageId": image, "State": "available", "ErrorMessage": "" }
    });
    let (job, record) = run_fleet(&fleet, &path, config, &layer, &event, None).await;
    assert_eq!(record.status, Status::Succeeded, "{record:?}");
    let conf = aws_sdk_ec2::config::Builder::from(&AwsBackend::sdk_config().await)
        .region(aws_sdk_ec2::config::Region::new("us-west-2"))
        .build();
    let west = aws_sdk_ec2::Client::from_conf(conf);
    let out = west
        .describe_images()
        .owners("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:opsfleet:job").values(&job).build())
        .send()
        .await
        .expect("describe images");
    assert_eq!(out.images().len(), 1, "one copy in us-west-2, tagged with its job");
}
