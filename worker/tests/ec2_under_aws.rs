//! The EC2 actions' decisions under EC2 as AWS really behaves, through the realism layer in
//! front of the emulator: a describe right after a create that does not know the resource yet,
//! a create whose reply was lost, a reboot that failed, a start that falls back to `stopped` or
//! finds no capacity, a stop that hangs in `stopping`, a resize cut off half-way. Each test fails without its fix.

mod support;

use opsfleet_protocol::ResourceType;
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::actions::{erased, AmiCreate, EbsSnapshot, InstancePower, InstanceResize};
use opsfleet_worker::Step;
use serde_json::json;
use std::time::Duration;
use support::ec2::*;

#[tokio::test]
async fn a_snapshot_a_describe_does_not_know_yet_is_waited_for_not_failed() {
    // Three seconds of eventual consistency: the check right after the create does not find
    // the snapshot by its id.
    let plan = Ec2Plan { consistency: Duration::from_secs(3), ..Ec2Plan::aws() };
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, ..plan }).await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[]).await;
    layer.settle().await;
    let j =
        job(&unique("lag"), "e", "ebs-snapshot", &json!({ "check_after_secs": 1 }), ResourceType::Volume, &vol, REGION);
    let first = erased(EbsSnapshot).start(ctx(&j, &aws)).await;
    assert!(matches!(first, Step::Pending { .. }), "not found yet is pending, not {first:?}");
    assert!(layer.counts().get("not_found").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
    let Step::Pending { state, .. } = first else { unreachable!() };
    let mut step = erased(EbsSnapshot).check(at(&j, &aws, 1, 1), &state).await;
    for n in 2..40 {
        let Step::Pending { state, .. } = &step else { break };
        tokio::time::sleep(Duration::from_millis(250)).await;
        step = erased(EbsSnapshot).check(at(&j, &aws, 1, n), state).await;
    }
    assert!(done(&step).contains("completed"));
}

#[tokio::test]
async fn a_create_whose_reply_was_lost_is_found_again_not_made_twice() {
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, ..Ec2Plan::aws() }).await;
    let ec2 = ec2(&aws, REGION).await;
    let vol = volume(&ec2, &[]).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let task = unique("doubt");
    let snap = job(&task, "e", "ebs-snapshot", &json!({ "check_after_secs": 1 }), ResourceType::Volume, &vol, REGION);
    let image = job(&task, "e", "ami-create", &json!({ "check_after_secs": 1 }), ResourceType::Instance, &id, REGION);
    // Every create is made and its reply lost; then EC2 answers again.
    layer.change(|p| p.lost_creates = 1.0);
    for (action, j) in [(erased(EbsSnapshot), &snap), (erased(AmiCreate), &image)] {
        match action.start(ctx(j, &aws)).await {
            Step::Failed { retryable: true, error } => assert!(error.contains("in doubt"), "{error}"),
            other => panic!("a create without an answer is in doubt, not {other:?}"),
        }
    }
    assert_eq!(layer.counts().get("lost_create"), Some(&2), "one create each, not sent again by the SDK");
    layer.change(|p| p.lost_creates = 0.0);
    done(&run_from(&erased(EbsSnapshot), &snap, &aws, 2).await);
    done(&run_from(&erased(AmiCreate), &image, &aws, 2).await);
    layer.settle().await;
    assert_eq!(snapshots(&ec2, "opsfleet:job", &snap.id).await.len(), 1, "the lost snapshot was found, not made again");
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(filter("tag:opsfleet:job", &image.id))
        .send()
        .await
        .expect("images");
    assert_eq!(images.images().len(), 1, "the lost image was found, not made again");
}

#[tokio::test]
async fn an_image_whose_create_lost_its_reply_is_known_by_its_name_though_no_describe_shows_it_yet() {
    // Longer than the action's own wait before it looks again: only the name gives it away.
    let plan = Ec2Plan { consistency: Duration::from_secs(12), server_errors: 0.0, ..Ec2Plan::aws() };
    let (aws, layer) = accounts_with(plan).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let task = unique("named");
    let params = json!({ "name": "{task}-{id}-{datetime}", "check_after_secs": 1 });
    let mut j = job(&task, "e", "ami-create", &params, ResourceType::Instance, &id, REGION);
    j.received_ms = now_ms() - 60_000;
    layer.change(|p| p.lost_creates = 1.0);
    assert!(matches!(erased(AmiCreate).start(ctx(&j, &aws)).await, Step::Failed { retryable: true, .. }));
    layer.change(|p| p.lost_creates = 0.0);
    match erased(AmiCreate).start(at(&j, &aws, 2, 0)).await {
        Step::Failed { retryable: true, error } => assert!(error.contains("InvalidAMIName.Duplicate"), "{error}"),
        other => panic!("the same name again meets its image, which no describe shows yet: {other:?}"),
    }
    layer.settle().await;
    done(&run_from(&erased(AmiCreate), &j, &aws, 3).await);
    let images =
        ec2.describe_images().owners("self").filters(filter("tag:opsfleet:job", &j.id)).send().await.expect("images");
    assert_eq!(images.images().len(), 1, "one image");
}

#[tokio::test]
async fn a_reboot_that_failed_is_tried_again_rather_than_reported_done() {
    // Every mutating call fails for a moment: the reboot does not go through.
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, ..Ec2Plan::aws() }).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let j = job(
        &unique("reboot"),
        "e",
        "instance-power",
        &json!({ "operation": "reboot" }),
        ResourceType::Instance,
        &id,
        REGION,
    );
    layer.change(|p| p.server_errors = 1.0);
    let first = erased(InstancePower).start(ctx(&j, &aws)).await;
    assert!(matches!(first, Step::Failed { retryable: true, .. }), "{first:?}");
    layer.change(|p| p.server_errors = 0.0);
    layer.settle().await;
    let second = done(&erased(InstancePower).start(at(&j, &aws, 2, 0)).await).to_owned();
    assert!(!second.contains("rebooted by this job before"), "the retry reboots: {second}");
    layer.settle().await;
    let out = ec2.describe_instances().instance_ids(&id).send().await.expect("describe");
    let tags = tag_map(out.reservations()[0].instances()[0].tags());
    assert_eq!(tags.get("opsfleet:rebooted-by"), Some(&j.id), "tagged once the reboot went through");
}

