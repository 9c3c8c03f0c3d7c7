//! `rds-snapshot` against the emulator (moto, which `tests/run.sh` starts) behind the realism
//! layer, which serves RDS as AWS does: snapshots `creating` for a while, lost replies, server
//! errors, and encrypted cross-region copies refused without a presigned URL. Each run goes as
//! the worker runs it.

mod support;

use opsfleet_backend::AwsBackend;
use opsfleet_protocol::ResourceType;
use opsfleet_testkit::Ec2Plan;
use opsfleet_worker::actions::{erased, RdsSnapshot};
use opsfleet_worker::Step;
use serde_json::json;
use support::ec2::*;
use support::rds::{encrypted_cluster, instance, kms_key, snapshots};

const DR: &str = "us-west-2";

/// A client straight to the emulator in a region.
async fn direct(region: &str) -> aws_sdk_rds::Client {
    let base = AwsBackend::sdk_config().await;
    aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&base).region(aws_sdk_rds::config::Region::new(region.to_owned())).build(),
    )
}

#[tokio::test]
async fn rds_snapshot_copies_each_snapshot_waits_for_both_and_keeps_the_newest_n_in_each_region() {
    let (aws, layer) = accounts().await;
    let rds = aws.rds(ACCOUNT, REGION).await.expect("client");
    let db = unique("billing").replace('-', "x");
    instance(&rds, &db, &[("Team", "payments")]).await;
    rds.create_db_snapshot()
        .db_instance_identifier(&db)
        .db_snapshot_identifier(format!("{db}-by-hand"))
        .send()
        .await
        .expect("by hand");
    let task = unique("rds-nightly");
    let params =
        json!({ "copy_to": [{ "region": DR }], "retain": 2, "tags": { "Env": "test-{task}" }, "check_after_secs": 1 });
    let mut jobs = Vec::new();
    for event in 0..3 {
        let j = job(&task, &format!("e{event}"), "rds-snapshot", &params, ResourceType::RdsInstance, &db, REGION);
        let summary = done(&run(&erased(RdsSnapshot), &j, &aws).await).to_owned();
        assert!(summary.contains("is available, copied to us-west-2"), "{summary}");
        if event == 0 {
            // The same job again (a redelivery): RDS knows its snapshot by name; nothing new.
            done(&run_from(&erased(RdsSnapshot), &j, &aws, 2).await);
            assert_eq!(snapshots(&direct(REGION).await, &db).await.len(), 2, "the one made by hand and the job's");
        }
        jobs.push(j);
    }
    for region in [REGION, DR] {
        let found = snapshots(&direct(region).await, &db).await;
        let ours: Vec<&(String, Vec<(String, String)>)> =
            found.iter().filter(|(_, tags)| tags.iter().any(|(k, v)| k == "opsfleet:task" && *v == task)).collect();
        assert_eq!(ours.len(), 2, "retain = 2 in {region}: {found:?}");
        assert!(!ours.iter().any(|(id, _)| id.ends_with(&jobs[0].id)), "the oldest deleted in {region}: {found:?}");
        let newest = ours.iter().find(|(id, _)| id.ends_with(&jobs[2].id)).expect("the newest is kept");
        assert!(newest.1.contains(&("Env".to_owned(), format!("test-{task}"))), "tag values are templates: {newest:?}");
        assert!(newest.1.contains(&("opsfleet:job".to_owned(), jobs[2].id.clone())), "{newest:?}");
    }
    let by_hand = snapshots(&direct(REGION).await, &db).await;
    assert!(by_hand.iter().any(|(id, _)| id.ends_with("-by-hand")), "a snapshot opsfleet did not make is kept");
    assert!(
        layer.counts().get("pending").copied().unwrap_or(0) > 0,
        "snapshots were creating first: {:?}",
        layer.counts()
    );
}

#[tokio::test]
async fn a_snapshot_whose_reply_was_lost_is_known_by_its_name_and_an_opted_out_instance_is_skipped() {
    let (aws, layer) = accounts_with(Ec2Plan { lost_creates: 1.0, ..Ec2Plan::aws() }).await;
    let rds = aws.rds(ACCOUNT, REGION).await.expect("client");
    let db = unique("orders").replace('-', "x");
    instance(&rds, &db, &[]).await;
    let params = json!({ "check_after_secs": 1 });
    let j = job(&unique("rds-lost"), "e1", "rds-snapshot", &params, ResourceType::RdsInstance, &db, REGION);
    // The SDK sends the create again after the lost reply; RDS answers that the name exists,
    // and the action takes it as this job's.
    let first = erased(RdsSnapshot).start(at(&j, &aws, 1, 0)).await;
    assert!(matches!(&first, Step::Pending { .. }), "the snapshot is waited for: {first:?}");
    assert!(layer.counts().get("lost_create").copied().unwrap_or(0) > 0, "{:?}", layer.counts());
    layer.change(|plan| plan.lost_creates = 0.0);
    done(&run(&erased(RdsSnapshot), &j, &aws).await);
    assert_eq!(snapshots(&direct(REGION).await, &db).await.len(), 1, "one snapshot, made by the first attempt");

    let skipped = unique("audit").replace('-', "x");
    instance(&rds, &skipped, &[("opsfleet:skip", "true")]).await;
    let j = job(&unique("rds-skip"), "e1", "rds-snapshot", &params, ResourceType::RdsInstance, &skipped, REGION);
    let step = run(&erased(RdsSnapshot), &j, &aws).await;
    assert!(matches!(&step, Step::Skipped { reason } if reason.contains("opsfleet:skip")), "{step:?}");
    assert!(snapshots(&direct(REGION).await, &skipped).await.is_empty());
}

#[tokio::test]
async fn an_encrypted_clusters_copy_is_presigned_and_one_without_a_key_for_its_region_fails() {
    let (aws, layer) = accounts().await;
    let rds = aws.rds(ACCOUNT, REGION).await.expect("client");
    let cluster = unique("aurora").replace('-', "x");
    encrypted_cluster(&rds, &cluster).await;
    let key = kms_key(DR);

    let no_key = json!({ "copy_to": [{ "region": DR }], "check_after_secs": 1 });
    let j = job(&unique("aurora-nokey"), "e1", "rds-snapshot", &no_key, ResourceType::RdsCluster, &cluster, REGION);
    let step = run(&erased(RdsSnapshot), &j, &aws).await;
    assert!(
        matches!(&step, Step::Failed { retryable: false, error } if error.contains("needs a kms_key_id")),
        "{step:?}"
    );

    let params = json!({ "copy_to": [{ "region": DR, "kms_key_id": key }], "check_after_secs": 1 });
    let j = job(&unique("aurora-dr"), "e1", "rds-snapshot", &params, ResourceType::RdsCluster, &cluster, REGION);
    let summary = done(&run(&erased(RdsSnapshot), &j, &aws).await).to_owned();
    assert!(summary.contains("copied to us-west-2"), "{summary}");
    let copy = direct(DR)
        .await
        .describe_db_cluster_snapshots()
        .db_cluster_snapshot_identifier(summary.split(' ').nth(1).unwrap_or_default())
        .send()
        .await
        .expect("the copy");
    let copy = copy.db_cluster_snapshots().first().expect("a copy");
    assert_eq!(copy.storage_encrypted(), Some(true));
    let counts = layer.counts();
    assert!(counts.get("presigned").copied().unwrap_or(0) > 0, "the copy carried a presigned URL: {counts:?}");
    assert_eq!(counts.get("presign_missing").copied().unwrap_or(0), 0, "{counts:?}");
}
