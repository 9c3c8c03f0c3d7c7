//! The EC2 and SNS actions against the emulator (moto, which `tests/run.sh` starts) behind the
//! EC2 realism layer (eventual consistency, pending snapshots and images, EC2's throttling
//! buckets, retryable server errors): each action's effect, its idempotency (a job run twice
//! makes nothing twice), its verification (no success before the effect is there), retention,
//! and the opt-out tag. Each action runs as the worker runs it (`support::ec2::run`). The
//! instance actions are in `ec2_instances.rs`; what the actions decide on a describe right
//! after a create, a lost reply or a start without capacity is in `ec2_under_aws.rs`.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::ResourceType;
use opsfleet_worker::actions::{
    erased, AmiCreate, EbsSnapshot, ImageCopy, ImageLifecycle, Notify, SnapshotCopy, SnapshotRetention, Tag,
};
use opsfleet_worker::Step;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::ec2::*;

#[tokio::test]
async fn ebs_snapshot_makes_one_tagged_snapshot_per_job_and_keeps_the_newest_n() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[("Name", "orders-data")]).await;
    layer.settle().await;
    let task = unique("snap");
    let params = json!({ "retain": 2, "tags": { "Env": "test-{task}" }, "check_after_secs": 1 });
    let mut last = None;
    for event in 0..4 {
        let j = job(&task, &format!("e{event}"), "ebs-snapshot", &params, ResourceType::Volume, &vol, REGION);
        let summary = done(&run(&erased(EbsSnapshot), &j, &aws).await).to_owned();
        assert!(summary.contains(&vol) && summary.contains("completed"), "{summary}");
        if event == 0 {
            // The same job again (a redelivery): it finds its snapshot and makes no other.
            layer.settle().await;
            done(&run(&erased(EbsSnapshot), &j, &aws).await);
            layer.settle().await;
            assert_eq!(snapshots(&ec2, "opsfleet:job", &j.id).await.len(), 1, "one snapshot per job");
        }
        layer.settle().await;
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
    assert!(layer.counts().get("pending").copied().unwrap_or(0) > 0, "snapshots were pending: {:?}", layer.counts());
}

#[tokio::test]
async fn ebs_snapshot_of_an_instance_takes_its_volumes_as_one_set_and_an_opted_out_one_is_skipped() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    let data = volume(&ec2, &[("Name", "data")]).await;
    layer.settle().await;
    ec2.attach_volume().volume_id(&data).instance_id(&id).device("/dev/sdf").send().await.expect("attach");
    let task = unique("inst");
    let j = job(&task, "e", "ebs-snapshot", &json!({}), ResourceType::Instance, &id, REGION);
    done(&run(&erased(EbsSnapshot), &j, &aws).await);
    layer.settle().await;
    let made = snapshots(&ec2, "opsfleet:job", &j.id).await;
    let mut sources: Vec<String> = made.iter().filter_map(|s| s.volume_id().map(str::to_owned)).collect();
    sources.sort();
    assert_eq!(sources.len(), 2, "one snapshot per attached volume: {made:?}");
    let of_data = made.iter().find(|s| s.volume_id() == Some(data.as_str())).expect("the data volume's");
    assert_eq!(tag_map(of_data.tags()).get("Name").map(String::as_str), Some("data"), "each carries its volume's tags");

    let data_only =
        job(&task, "e1", "ebs-snapshot", &json!({ "exclude_boot_volume": true }), ResourceType::Instance, &id, REGION);
    done(&run(&erased(EbsSnapshot), &data_only, &aws).await);
    layer.settle().await;
    let made = snapshots(&ec2, "opsfleet:job", &data_only.id).await;
    assert_eq!(made.iter().filter_map(|s| s.volume_id()).collect::<Vec<_>>(), vec![data.as_str()], "no boot volume");

    ec2.create_tags().resources(&id).set_tags(Some(tags(&[("opsfleet:skip", "true")]))).send().await.expect("tag");
    layer.settle().await;
    let again = job(&task, "e2", "ebs-snapshot", &json!({}), ResourceType::Instance, &id, REGION);
    match run(&erased(EbsSnapshot), &again, &aws).await {
        Step::Skipped { reason } => assert!(reason.contains("opsfleet:skip"), "{reason}"),
        other => panic!("an opted-out instance is skipped, not {other:?}"),
    }
    assert!(snapshots(&ec2, "opsfleet:job", &again.id).await.is_empty());
}