#[tokio::test]
async fn a_start_that_falls_back_to_stopped_fails_retryably_and_no_capacity_is_retried() {
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, no_capacity: 0.0, ..Ec2Plan::aws() }).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    ec2.stop_instances().instance_ids(&id).send().await.expect("stop");
    let params = json!({ "operation": "start", "check_after_secs": 1 });
    let j = job(&unique("start"), "e", "instance-power", &params, ResourceType::Instance, &id, REGION);
    layer.change(|p| {
        p.no_start.insert(id.clone());
    });
    let first = erased(InstancePower).start(ctx(&j, &aws)).await;
    let Step::Pending { state, .. } = first else { panic!("a start under way is pending, not {first:?}") };
    match erased(InstancePower).check(at(&j, &aws, 1, 1), &state).await {
        Step::Failed { retryable: true, error } => assert!(error.contains("fell back to stopped"), "{error}"),
        other => panic!("a start that fell back fails retryably, not {other:?}"),
    }
    layer.change(|p| {
        p.no_start.clear();
        p.no_capacity = 1.0;
    });
    match erased(InstancePower).start(at(&j, &aws, 2, 0)).await {
        Step::Failed { retryable: true, error } => assert!(error.contains("InsufficientInstanceCapacity"), "{error}"),
        other => panic!("no capacity is retried, not {other:?}"),
    }
    layer.change(|p| p.no_capacity = 0.0);
    assert_eq!(done(&run_from(&erased(InstancePower), &j, &aws, 3).await), format!("{id} is running"));
}

#[tokio::test]
async fn a_forced_stop_hurries_an_instance_stuck_in_stopping() {
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, ..Ec2Plan::aws() }).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    layer.change(|p| {
        p.stuck_stopping.insert(id.clone());
    });
    ec2.stop_instances().instance_ids(&id).send().await.expect("stop");
    let task = unique("stuck");
    let plain = json!({ "operation": "stop", "check_after_secs": 1 });
    let j = job(&task, "e1", "instance-power", &plain, ResourceType::Instance, &id, REGION);
    let first = erased(InstancePower).start(ctx(&j, &aws)).await;
    assert!(matches!(first, Step::Pending { .. }), "a plain stop waits for `stopping` to end: {first:?}");
    let forced = json!({ "operation": "stop", "force": true, "check_after_secs": 1 });
    let j = job(&task, "e2", "instance-power", &forced, ResourceType::Instance, &id, REGION);
    assert_eq!(done(&run(&erased(InstancePower), &j, &aws).await), format!("{id} is stopped"));
    assert_eq!(layer.counts().get("forced_stop"), Some(&1), "{:?}", layer.counts());
}

#[tokio::test]
async fn a_resize_cut_off_at_any_point_climbs_one_rung_only_and_ec2_changes_no_running_instance() {
    let (aws, layer) = accounts_with(Ec2Plan { server_errors: 0.0, no_capacity: 0.0, ..Ec2Plan::aws() }).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance_of(&ec2, "t3.small").await;
    layer.settle().await;

    // EC2 changes the type of a stopped instance only.
    let value = aws_sdk_ec2::types::AttributeValue::builder().value("t3.large").build();
    let refused = ec2.modify_instance_attribute().instance_id(&id).instance_type(value).send().await;
    let code = refused.as_ref().err().and_then(|e| e.as_service_error()).and_then(|e| e.meta().code());
    assert_eq!(code, Some("IncorrectInstanceState"), "{refused:?}");

    let up = json!({ "step": "up", "ladder": ["t3.small", "t3.medium", "t3.large"], "check_after_secs": 1 });
    let resize = erased(InstanceResize);
    // Cut off once the instance is stopping (the record is on it), then once its type changed
    // and it is starting: each later attempt steps from the recorded type.
    for (event, cut_when_starting) in [("e1", false), ("e2", true)] {
        let from = type_and_state(&ec2, &id).await.0;
        let j = job(&unique("resize"), event, "instance-resize", &up, ResourceType::Instance, &id, REGION);
        let mut step = resize.start(ctx(&j, &aws)).await;
        let mut checks = 0;
        while cut_when_starting && !starting(&step) {
            let Step::Pending { state, .. } = &step else { panic!("the resize is under way, not {step:?}") };
            tokio::time::sleep(Duration::from_millis(250)).await;
            checks += 1;
            assert!(checks < 120, "the instance never got to starting");
            step = resize.check(at(&j, &aws, 1, checks), state).await;
        }
        assert!(matches!(step, Step::Pending { .. }), "cut off while pending, not {step:?}");
        let summary = done(&run_from(&resize, &j, &aws, 2).await).to_owned();
        let next = if from == "t3.small" { "t3.medium" } else { "t3.large" };
        assert!(
            summary.contains(&format!("from {from} to {next}")) || summary.contains(&format!("{next} (was {from})")),
            "{summary}"
        );
        assert_eq!(type_and_state(&ec2, &id).await, (next.to_owned(), "running".to_owned()));
    }
}

/// Whether a pending resize has changed the type and is starting the instance.
fn starting(step: &Step) -> bool {
    matches!(step, Step::Pending { state, .. } if state["phase"].get("starting").is_some())
}
