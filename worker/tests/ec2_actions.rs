//! The EC2 and SNS actions against the emulator (moto, which `tests/run.sh` starts): each
//! action's effect, its idempotency (a job run twice makes nothing twice), its verification
//! (no success before the effect is there), retention, and the opt-out tag.

mod support;

use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, Tag as Ec2Tag, TagSpecification};
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::{Config, Job, Resource, ResourceType};
use opsfleet_worker::actions::{
    erased, AmiCreate, EbsSnapshot, InstancePower, Notify, SnapshotCopy, SnapshotRetention, Tag,
};
use opsfleet_worker::{ActionContext, Step};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

fn require_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "the action tests need the emulator: run them with tests/run.sh"
    );
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

async fn accounts() -> Arc<AwsAccounts> {
    require_emulator();
    let config = Config::parse("[fleet]\nname = \"t\"\n", None).expect("config");
    Arc::new(AwsAccounts::new(AwsBackend::sdk_config().await, &config.fleet, Ec2Budget::new(config.ec2_budget)))
}

async fn ec2(aws: &AwsAccounts, region: &str) -> aws_sdk_ec2::Client {
    aws.ec2(ACCOUNT, region).await.expect("ec2 client")
}

fn job(task: &str, event: &str, action: &str, params: &Value, kind: ResourceType, id: &str, region: &str) -> Job {
    let origin = JobOrigin { event_id: event, event_time: None, received_ms: 0, task, action, params };
    let resource = Resource { account: ACCOUNT.into(), region: region.into(), kind, id: id.into() };
    Job::new(origin, resource, 4)
}

fn ctx<'a>(job: &'a Job, aws: &'a AwsAccounts) -> ActionContext<'a> {
    ActionContext { job, dry_run: false, attempt: 1, check: 0, aws: Some(aws), now_ms: 1_795_631_405_000 }
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Ec2Tag> {
    pairs.iter().map(|(k, v)| Ec2Tag::builder().key(*k).value(*v).build()).collect()
}

fn spec(kind: Ec2Type, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags(pairs))).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

async fn volume(ec2: &aws_sdk_ec2::Client, pairs: &[(&str, &str)]) -> String {
    let mut request = ec2.create_volume().availability_zone(format!("{REGION}a")).size(8);
    if !pairs.is_empty() {
        request = request.tag_specifications(spec(Ec2Type::Volume, pairs));
    }
    request.send().await.expect("create volume").volume_id().expect("volume id").to_owned()
}

async fn instance(ec2: &aws_sdk_ec2::Client) -> String {
    let out =
        ec2.run_instances().image_id("ami-03cf127a").min_count(1).max_count(1).send().await.expect("run instance");
    out.instances()[0].instance_id().expect("instance id").to_owned()
}

async fn snapshots(ec2: &aws_sdk_ec2::Client, key: &str, value: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&format!("tag:{key}"), value))
        .send()
        .await
        .expect("describe snapshots");
    out.snapshots().to_vec()
}

fn tag_map(tags: &[Ec2Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect()
}

fn done(step: &Step) -> &str {
    match step {
        Step::Done { summary } => summary,
        other => panic!("expected done, got {other:?}"),
    }
}

#[tokio::test]
async fn ebs_snapshot_makes_one_tagged_snapshot_per_job_and_keeps_the_newest_n() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[("Name", "orders-data")]).await;
    let task = unique("snap");
    let params = json!({ "retain": 2, "tags": { "Env": "test-{task}" } });
    let mut last = None;
    for event in 0..4 {
        let j = job(&task, &format!("e{event}"), "ebs-snapshot", &params, ResourceType::Volume, &vol, REGION);
        let summary = done(&erased(EbsSnapshot).start(ctx(&j, &aws)).await).to_owned();
        assert!(summary.contains(&vol) && summary.contains("completed"), "{summary}");
        if event == 0 {
            // The same job again (a redelivery): it finds its snapshot and makes no other.
            done(&erased(EbsSnapshot).start(ctx(&j, &aws)).await);
            assert_eq!(snapshots(&ec2, "opsfleet:job", &j.id).await.len(), 1, "one snapshot per job");
        }
        last = Some(j);
    }
    let last = last.expect("jobs");
    let kept = snapshots(&ec2, "opsfleet:task", &task).await;
    assert_eq!(kept.len(), 2, "retain = 2 keeps two: {kept:?}");
    let mine = snapshots(&ec2, "opsfleet:job", &last.id).await;
    assert_eq!(mine.len(), 1, "the newest job's snapshot is kept");
    let t = tag_map(mine[0].tags());
    assert_eq!(t.get("opsfleet:task"), Some(&task));
    assert_eq!(t.get("opsfleet:source"), Some(&vol));
    assert_eq!(t.get("Name").map(String::as_str), Some("orders-data"), "the volume's tags are copied");
    assert_eq!(t.get("Env"), Some(&format!("test-{task}")), "tag values are templates");
}

