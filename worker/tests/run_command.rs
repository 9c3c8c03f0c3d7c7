//! `run-command` against the emulator behind the realism layer, which serves Run Command as
//! SSM does: an invocation unknown right after the send, then in progress, commands that fail
//! with an exit code and an error output, and sends whose reply is lost.

mod support;

use opsfleet_protocol::ResourceType;
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::actions::{erased, RunCommand};
use opsfleet_worker::Step;
use serde_json::json;
use support::ec2::*;

/// The commands sent to an instance with a comment, as SSM lists them once it shows them all.
async fn commands_of(aws: &opsfleet_backend::aws::AwsAccounts, instance: &str, comment: &str) -> usize {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ssm = aws.ssm(ACCOUNT, REGION).await.expect("client");
    let out = ssm.list_commands().instance_id(instance).send().await.expect("list commands");
    out.commands().iter().filter(|c| c.comment() == Some(comment)).count()
}

#[tokio::test]
async fn a_command_is_sent_once_per_job_waited_for_and_its_success_reported() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let params = json!({ "commands": ["echo {task} on {id}"], "check_after_secs": 1 });
    let j = job(&unique("restart-app"), "e1", "run-command", &params, ResourceType::Instance, &id, REGION);
    let summary = done(&run(&erased(RunCommand), &j, &aws).await).to_owned();
    assert!(summary.contains("AWS-RunShellScript on") && summary.contains("succeeded"), "{summary}");
    let counts = layer.counts();
    assert!(counts.get("not_found").copied().unwrap_or(0) > 0, "the invocation was unknown at first: {counts:?}");
    assert!(counts.get("pending").copied().unwrap_or(0) > 0, "then in progress: {counts:?}");
    // The same job again (a redelivery): it finds its command and sends no other.
    done(&run_from(&erased(RunCommand), &j, &aws, 2).await);
    assert_eq!(commands_of(&aws, &id, &format!("opsfleet job {}", j.id)).await, 1);
}

#[tokio::test]
async fn a_failing_command_fails_the_job_with_its_output_and_a_lost_send_is_not_sent_twice() {
    let plan = Ec2Plan { failing_commands: ["exit 3".to_owned()].into(), ..Ec2Plan::aws() };
    let (aws, layer) = accounts_with(plan).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let bad = json!({ "commands": ["exit 3"], "check_after_secs": 1 });
    let j = job(&unique("fails"), "e1", "run-command", &bad, ResourceType::Instance, &id, REGION);
    let step = run(&erased(RunCommand), &j, &aws).await;
    assert!(
        matches!(&step, Step::Failed { retryable: false, error } if error.contains("Failed with code 1") && error.contains("exited with status 1")),
        "{step:?}"
    );

    layer.change(|plan| plan.lost_creates = 1.0);
    let good = json!({ "commands": ["uptime"], "check_after_secs": 1 });
    let j = job(&unique("lost"), "e1", "run-command", &good, ResourceType::Instance, &id, REGION);
    let first = erased(RunCommand).start(at(&j, &aws, 1, 0)).await;
    assert!(matches!(&first, Step::Failed { retryable: true, error } if error.contains("in doubt")), "{first:?}");
    layer.change(|plan| plan.lost_creates = 0.0);
    done(&run_from(&erased(RunCommand), &j, &aws, 2).await);
    assert_eq!(commands_of(&aws, &id, &format!("opsfleet job {}", j.id)).await, 1, "sent once");
}

#[tokio::test]
async fn a_stopped_or_opted_out_instance_gets_no_command() {
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let stopped = instance(&ec2).await;
    ec2.stop_instances().instance_ids(&stopped).send().await.expect("stop");
    let skipped = instance(&ec2).await;
    ec2.create_tags()
        .resources(&skipped)
        .tags(tags(&[("opsfleet:skip", "true")])[0].clone())
        .send()
        .await
        .expect("tag");
    layer.settle().await;
    let params = json!({ "commands": ["uptime"] });
    let j = job(&unique("cmd"), "e1", "run-command", &params, ResourceType::Instance, &stopped, REGION);
    let step = run(&erased(RunCommand), &j, &aws).await;
    assert!(
        matches!(&step, Step::Failed { retryable: false, error } if error.contains("needs it running")),
        "{step:?}"
    );
    let j = job(&unique("cmd"), "e1", "run-command", &params, ResourceType::Instance, &skipped, REGION);
    let step = run(&erased(RunCommand), &j, &aws).await;
    assert!(matches!(&step, Step::Skipped { .. }), "{step:?}");
}