#[tokio::test]
async fn snapshot_copy_copies_once_into_the_destination_and_deletes_the_source_when_asked() {
    let (aws, layer) = accounts().await;
    let east = ec2(&aws, REGION).await;
    let west = ec2(&aws, "us-west-2").await;
    let vol = volume(&east, &[]).await;
    let source = snapshot_of(&east, &vol).await;
    layer.settle().await;
    let task = unique("copy");
    let params = json!({ "destination_region": "us-west-2", "delete_source": true, "tags": { "From": "{region}" } });
    let j = job(&task, "e", "snapshot-copy", &params, ResourceType::Snapshot, &source, REGION);
    let summary = done(&run(&erased(SnapshotCopy), &j, &aws).await).to_owned();
    assert!(summary.contains("us-west-2") && summary.contains("source deleted"), "{summary}");
    layer.settle().await;
    // Run again (a redelivery): no second copy.
    done(&run(&erased(SnapshotCopy), &j, &aws).await);
    layer.settle().await;
    let copies = snapshots(&west, "opsfleet:job", &j.id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    let t = tag_map(copies[0].tags());
    assert_eq!(t.get("From").map(String::as_str), Some(REGION));
    assert_eq!(t.get("opsfleet:volume"), Some(&vol), "the copy names its source's volume");
    let gone = east.describe_snapshots().snapshot_ids(&source).send().await;
    assert!(gone.map(|o| o.snapshots().is_empty()).unwrap_or(true), "the source is deleted");
}

#[tokio::test]
async fn snapshot_copy_keeps_the_newest_copies_of_a_volume_and_fails_on_a_source_in_error() {
    let (aws, layer) = accounts().await;
    let east = ec2(&aws, REGION).await;
    let west = ec2(&aws, "us-west-2").await;
    let vol = volume(&east, &[]).await;
    layer.settle().await;
    let task = unique("copies");
    let params = json!({ "destination_region": "us-west-2", "retain": 2, "check_after_secs": 1 });
    for n in 0..3 {
        let source = snapshot_of(&east, &vol).await;
        layer.settle().await;
        let j = job(&task, &format!("e{n}"), "snapshot-copy", &params, ResourceType::Snapshot, &source, REGION);
        done(&run(&erased(SnapshotCopy), &j, &aws).await);
        layer.settle().await;
    }
    assert_eq!(snapshots(&west, "opsfleet:task", &task).await.len(), 2, "retain = 2 copies of the volume");

    let broken = volume(&east, &[]).await;
    layer.change(|p| {
        p.erroring_volumes.insert(broken.clone());
    });
    layer.settle().await;
    let source = snapshot_of(&east, &broken).await;
    tokio::time::sleep(layer.plan().pending + Duration::from_millis(200)).await;
    let j = job(&task, "bad", "snapshot-copy", &params, ResourceType::Snapshot, &source, REGION);
    match run(&erased(SnapshotCopy), &j, &aws).await {
        Step::Failed { retryable: false, error } => assert!(error.contains("state error"), "{error}"),
        other => panic!("a source in error fails, not {other:?}"),
    }
}

#[tokio::test]
async fn ami_create_images_once_tags_its_snapshots_as_it_makes_them_and_deregisters_beyond_retain() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let task = unique("ami");
    let params = json!({ "retain": 1, "name": "{task}-{id}-{event.n}", "check_after_secs": 1 });
    let mut made = Vec::new();
    for n in 0..3 {
        let mut j = job(&task, &format!("e{n}"), "ami-create", &params, ResourceType::Instance, &id, REGION);
        j.event_fields.insert("n".into(), n.to_string());
        done(&run(&erased(AmiCreate), &j, &aws).await);
        layer.settle().await;
        done(&run(&erased(AmiCreate), &j, &aws).await);
        layer.settle().await;
        let mine = images(&ec2, "opsfleet:job", &j.id).await;
        assert_eq!(mine.len(), 1, "one image per job");
        let image = mine[0].clone();
        assert_eq!(image.name(), Some(format!("{task}-{id}-{n}").as_str()));
        let snapshot =
            image.block_device_mappings()[0].ebs().and_then(|e| e.snapshot_id()).expect("snapshot").to_owned();
        assert_eq!(snapshots(&ec2, "opsfleet:job", &j.id).await.len(), 1, "its snapshot is tagged");
        made.push((image.image_id().expect("id").to_owned(), snapshot));
    }
    let left = images(&ec2, "opsfleet:task", &task).await;
    assert_eq!(left.len(), 1, "retain = 1");
    let deleted = ec2.describe_snapshots().snapshot_ids(&made[0].1).send().await;
    assert!(deleted.map(|o| o.snapshots().is_empty()).unwrap_or(true), "a deregistered image's snapshots go too");
}