#[tokio::test]
async fn ebs_snapshot_of_an_instance_takes_each_volume_and_an_opted_out_one_is_skipped() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    let data = volume(&ec2, &[]).await;
    ec2.attach_volume().volume_id(&data).instance_id(&id).device("/dev/sdf").send().await.expect("attach");
    let task = unique("inst");
    let j = job(&task, "e", "ebs-snapshot", &json!({}), ResourceType::Instance, &id, REGION);
    done(&erased(EbsSnapshot).start(ctx(&j, &aws)).await);
    let made = snapshots(&ec2, "opsfleet:job", &j.id).await;
    let mut sources: Vec<String> = made.iter().filter_map(|s| s.volume_id().map(str::to_owned)).collect();
    sources.sort();
    assert_eq!(sources.len(), 2, "one snapshot per attached volume: {made:?}");
    assert!(sources.contains(&data));

    ec2.create_tags().resources(&id).set_tags(Some(tags(&[("opsfleet:skip", "true")]))).send().await.expect("tag");
    let again = job(&task, "e2", "ebs-snapshot", &json!({}), ResourceType::Instance, &id, REGION);
    match erased(EbsSnapshot).start(ctx(&again, &aws)).await {
        Step::Skipped { reason } => assert!(reason.contains("opsfleet:skip"), "{reason}"),
        other => panic!("an opted-out instance is skipped, not {other:?}"),
    }
    assert!(snapshots(&ec2, "opsfleet:job", &again.id).await.is_empty());
}

#[tokio::test]
async fn snapshot_copy_copies_once_into_the_destination_and_deletes_the_source_when_asked() {
    let aws = accounts().await;
    let east = ec2(&aws, REGION).await;
    let west = ec2(&aws, "us-west-2").await;
    let vol = volume(&east, &[]).await;
    let source =
        east.create_snapshot().volume_id(&vol).send().await.expect("snapshot").snapshot_id().expect("id").to_owned();
    let task = unique("copy");
    let params = json!({ "destination_region": "us-west-2", "delete_source": true, "tags": { "From": "{region}" } });
    let j = job(&task, "e", "snapshot-copy", &params, ResourceType::Snapshot, &source, REGION);
    let summary = done(&erased(SnapshotCopy).start(ctx(&j, &aws)).await).to_owned();
    assert!(summary.contains("us-west-2") && summary.contains("source deleted"), "{summary}");
    // Run again (a redelivery): no second copy.
    done(&erased(SnapshotCopy).check(ctx(&j, &aws), &json!({ "copy": null })).await);
    let copies = snapshots(&west, "opsfleet:job", &j.id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(tag_map(copies[0].tags()).get("From").map(String::as_str), Some(REGION));
    let gone = east.describe_snapshots().snapshot_ids(&source).send().await;
    assert!(gone.map(|o| o.snapshots().is_empty()).unwrap_or(true), "the source is deleted");
}

#[tokio::test]
async fn ami_create_images_once_tags_its_snapshots_and_deregisters_beyond_retain() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    let task = unique("ami");
    let params = json!({ "retain": 1, "name": "{task}-{id}-{event.n}" });
    let mut images = Vec::new();
    for n in 0..3 {
        let mut j = job(&task, &format!("e{n}"), "ami-create", &params, ResourceType::Instance, &id, REGION);
        j.event_fields.insert("n".into(), n.to_string());
        done(&erased(AmiCreate).start(ctx(&j, &aws)).await);
        done(&erased(AmiCreate).start(ctx(&j, &aws)).await);
        let mine = ec2
            .describe_images()
            .owners("self")
            .filters(filter("tag:opsfleet:job", &j.id))
            .send()
            .await
            .expect("images");
        assert_eq!(mine.images().len(), 1, "one image per job");
        let image = mine.images()[0].clone();
        assert_eq!(image.name(), Some(format!("{task}-{id}-{n}").as_str()));
        let snapshot =
            image.block_device_mappings()[0].ebs().and_then(|e| e.snapshot_id()).expect("snapshot").to_owned();
        assert_eq!(snapshots(&ec2, "opsfleet:job", &j.id).await.len(), 1, "its snapshot is tagged");
        images.push((image.image_id().expect("id").to_owned(), snapshot));
    }
    let left =
        ec2.describe_images().owners("self").filters(filter("tag:opsfleet:task", &task)).send().await.expect("images");
    assert_eq!(left.images().len(), 1, "retain = 1");
    let deleted = ec2.describe_snapshots().snapshot_ids(&images[0].1).send().await;
    assert!(deleted.map(|o| o.snapshots().is_empty()).unwrap_or(true), "a deregistered image's snapshots go too");
}

