//! The DynamoDB actions against the emulator (moto, which `tests/run.sh` starts) behind the
//! realism layer, which serves DynamoDB's control plane as AWS does: backups `CREATING` for a
//! while and missing from `ListBackups` at first, tables `UPDATING` after an update, a daily
//! allowance of throughput decreases, lost replies. Each action runs as the worker runs it.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::ResourceType;
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::actions::{erased, DynamodbBackup, DynamodbCapacity};
use opsfleet_worker::Step;
use serde_json::json;
use support::dynamodb::{backup_names, capacity, table};
use support::ec2::*;

/// A client straight to the emulator: what is really there, without the layer's lag.
async fn direct() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&AwsBackend::sdk_config().await)
}

#[tokio::test]
async fn dynamodb_backup_makes_one_backup_per_job_waits_for_it_and_keeps_the_newest_n() {
    let (aws, layer) = accounts().await;
    let dynamodb = aws.dynamodb(ACCOUNT, REGION).await.expect("client");
    let name = unique("orders");
    table(&dynamodb, &name, (5, 5), &[]).await;
    let by_hand = direct().await.create_backup().table_name(&name).backup_name("before-upgrade").send().await;
    by_hand.expect("a backup made by hand");
    let task = unique("ddb-nightly");
    let params = json!({ "retain": 2, "check_after_secs": 1 });
    let mut jobs = Vec::new();
    for event in 0..3 {
        let j = job(&task, &format!("e{event}"), "dynamodb-backup", &params, ResourceType::DynamoTable, &name, REGION);
        let summary = done(&run(&erased(DynamodbBackup), &j, &aws).await).to_owned();
        assert!(summary.contains(&j.id) && summary.contains("is available"), "{summary}");
        if event == 0 {
            // The same job again (a redelivery): it finds its backup and makes no other.
            done(&run_from(&erased(DynamodbBackup), &j, &aws, 2).await);
            let same: Vec<String> =
                backup_names(&direct().await, &name).await.into_iter().filter(|n| n.ends_with(&j.id)).collect();
            assert_eq!(same.len(), 1, "one backup per job: {same:?}");
        }
        jobs.push(j);
    }
    let names = backup_names(&direct().await, &name).await;
    assert_eq!(names.len(), 3, "two of the task's and the one made by hand: {names:?}");
    assert!(names.contains(&"before-upgrade".to_owned()), "a backup opsfleet did not make is kept: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(&jobs[0].id)), "the oldest of the task's is deleted: {names:?}");
    assert!(names.iter().any(|n| n.ends_with(&jobs[2].id)), "the newest is kept: {names:?}");
    let counts = layer.counts();
    assert!(counts.get("pending").copied().unwrap_or(0) > 0, "backups were CREATING first: {counts:?}");
}

#[tokio::test]
async fn a_backup_whose_reply_was_lost_is_found_by_the_next_attempt_and_not_made_twice() {
    let (aws, layer) = accounts_with(Ec2Plan { lost_creates: 1.0, ..Ec2Plan::aws() }).await;
    let dynamodb = aws.dynamodb(ACCOUNT, REGION).await.expect("client");
    let name = unique("ledger");
    table(&dynamodb, &name, (5, 5), &[]).await;
    let task = unique("ddb-lost");
    let params = json!({ "check_after_secs": 1 });
    let j = job(&task, "e1", "dynamodb-backup", &params, ResourceType::DynamoTable, &name, REGION);
    let first = erased(DynamodbBackup).start(at(&j, &aws, 1, 0)).await;
    assert!(
        matches!(&first, Step::Failed { retryable: true, error } if error.contains("in doubt")),
        "a lost reply leaves the create in doubt: {first:?}"
    );
    layer.change(|plan| plan.lost_creates = 0.0);
    // The next attempt comes at once: the backup is not listed yet, and it looks again after
    // the consistency window rather than making a second.
    done(&run_from(&erased(DynamodbBackup), &j, &aws, 2).await);
    let names = backup_names(&direct().await, &name).await;
    assert_eq!(names.len(), 1, "one backup, made by the first attempt: {names:?}");
    assert!(layer.counts().get("hidden").copied().unwrap_or(0) > 0, "the list left it out at first");
}

#[tokio::test]
async fn a_table_tagged_to_be_skipped_is_left_alone() {
    let (aws, _layer) = accounts().await;
    let dynamodb = aws.dynamodb(ACCOUNT, REGION).await.expect("client");
    let name = unique("audit");
    table(&dynamodb, &name, (5, 5), &[("opsfleet:skip", "true")]).await;
    for (action, params) in [(erased(DynamodbBackup), json!({})), (erased(DynamodbCapacity), json!({ "read": 50 }))] {
        let j = job(&unique("ddb-skip"), "e1", action.name(), &params, ResourceType::DynamoTable, &name, REGION);
        let step = run(&action, &j, &aws).await;
        assert!(matches!(&step, Step::Skipped { reason } if reason.contains("opsfleet:skip")), "{step:?}");
    }
    assert!(backup_names(&direct().await, &name).await.is_empty());
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 5, 5));
}