/// The purposes of the commands a job sent to an instance, in the order SSM lists them.
async fn purposes(aws: &opsfleet_backend::aws::AwsAccounts, instance: &str, job: &str) -> Vec<String> {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ssm = aws.ssm(ACCOUNT, REGION).await.expect("client");
    let out = ssm.list_commands().instance_id(instance).send().await.expect("list commands");
    let prefix = format!("opsfleet job {job} ");
    let mut found: Vec<String> =
        out.commands().iter().filter_map(|c| c.comment()?.strip_prefix(&prefix)).map(str::to_owned).collect();
    found.sort();
    found
}

#[tokio::test]
async fn an_application_consistent_set_is_made_between_its_freeze_and_its_thaw() {
    use opsfleet_worker::actions::EbsSnapshot;
    let (aws, layer) = accounts().await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let params = json!({
        "pre_commands": ["fsfreeze --freeze /data"],
        "post_commands": ["fsfreeze --unfreeze /data"],
        "check_after_secs": 1,
    });
    let j = job(&unique("consistent"), "e1", "ebs-snapshot", &params, ResourceType::Instance, &id, REGION);
    let summary = done(&run(&erased(EbsSnapshot), &j, &aws).await).to_owned();
    assert!(summary.contains("completed"), "{summary}");
    assert_eq!(purposes(&aws, &id, &j.id).await, ["post 1", "pre 1"], "one freeze and its thaw");
    layer.settle().await;
    assert_eq!(snapshots(&ec2, "opsfleet:job", &j.id).await.len(), 1, "the instance's one volume");
    // The same job again (a redelivery): no second set, no second freeze or thaw.
    done(&run_from(&erased(EbsSnapshot), &j, &aws, 2).await);
    assert_eq!(purposes(&aws, &id, &j.id).await, ["post 1", "pre 1"]);
    assert!(layer.counts().get("pending").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
}

#[tokio::test]
async fn a_freeze_that_fails_makes_no_snapshot_and_is_thawed() {
    use opsfleet_worker::actions::EbsSnapshot;
    let plan = Ec2Plan { failing_commands: ["--freeze".to_owned()].into(), ..Ec2Plan::aws() };
    let (aws, layer) = accounts_with(plan).await;
    let ec2 = ec2(&aws, REGION).await;
    let id = instance(&ec2).await;
    layer.settle().await;
    let params = json!({
        "pre_commands": ["fsfreeze --freeze /data"],
        "post_commands": ["fsfreeze --unfreeze /data"],
        "check_after_secs": 1,
    });
    let j = job(&unique("consistent"), "e1", "ebs-snapshot", &params, ResourceType::Instance, &id, REGION);
    let step = run(&erased(EbsSnapshot), &j, &aws).await;
    assert!(
        matches!(&step, Step::Failed { retryable: false, error } if error.contains("the freeze (pre_commands) Failed with code 1") && error.contains("the thaw was sent")),
        "{step:?}"
    );
    // A command sent moments ago may be missing from ListCommands a little longer under load.
    let mut sent = purposes(&aws, &id, &j.id).await;
    for _ in 0..5 {
        if sent.len() >= 2 {
            break;
        }
        sent = purposes(&aws, &id, &j.id).await;
    }
    assert_eq!(sent, ["post 1", "pre 1"], "thawed after the failed freeze");
    layer.settle().await;
    assert!(snapshots(&ec2, "opsfleet:job", &j.id).await.is_empty(), "no snapshot of an unfrozen instance");
}
