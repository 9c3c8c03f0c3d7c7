//! `schedule-power` against the emulator behind the realism layer: EC2 instances (stopping
//! and starting take a while, hibernation only where launched for it) and RDS instances and
//! clusters (`stopping` and `starting` for a while), each brought to what its period wants
//! now, in the period's time zone. Periods are set around the test's own clock.

mod support;

use aws_sdk_ec2::types::HibernationOptionsRequest;
use opsfleet_protocol::ResourceType;
use opsfleet_worker::actions::{erased, SchedulePower};
use opsfleet_worker::Step;
use serde_json::{json, Value};
use support::ec2::*;
use support::rds::instance as db_instance;

/// A period, in `tz`, that wants resources running now (or stopped now): two hours either
/// side of the clock, or starting two hours from now.
fn period(run: bool, tz: &str) -> Value {
    let zone = jiff::tz::TimeZone::get(tz).expect("a time zone");
    let now = jiff::Timestamp::now().to_zoned(zone);
    let hhmm = |hours: i64| {
        let t = now.checked_add(jiff::SignedDuration::from_hours(hours)).expect("a time").time();
        format!("{:02}:{:02}", t.hour(), t.minute())
    };
    let (begin, end) = if run { (hhmm(-2), hhmm(2)) } else { (hhmm(2), hhmm(4)) };
    json!({ "days": "daily", "begin": begin, "end": end, "tz": tz })
}

fn params(run: bool, enforce: bool) -> Value {
    json!({ "periods": { "work": period(run, "Asia/Kolkata") }, "enforce": enforce, "hibernate": true, "check_after_secs": 1 })
}

fn record(tags: &[aws_sdk_ec2::types::Tag]) -> Option<String> {
    tags.iter().find(|t| t.key() == Some("opsfleet:schedule")).and_then(|t| t.value()).map(str::to_owned)
}

async fn instance_tags(ec2: &aws_sdk_ec2::Client, id: &str) -> Vec<aws_sdk_ec2::types::Tag> {
    let out = ec2.describe_instances().instance_ids(id).send().await.expect("describe");
    out.reservations()[0].instances()[0].tags().to_vec()
}

#[tokio::test]
async fn an_instance_follows_its_period_leaves_a_hand_start_alone_unless_enforced_and_hibernates_when_it_can() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let out = ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .instance_type("m5.large".into())
        .min_count(1)
        .max_count(1)
        .hibernation_options(HibernationOptionsRequest::builder().configured(true).build())
        .tag_specifications(spec(aws_sdk_ec2::types::ResourceType::Instance, &[("Schedule", "work")]))
        .send()
        .await
        .expect("instance");
    let id = out.instances()[0].instance_id().expect("id").to_owned();
    layer.settle().await;
    let task = unique("office");
    let run_job = |event: &str, p: &Value| job(&task, event, "schedule-power", p, ResourceType::Instance, &id, REGION);

    // The period wants it stopped: it hibernates (it was launched for it), and the state is recorded.
    let summary = done(&run(&erased(SchedulePower), &run_job("t1", &params(false, false)), &aws).await).to_owned();
    assert!(summary.contains("is stopped: work"), "{summary}");
    assert_eq!(type_and_state(&ec2, &id).await.1, "stopped");
    assert_eq!(layer.counts().get("hibernated").copied(), Some(1), "{:?}", layer.counts());
    layer.settle().await;
    assert_eq!(record(&instance_tags(&ec2, &id).await).as_deref(), Some("work stopped"));

    // Someone starts it by hand: the next run leaves it so, until enforced.
    ec2.start_instances().instance_ids(&id).send().await.expect("start by hand");
    let summary = done(&run(&erased(SchedulePower), &run_job("t2", &params(false, false)), &aws).await).to_owned();
    assert!(summary.contains("left running by hand"), "{summary}");
    assert_eq!(type_and_state(&ec2, &id).await.1, "running");
    done(&run(&erased(SchedulePower), &run_job("t3", &params(false, true)), &aws).await);
    assert_eq!(type_and_state(&ec2, &id).await.1, "stopped", "enforced");

    // The period now wants it running (a run missed in between changes nothing): started.
    let summary = done(&run(&erased(SchedulePower), &run_job("t4", &params(true, false)), &aws).await).to_owned();
    assert!(summary.contains("is running: work"), "{summary}");
    assert_eq!(type_and_state(&ec2, &id).await.1, "running");
    layer.settle().await;
    assert_eq!(record(&instance_tags(&ec2, &id).await).as_deref(), Some("work running"));
}