#[tokio::test]
async fn dynamodb_capacity_multiplies_once_per_job_within_its_caps_and_waits_for_the_update() {
    let (aws, layer) = accounts().await;
    let dynamodb = aws.dynamodb(ACCOUNT, REGION).await.expect("client");
    let name = unique("sessions");
    table(&dynamodb, &name, (5, 5), &[]).await;
    let params = json!({ "multiply": 2, "max_write": 8, "check_after_secs": 1 });
    let j =
        job(&unique("ddb-scale"), "alarm-1", "dynamodb-capacity", &params, ResourceType::DynamoTable, &name, REGION);
    let summary = done(&run(&erased(DynamodbCapacity), &j, &aws).await).to_owned();
    assert!(summary.contains("10 read / 8 write units"), "{summary}");
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 10, 8));
    assert!(layer.counts().get("table_updating").copied().unwrap_or(0) > 0, "the table was UPDATING first");
    // The same job again (its reply was lost after the update): it multiplies what it started
    // from, as its record says, not what it already raised.
    let again = done(&run_from(&erased(DynamodbCapacity), &j, &aws, 2).await).to_owned();
    assert!(again.contains("already has 10 read / 8 write units"), "{again}");
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 10, 8));
    // Another alarm is another job: it doubles again.
    let next = job(&j.task, "alarm-2", "dynamodb-capacity", &params, ResourceType::DynamoTable, &name, REGION);
    done(&run(&erased(DynamodbCapacity), &next, &aws).await);
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 20, 8));
}

#[tokio::test]
async fn decreases_past_dynamodbs_daily_allowance_fail_without_retries_and_billing_switches() {
    let (aws, _layer) = accounts_with(Ec2Plan { decreases_per_day: Some(1), ..Ec2Plan::aws() }).await;
    let dynamodb = aws.dynamodb(ACCOUNT, REGION).await.expect("client");
    let name = unique("events");
    table(&dynamodb, &name, (10, 10), &[]).await;
    let task = unique("ddb-set");
    let set = |event: &str, read: i64| {
        let params = json!({ "read": read, "check_after_secs": 1 });
        job(&task, event, "dynamodb-capacity", &params, ResourceType::DynamoTable, &name, REGION)
    };
    done(&run(&erased(DynamodbCapacity), &set("e1", 4), &aws).await);
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 4, 10));
    let refused = run(&erased(DynamodbCapacity), &set("e2", 2), &aws).await;
    assert!(
        matches!(&refused, Step::Failed { retryable: false, error } if error.contains("LimitExceededException") && error.contains("decreases")),
        "{refused:?}"
    );
    assert_eq!(capacity(&direct().await, &name).await, ("PROVISIONED".into(), 4, 10), "nothing changed");
    // On demand, then back to provisioned with both units given.
    let demand = job(
        &task,
        "e3",
        "dynamodb-capacity",
        &json!({ "billing_mode": "PAY_PER_REQUEST", "check_after_secs": 1 }),
        ResourceType::DynamoTable,
        &name,
        REGION,
    );
    let summary = done(&run(&erased(DynamodbCapacity), &demand, &aws).await).to_owned();
    assert!(summary.contains("on demand"), "{summary}");
    assert_eq!(capacity(&direct().await, &name).await.0, "PAY_PER_REQUEST");
    let half = job(
        &task,
        "e4",
        "dynamodb-capacity",
        &json!({ "billing_mode": "PROVISIONED", "read": 3 }),
        ResourceType::DynamoTable,
        &name,
        REGION,
    );
    let step = run(&erased(DynamodbCapacity), &half, &aws).await;
    assert!(matches!(&step, Step::Failed { retryable: false, error } if error.contains("takes both")), "{step:?}");
}