#[tokio::test]
async fn ami_create_retention_spares_an_image_shared_with_another_account() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let task = unique("shared");
    let params = json!({ "retain": 1, "name": "{task}-{event.n}", "check_after_secs": 1 });
    let mut first = None;
    for n in 0..2 {
        let mut j = job(&task, &format!("e{n}"), "ami-create", &params, ResourceType::Instance, &id, REGION);
        j.event_fields.insert("n".into(), n.to_string());
        let summary = done(&run(&erased(AmiCreate), &j, &aws).await).to_owned();
        layer.settle().await;
        if n == 0 {
            let image = summary.split_whitespace().nth(1).expect("image id").to_owned();
            let permission = aws_sdk_ec2::types::LaunchPermission::builder().user_id("210987654321").build();
            let modification = aws_sdk_ec2::types::LaunchPermissionModifications::builder().add(permission).build();
            ec2.modify_image_attribute().image_id(&image).launch_permission(modification).send().await.expect("share");
            first = Some(image);
        } else {
            assert!(summary.contains("kept as in use elsewhere") && summary.contains("shared"), "{summary}");
        }
    }
    let first = first.expect("image");
    let still = ec2.describe_images().image_ids(&first).send().await.expect("describe");
    assert_eq!(still.images().len(), 1, "a shared image is never deregistered by retention");
}

