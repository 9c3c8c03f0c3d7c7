//! The instance actions against the emulator (moto, which `tests/run.sh` starts) behind the
//! EC2 realism layer: power states reached and verified, a reboot once per job, a resize one
//! rung per job with its fallback types and the old type restored when none starts. Each
//! action runs as the worker runs it (`support::ec2::run`).

mod support;

use opsfleet_protocol::ResourceType;
use opsfleet_worker::actions::{erased, InstancePower, InstanceResize};
use opsfleet_worker::Step;
use serde_json::json;
use support::ec2::*;

#[tokio::test]
async fn instance_power_reaches_the_state_asked_for_and_reboots_once_per_job() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let task = unique("power");
    let state = |ec2: aws_sdk_ec2::Client, id: String| async move {
        let out = ec2.describe_instances().instance_ids(id).send().await.expect("describe");
        out.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default()
    };
    let power = |op: &str| json!({ "operation": op, "check_after_secs": 1 });
    let stop = job(&task, "e1", "instance-power", &power("stop"), ResourceType::Instance, &id, REGION);
    assert_eq!(done(&run(&erased(InstancePower), &stop, &aws).await), format!("{id} is stopped"));
    assert_eq!(state(ec2.clone(), id.clone()).await, "stopped");
    let start = job(&task, "e2", "instance-power", &power("start"), ResourceType::Instance, &id, REGION);
    assert_eq!(done(&run(&erased(InstancePower), &start, &aws).await), format!("{id} is running"));
    let reboot = job(&task, "e3", "instance-power", &power("reboot"), ResourceType::Instance, &id, REGION);
    done(&run(&erased(InstancePower), &reboot, &aws).await);
    layer.settle().await;
    let again = done(&run(&erased(InstancePower), &reboot, &aws).await).to_owned();
    assert!(again.contains("rebooted by this job before"), "a redelivered reboot does not reboot again: {again}");

    // Verification: an effect that cannot be reached is a failure, never a success.
    ec2.terminate_instances().instance_ids(&id).send().await.expect("terminate");
    let late = job(&task, "e4", "instance-power", &power("start"), ResourceType::Instance, &id, REGION);
    match run(&erased(InstancePower), &late, &aws).await {
        Step::Failed { retryable: false, error } => assert!(error.contains("terminated"), "{error}"),
        other => panic!("starting a terminated instance must fail, not {other:?}"),
    }
}

#[tokio::test]
async fn instance_resize_climbs_one_rung_falls_back_without_capacity_and_restores_when_nothing_starts() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance_of(&ec2, "t3.small").await;
    layer.settle().await;
    let task = unique("resize");
    let up = json!({
        "step": "up", "ladder": ["t3.small", "t3.medium", "t3.large"], "fallback": ["m5.large"], "check_after_secs": 1
    });
    let first = job(&task, "e1", "instance-resize", &up, ResourceType::Instance, &id, REGION);
    let resize = erased(InstanceResize);
    assert_eq!(done(&run(&resize, &first, &aws).await), format!("{id} is t3.medium (was t3.small), running"));
    assert_eq!(type_and_state(&ec2, &id).await, ("t3.medium".into(), "running".into()));
    layer.settle().await;
    // The same job delivered again does not climb a second rung.
    let again = done(&run(&resize, &first, &aws).await).to_owned();
    assert!(again.contains("by this job before"), "{again}");
    assert_eq!(type_and_state(&ec2, &id).await.0, "t3.medium");

    // No capacity for the next rung: the fallback type.
    layer.change(|p| {
        p.no_capacity_types.insert("t3.large".into());
    });
    let second = job(&task, "e2", "instance-resize", &up, ResourceType::Instance, &id, REGION);
    assert_eq!(done(&run(&resize, &second, &aws).await), format!("{id} is m5.large (was t3.medium), running"));
    assert_eq!(type_and_state(&ec2, &id).await, ("m5.large".into(), "running".into()));
    assert!(layer.counts().get("no_capacity_type").copied().unwrap_or(0) > 0, "{:?}", layer.counts());

    // No capacity for any type asked for: back to the old type, running, and a failure naming each.
    layer.change(|p| {
        p.no_capacity_types.extend(["m5.xlarge".to_owned(), "c5.xlarge".to_owned()]);
    });
    let to = json!({ "to": "m5.xlarge", "fallback": ["c5.xlarge"], "check_after_secs": 1 });
    let third = job(&task, "e3", "instance-resize", &to, ResourceType::Instance, &id, REGION);
    match run(&resize, &third, &aws).await {
        Step::Failed { retryable: false, error } => assert!(
            error.contains("m5.xlarge: InsufficientInstanceCapacity")
                && error.contains("c5.xlarge: InsufficientInstanceCapacity")
                && error.contains("back to m5.large and running"),
            "{error}"
        ),
        other => panic!("a resize with no capacity anywhere fails, not {other:?}"),
    }
    assert_eq!(type_and_state(&ec2, &id).await, ("m5.large".into(), "running".into()));

    // A stopped instance is resized and left stopped.
    ec2.stop_instances().instance_ids(&id).send().await.expect("stop");
    let fourth = job(
        &task,
        "e4",
        "instance-resize",
        &json!({ "to": "t3.small", "check_after_secs": 1 }),
        ResourceType::Instance,
        &id,
        REGION,
    );
    assert_eq!(
        done(&run(&resize, &fourth, &aws).await),
        format!("{id} is t3.small (was m5.large), stopped, as it was")
    );
    assert_eq!(type_and_state(&ec2, &id).await, ("t3.small".into(), "stopped".into()));

    // Opted out: nothing happens.
    ec2.create_tags().resources(&id).tags(tags(&[("opsfleet:skip", "true")])[0].clone()).send().await.expect("tag");
    layer.settle().await;
    let fifth = job(&task, "e5", "instance-resize", &up, ResourceType::Instance, &id, REGION);
    assert!(matches!(run(&resize, &fifth, &aws).await, Step::Skipped { .. }));
    assert_eq!(type_and_state(&ec2, &id).await.0, "t3.small");
}