#[tokio::test]
async fn instance_power_reaches_the_state_asked_for_and_reboots_once_per_job() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    let task = unique("power");
    let state = |ec2: aws_sdk_ec2::Client, id: String| async move {
        let out = ec2.describe_instances().instance_ids(id).send().await.expect("describe");
        out.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default()
    };
    let stop = job(&task, "e1", "instance-power", &json!({ "operation": "stop" }), ResourceType::Instance, &id, REGION);
    assert_eq!(done(&erased(InstancePower).start(ctx(&stop, &aws)).await), format!("{id} is stopped"));
    assert_eq!(state(ec2.clone(), id.clone()).await, "stopped");
    let start =
        job(&task, "e2", "instance-power", &json!({ "operation": "start" }), ResourceType::Instance, &id, REGION);
    assert_eq!(done(&erased(InstancePower).start(ctx(&start, &aws)).await), format!("{id} is running"));
    let reboot =
        job(&task, "e3", "instance-power", &json!({ "operation": "reboot" }), ResourceType::Instance, &id, REGION);
    done(&erased(InstancePower).start(ctx(&reboot, &aws)).await);
    let again = done(&erased(InstancePower).start(ctx(&reboot, &aws)).await).to_owned();
    assert!(again.contains("rebooted by this job before"), "a redelivered reboot does not reboot again: {again}");

    // Verification: an effect that cannot be reached is a failure, never a success.
    ec2.terminate_instances().instance_ids(&id).send().await.expect("terminate");
    let late =
        job(&task, "e4", "instance-power", &json!({ "operation": "start" }), ResourceType::Instance, &id, REGION);
    match erased(InstancePower).start(ctx(&late, &aws)).await {
        Step::Failed { retryable: false, error } => assert!(error.contains("terminated"), "{error}"),
        other => panic!("starting a terminated instance must fail, not {other:?}"),
    }
}

#[tokio::test]
async fn tag_sets_rendered_tags_removes_others_and_reads_them_back() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[("Old", "x"), ("Keep", "y")]).await;
    let task = unique("tag");
    let params = json!({ "add": { "Owner": "{task}", "Seen": "{date}" }, "remove": ["Old"] });
    let j = job(&task, "e", "tag", &params, ResourceType::Volume, &vol, REGION);
    done(&erased(Tag).start(ctx(&j, &aws)).await);
    let out = ec2.describe_volumes().volume_ids(&vol).send().await.expect("describe");
    let t = tag_map(out.volumes()[0].tags());
    assert_eq!(t.get("Owner"), Some(&task));
    assert_eq!(t.get("Seen").map(String::as_str), Some("2026-11-25"));
    assert_eq!(t.get("Keep").map(String::as_str), Some("y"));
    assert!(!t.contains_key("Old"));
}

#[tokio::test]
async fn snapshot_retention_deletes_only_what_opsfleet_made_beyond_keep() {
    let aws = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[]).await;
    let theirs =
        ec2.create_snapshot().volume_id(&vol).send().await.expect("snapshot").snapshot_id().expect("id").to_owned();
    let task = unique("made");
    for n in 0..4 {
        let j = job(&task, &format!("e{n}"), "ebs-snapshot", &json!({}), ResourceType::Volume, &vol, REGION);
        done(&erased(EbsSnapshot).start(ctx(&j, &aws)).await);
    }
    let retention =
        job(&unique("ret"), "e", "snapshot-retention", &json!({ "keep": 1 }), ResourceType::Volume, &vol, REGION);
    let summary = done(&erased(SnapshotRetention).start(ctx(&retention, &aws)).await).to_owned();
    assert!(summary.contains("3 snapshots deleted, 1 kept"), "{summary}");
    assert_eq!(snapshots(&ec2, "opsfleet:task", &task).await.len(), 1);
    let still = ec2.describe_snapshots().snapshot_ids(&theirs).send().await.expect("theirs");
    assert_eq!(still.snapshots().len(), 1, "a snapshot opsfleet did not make is never deleted");
}