#[tokio::test]
async fn image_copy_copies_once_even_when_its_reply_is_lost_tags_the_copy_and_keeps_the_newest_n() {
    let (aws, layer) = accounts().await;
    let east = ec2(&aws, REGION).await;
    let west = ec2(&aws, "us-west-2").await;
    let id = instance(&east).await;
    layer.settle().await;
    let task = unique("imgcopy");
    let source = east
        .create_image()
        .instance_id(&id)
        .name(format!("{task}-source"))
        .tag_specifications(spec(aws_sdk_ec2::types::ResourceType::Image, &[("Team", "ops")]))
        .send()
        .await
        .expect("image")
        .image_id()
        .expect("id")
        .to_owned();
    tokio::time::sleep(layer.plan().pending + Duration::from_millis(200)).await;
    layer.settle().await;
    // Every copy's reply is lost: the SDK sends it again with the same client token, and EC2
    // answers with the copy it made.
    layer.change(|p| p.lost_creates = 1.0);
    let params = json!({ "destination_region": "us-west-2", "retain": 2, "name": "{task}-{event.n}",
        "tags": { "From": "{region}" }, "check_after_secs": 1 });
    let mut last = None;
    for n in 0..3 {
        let mut j = job(&task, &format!("e{n}"), "image-copy", &params, ResourceType::Image, &source, REGION);
        j.event_fields.insert("n".into(), n.to_string());
        let summary = done(&run(&erased(ImageCopy), &j, &aws).await).to_owned();
        assert!(summary.contains("us-west-2"), "{summary}");
        layer.settle().await;
        // A redelivery makes nothing new either.
        done(&run(&erased(ImageCopy), &j, &aws).await);
        layer.settle().await;
        let mine = images(&west, "opsfleet:job", &j.id).await;
        assert_eq!(mine.len(), 1, "one copy per job");
        let copy = mine[0].clone();
        let t = tag_map(copy.tags());
        assert_eq!((t.get("From").map(String::as_str), t.get("Team").map(String::as_str)), (Some(REGION), Some("ops")));
        assert_eq!(t.get("opsfleet:source"), Some(&source));
        assert_eq!(copy.name(), Some(format!("{task}-{n}").as_str()));
        last = copy.image_id().map(str::to_owned);
    }
    assert!(layer.counts().get("copy_token_repeated").is_some_and(|&n| n >= 3), "{:?}", layer.counts());
    let kept = images(&west, "opsfleet:task", &task).await;
    assert_eq!(kept.len(), 2, "retain = 2 copies of the image");
    assert!(kept.iter().any(|i| i.image_id() == last.as_deref()), "the newest copy is kept");
}

#[tokio::test]
async fn tag_sets_rendered_tags_removes_others_and_reads_them_back() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[("Old", "x"), ("Keep", "y")]).await;
    layer.settle().await;
    let task = unique("tag");
    let params = json!({ "add": { "Owner": "{task}", "Seen": "{date}" }, "remove": ["Old"] });
    let mut j = job(&task, "e", "tag", &params, ResourceType::Volume, &vol, REGION);
    j.received_ms = 1_795_631_405_000;
    let first = erased(Tag).start(ctx(&j, &aws)).await;
    assert!(matches!(first, Step::Pending { .. }), "tags a read does not show yet are waited for: {first:?}");
    done(&run(&erased(Tag), &j, &aws).await);
    let out = ec2.describe_volumes().volume_ids(&vol).send().await.expect("describe");
    let t = tag_map(out.volumes()[0].tags());
    assert_eq!(t.get("Owner"), Some(&task));
    assert_eq!(t.get("Seen").map(String::as_str), Some("2026-11-25"), "{{date}} is the job's event time");
    assert_eq!(t.get("Keep").map(String::as_str), Some("y"));
    assert!(!t.contains_key("Old"));
}

#[tokio::test]
async fn snapshot_retention_deletes_only_what_opsfleet_made_beyond_keep() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[]).await;
    let theirs = snapshot_of(&ec2, &vol).await;
    layer.settle().await;
    let task = unique("made");
    for n in 0..4 {
        let j = job(
            &task,
            &format!("e{n}"),
            "ebs-snapshot",
            &json!({ "check_after_secs": 1 }),
            ResourceType::Volume,
            &vol,
            REGION,
        );
        done(&run(&erased(EbsSnapshot), &j, &aws).await);
        layer.settle().await;
    }
    let retention =
        job(&unique("ret"), "e", "snapshot-retention", &json!({ "keep": 1 }), ResourceType::Volume, &vol, REGION);
    let summary = done(&run(&erased(SnapshotRetention), &retention, &aws).await).to_owned();
    assert!(summary.contains("3 snapshots deleted, 1 kept"), "{summary}");
    layer.settle().await;
    assert_eq!(snapshots(&ec2, "opsfleet:task", &task).await.len(), 1);
    let still = ec2.describe_snapshots().snapshot_ids(&theirs).send().await.expect("theirs");
    assert_eq!(still.snapshots().len(), 1, "a snapshot opsfleet did not make is never deleted");
}