#[tokio::test]
async fn an_instance_that_cannot_hibernate_is_stopped_and_a_wrong_or_missing_tag_is_named() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let plain = instance(&ec2).await;
    ec2.create_tags().resources(&plain).tags(tags(&[("Schedule", "work")])[0].clone()).send().await.expect("tag");
    let typo = instance(&ec2).await;
    ec2.create_tags().resources(&typo).tags(tags(&[("Schedule", "wrok")])[0].clone()).send().await.expect("tag");
    let untagged = instance(&ec2).await;
    layer.settle().await;
    let task = unique("office");
    let p = params(false, false);
    done(
        &run(
            &erased(SchedulePower),
            &job(&task, "t1", "schedule-power", &p, ResourceType::Instance, &plain, REGION),
            &aws,
        )
        .await,
    );
    assert_eq!(type_and_state(&ec2, &plain).await.1, "stopped");
    assert_eq!(layer.counts().get("hibernated").copied().unwrap_or(0), 0, "a plain stop: {:?}", layer.counts());

    let step = run(
        &erased(SchedulePower),
        &job(&task, "t1", "schedule-power", &p, ResourceType::Instance, &typo, REGION),
        &aws,
    )
    .await;
    assert!(
        matches!(&step, Step::Failed { retryable: false, error } if error.contains("Schedule = wrok names no period (known: work)")),
        "{step:?}"
    );
    assert_eq!(type_and_state(&ec2, &typo).await.1, "running", "left alone");
    let step = run(
        &erased(SchedulePower),
        &job(&task, "t1", "schedule-power", &p, ResourceType::Instance, &untagged, REGION),
        &aws,
    )
    .await;
    assert!(matches!(&step, Step::Skipped { reason } if reason.contains("has no Schedule tag")), "{step:?}");
}

#[tokio::test]
async fn rds_instances_and_clusters_are_stopped_and_started_by_their_periods() {
    let (aws, layer) = accounts().await;
    let rds = aws.rds(ACCOUNT, REGION).await.expect("client");
    let db = unique("reporting").replace('-', "x");
    db_instance(&rds, &db, &[("Schedule", "work")]).await;
    let cluster = unique("analytics").replace('-', "x");
    rds.create_db_cluster()
        .db_cluster_identifier(&cluster)
        .engine("aurora-postgresql")
        .master_username("opsfleet")
        .master_user_password("not-a-secret-1")
        .tags(aws_sdk_rds::types::Tag::builder().key("Schedule").value("work").build())
        .send()
        .await
        .expect("cluster");
    rds.stop_db_cluster().db_cluster_identifier(&cluster).send().await.expect("stopped by hand");
    let task = unique("office");

    let stop = job(&task, "t1", "schedule-power", &params(false, false), ResourceType::RdsInstance, &db, REGION);
    let summary = done(&run(&erased(SchedulePower), &stop, &aws).await).to_owned();
    assert!(summary.contains("is stopped"), "{summary}");
    let out = rds.describe_db_instances().db_instance_identifier(&db).send().await.expect("describe");
    let i = &out.db_instances()[0];
    assert_eq!(i.db_instance_status(), Some("stopped"));
    let recorded = i.tag_list().iter().find(|t| t.key() == Some("opsfleet:schedule")).and_then(|t| t.value());
    assert_eq!(recorded, Some("work stopped"));

    let start = job(&task, "t1", "schedule-power", &params(true, false), ResourceType::RdsCluster, &cluster, REGION);
    let summary = done(&run(&erased(SchedulePower), &start, &aws).await).to_owned();
    assert!(summary.contains("is running"), "{summary}");
    let out = rds.describe_db_clusters().db_cluster_identifier(&cluster).send().await.expect("describe");
    assert_eq!(out.db_clusters()[0].status(), Some("available"));
    assert!(
        layer.counts().get("changing").copied().unwrap_or(0) > 0,
        "stopping and starting took a while: {:?}",
        layer.counts()
    );
}