#[tokio::test]
async fn notify_publishes_a_summary_of_the_event_the_job_and_the_resource() {
    let aws = accounts().await;
    let backend = AwsBackend::from_env().await;
    let sns = aws.sns(ACCOUNT, REGION).await.expect("sns");
    let name = unique("page");
    let topic = sns.create_topic().name(&name).send().await.expect("topic").topic_arn().expect("arn").to_owned();
    let queue = backend
        .sqs()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("queue")
        .queue_url()
        .expect("url")
        .to_owned();
    let queue_arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
    sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(&queue_arn).send().await.expect("subscribe");
    let task = unique("notify");
    let j = job(
        &task,
        "evt-1",
        "notify",
        &json!({ "topic_arn": topic, "subject": "on {id}" }),
        ResourceType::Instance,
        "i-0123456789abcdef0",
        REGION,
    );
    assert!(done(&erased(Notify).start(ctx(&j, &aws)).await).starts_with("published"));
    let got = backend.sqs().receive_message().queue_url(&queue).wait_time_seconds(2).send().await.expect("receive");
    let body: Value = serde_json::from_str(got.messages()[0].body().expect("body")).expect("SNS envelope");
    assert_eq!(body["Subject"], "on i-0123456789abcdef0");
    let message: Value = serde_json::from_str(body["Message"].as_str().expect("message")).expect("summary");
    assert_eq!((message["job"].as_str(), message["task"].as_str()), (Some(j.id.as_str()), Some(task.as_str())));
    assert_eq!(message["event"]["id"], "evt-1");
    assert_eq!(message["resource"]["id"], "i-0123456789abcdef0");
}

#[tokio::test]
async fn cross_region_copies_run_one_at_a_time_under_a_limit_of_one() {
    let aws = accounts().await;
    let east = ec2(&aws, REGION).await;
    let fleet = support::Fleet::with(
        r#"
[fleet]
name = "w"
partitions = 2

[limits.snapshot-copy]
max = 1
pool = "{params.destination_region}"

[worker]
lease_secs = 5
visibility_secs = 10
shutdown_grace_secs = 5

[[tasks]]
name = "copy"
pattern = { source = ["x"] }
targets = "event"
action = "snapshot-copy"
params = { destination_region = "eu-west-1" }
"#,
    )
    .await;
    let mut jobs = Vec::new();
    for n in 0..3 {
        let vol = volume(&east, &[]).await;
        let snap = east
            .create_snapshot()
            .volume_id(&vol)
            .send()
            .await
            .expect("snapshot")
            .snapshot_id()
            .expect("id")
            .to_owned();
        let params = fleet.config.task("copy").expect("task").params.clone();
        let mut j = job(
            "copy",
            &format!("limit-{}-{n}", unique("e")),
            "snapshot-copy",
            &params,
            ResourceType::Snapshot,
            &snap,
            REGION,
        );
        j.partition = opsfleet_protocol::job::partition_of(&j.resource.key(), 2);
        fleet.send(&j, &j.id).await;
        jobs.push(j);
    }
    let backend: Arc<dyn opsfleet_protocol::ports::Backend> = fleet.backend.clone();
    let (stop, handle) = fleet.start_with(backend, None, "copier", Some(Arc::clone(&aws))).await;
    fleet.wait_final(&jobs, std::time::Duration::from_secs(60)).await;
    stop.cancel();
    handle.await.expect("worker");
    let mut intervals = Vec::new();
    for j in &jobs {
        assert_eq!(fleet.status(j).await, opsfleet_worker::ledger::Status::Succeeded);
        for a in fleet.ledger.attempts(&j.id).await.expect("attempts") {
            intervals.push((a.started_ms, a.released_ms));
        }
    }
    assert_eq!(support::peak_overlap(&intervals), 1, "one copy at a time: {intervals:?}");
    let west = ec2(&aws, "eu-west-1").await;
    for j in &jobs {
        assert_eq!(snapshots(&west, "opsfleet:job", &j.id).await.len(), 1);
    }
}