#[tokio::test]
async fn snapshot_retention_leaves_the_snapshots_behind_images_and_other_tasks_alone() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let root = {
        let out = ec2.describe_instances().instance_ids(&id).send().await.expect("describe");
        let instance = out.reservations()[0].instances()[0].clone();
        instance.block_device_mappings()[0].ebs().and_then(|e| e.volume_id()).expect("root volume").to_owned()
    };
    let (ami_task, backups, other) = (unique("images"), unique("backups"), unique("other"));
    for n in 0..2 {
        let mut j = job(
            &ami_task,
            &format!("a{n}"),
            "ami-create",
            &json!({ "name": "{task}-{event.n}", "check_after_secs": 1 }),
            ResourceType::Instance,
            &id,
            REGION,
        );
        j.event_fields.insert("n".into(), n.to_string());
        done(&run(&erased(AmiCreate), &j, &aws).await);
        for (task, e) in [(&backups, "b"), (&other, "o")] {
            let j = job(
                task,
                &format!("{e}{n}"),
                "ebs-snapshot",
                &json!({ "check_after_secs": 1 }),
                ResourceType::Volume,
                &root,
                REGION,
            );
            done(&run(&erased(EbsSnapshot), &j, &aws).await);
        }
        layer.settle().await;
    }
    let params = json!({ "keep": 1, "tasks": [backups] });
    let retention = job(&unique("ret"), "e", "snapshot-retention", &params, ResourceType::Volume, &root, REGION);
    let summary = done(&run(&erased(SnapshotRetention), &retention, &aws).await).to_owned();
    assert!(summary.contains("1 snapshots deleted"), "{summary}");
    layer.settle().await;
    assert_eq!(snapshots(&ec2, "opsfleet:task", &backups).await.len(), 1, "the task named keeps its newest");
    assert_eq!(snapshots(&ec2, "opsfleet:task", &other).await.len(), 2, "another task's are not touched");
    assert_eq!(snapshots(&ec2, "opsfleet:task", &ami_task).await.len(), 2, "the images' snapshots are not touched");

    // Any task's (no `tasks`): still never an image's, and each task keeps its newest.
    let all =
        job(&unique("ret"), "e", "snapshot-retention", &json!({ "keep": 1 }), ResourceType::Volume, &root, REGION);
    let summary = done(&run(&erased(SnapshotRetention), &all, &aws).await).to_owned();
    assert!(summary.contains("1 snapshots deleted"), "{summary}");
    layer.settle().await;
    assert_eq!(snapshots(&ec2, "opsfleet:task", &other).await.len(), 1);
    assert_eq!(snapshots(&ec2, "opsfleet:task", &ami_task).await.len(), 2);
}

#[tokio::test]
async fn notify_publishes_a_summary_of_the_event_the_job_and_the_resource() {
    let (aws, _layer) = accounts().await;
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
    assert!(done(&run(&erased(Notify), &j, &aws).await).starts_with("published"));
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
    let (aws, layer) = accounts().await;
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
params = { destination_region = "eu-west-1", check_after_secs = 1 }
"#,
    )
    .await;
    let mut jobs = Vec::new();
    for n in 0..3 {
        let vol = volume(&east, &[]).await;
        let snap = snapshot_of(&east, &vol).await;
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
        layer.settle().await;
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
    layer.settle().await;
    for j in &jobs {
        assert_eq!(snapshots(&west, "opsfleet:job", &j.id).await.len(), 1);
    }
}