#[tokio::test]
async fn an_auto_scaling_group_is_stopped_to_size_zero_and_started_again_at_its_saved_sizes() {
    use aws_sdk_autoscaling::types::Tag;
    let (aws, _layer) = accounts().await;
    let asg = aws.autoscaling(ACCOUNT, REGION).await.expect("client");
    let name = unique("web-asg");
    asg.create_launch_configuration()
        .launch_configuration_name(&name)
        .image_id("ami-03cf127a")
        .instance_type("t3.micro")
        .send()
        .await
        .expect("launch configuration");
    let schedule =
        Tag::builder().resource_id(&name).resource_type("auto-scaling-group").key("Schedule").value("work").build();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_configuration_name(&name)
        .min_size(1)
        .max_size(3)
        .desired_capacity(2)
        .availability_zones(format!("{REGION}a"))
        .tags(schedule)
        .send()
        .await
        .expect("group");
    let sizes = || async {
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&name).send().await.expect("describe");
        let g = &out.auto_scaling_groups()[0];
        let saved =
            g.tags().iter().find(|t| t.key() == Some("opsfleet:asg-size")).and_then(|t| t.value()).map(str::to_owned);
        ((g.min_size(), g.max_size(), g.desired_capacity()), saved)
    };
    let task = unique("office");
    let stop = job(&task, "t1", "schedule-power", &params(false, false), ResourceType::AutoScalingGroup, &name, REGION);
    let summary = done(&run(&erased(SchedulePower), &stop, &aws).await).to_owned();
    assert!(summary.contains("is stopped"), "{summary}");
    assert_eq!(sizes().await, ((Some(0), Some(0), Some(0)), Some("1 3 2".to_owned())), "stopped, its sizes saved");
    let start = job(&task, "t2", "schedule-power", &params(true, false), ResourceType::AutoScalingGroup, &name, REGION);
    done(&run(&erased(SchedulePower), &start, &aws).await);
    assert_eq!(sizes().await.0, (Some(1), Some(3), Some(2)), "started at its saved sizes");
}

#[tokio::test]
async fn a_database_rds_started_again_by_itself_is_stopped_again_without_enforce() {
    let (aws, _layer) = accounts().await;
    let rds = aws.rds(ACCOUNT, REGION).await.expect("client");
    let db = unique("ledger").replace('-', "x");
    db_instance(&rds, &db, &[("Schedule", "work")]).await;
    let task = unique("office");
    let stop = |event: &str| {
        job(&task, event, "schedule-power", &params(false, false), ResourceType::RdsInstance, &db, REGION)
    };
    done(&run(&erased(SchedulePower), &stop("t1"), &aws).await);
    // Seven days later RDS starts it again (here: a start through the emulator directly).
    let base = opsfleet_backend::AwsBackend::sdk_config().await;
    let direct = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&base).region(aws_sdk_rds::config::Region::new(REGION)).build(),
    );
    direct.start_db_instance().db_instance_identifier(&db).send().await.expect("started by RDS");
    let summary = done(&run(&erased(SchedulePower), &stop("t2"), &aws).await).to_owned();
    assert!(summary.contains("is stopped"), "{summary}");
    let out = direct.describe_db_instances().db_instance_identifier(&db).send().await.expect("describe");
    assert_eq!(out.db_instances()[0].db_instance_status(), Some("stopped"));
}