#[tokio::test]
async fn image_lifecycle_deprecates_by_age_and_deregisters_only_what_opsfleet_made_and_no_template_launches() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let instance = instance(&ec2).await;
    layer.settle().await;
    let image = |name: String, pairs: &'static [(&'static str, &'static str)]| {
        let ec2 = ec2.clone();
        let instance = instance.clone();
        async move {
            let mut request = ec2.create_image().instance_id(instance).name(name);
            if !pairs.is_empty() {
                request = request.tag_specifications(spec(aws_sdk_ec2::types::ResourceType::Image, pairs));
            }
            request.send().await.expect("create image").image_id().expect("id").to_owned()
        }
    };
    let theirs = image(unique("theirs"), &[]).await;
    let ours = image(unique("ours"), &[("opsfleet:job", "j-old")]).await;
    let launched = image(unique("launched"), &[("opsfleet:job", "j-old")]).await;
    let template = unique("web");
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(&launched).build();
    ec2.create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(data)
        .send()
        .await
        .expect("template");
    layer.settle().await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the layer's pending window
    let described = |id: String| {
        let ec2 = ec2.clone();
        async move {
            let out = ec2.describe_images().image_ids(id).send().await;
            out.ok().and_then(|o| o.images().first().cloned())
        }
    };
    let task = unique("lifecycle");
    let lifecycle = erased(ImageLifecycle);
    let params = json!({ "deprecate_after_days": 30, "deregister_after_days": 0, "check_after_secs": 1 });

    // Not made by opsfleet: deprecated 30 days after it was made, not deregistered.
    let j = job(&task, "e1", "image-lifecycle", &params, ResourceType::Image, &theirs, REGION);
    let summary = done(&run(&lifecycle, &j, &aws).await).to_owned();
    let made = described(theirs.clone()).await.expect("still there").creation_date().expect("date").to_owned();
    let made = aws_sdk_ec2::primitives::DateTime::from_str(&made, aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
        .expect("a date");
    let due = aws_sdk_ec2::primitives::DateTime::from_millis(
        made.to_millis().expect("ms") / 60_000 * 60_000 + 30 * 86_400_000,
    )
    .fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
    .expect("format");
    assert_eq!(
        summary,
        format!("{theirs} deprecates at {due}; 0 days old, past 0, but kept: opsfleet did not make it")
    );
    assert_eq!(
        described(theirs.clone()).await.and_then(|i| i.deprecation_time().map(str::to_owned)),
        Some(due.clone())
    );
    layer.settle().await;
    let again = done(&run(&lifecycle, &j, &aws).await).to_owned();
    assert!(again.contains("opsfleet did not make it") && again.contains("already"), "{again}");

    // Made by opsfleet and launched by no template: deregistered with its snapshots.
    let snapshots: Vec<String> = described(ours.clone())
        .await
        .expect("ours")
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    assert!(!snapshots.is_empty());
    let j = job(&task, "e2", "image-lifecycle", &params, ResourceType::Image, &ours, REGION);
    assert_eq!(done(&run(&lifecycle, &j, &aws).await), format!("{ours} deregistered with its snapshots"));
    assert!(described(ours.clone()).await.is_none_or(|i| i.state().map(|s| s.as_str()) == Some("deregistered")));
    let left = ec2.describe_snapshots().snapshot_ids(&snapshots[0]).send().await;
    assert!(left.is_err() || left.is_ok_and(|o| o.snapshots().is_empty()), "its snapshots go with it");
    assert_eq!(done(&run(&lifecycle, &j, &aws).await), format!("{ours} is deregistered"), "again: nothing to do");

    // Made by opsfleet but a launch template's image: kept.
    let j = job(&task, "e3", "image-lifecycle", &params, ResourceType::Image, &launched, REGION);
    let summary = done(&run(&lifecycle, &j, &aws).await).to_owned();
    assert!(summary.contains(&format!("launch template {template} version 1 launches it")), "{summary}");
    assert!(described(launched.clone()).await.is_some_and(|i| i.state().map(|s| s.as_str()) == Some("available")));

    // Opted out: nothing.
    ec2.create_tags()
        .resources(&launched)
        .tags(tags(&[("opsfleet:skip", "true")])[0].clone())
        .send()
        .await
        .expect("tag");
    layer.settle().await;
    let j = job(&task, "e4", "image-lifecycle", &params, ResourceType::Image, &launched, REGION);
    assert!(matches!(run(&lifecycle, &j, &aws).await, Step::Skipped { .. }));
}
