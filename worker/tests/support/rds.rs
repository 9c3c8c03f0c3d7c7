//! What the RDS action tests share: instances, clusters and KMS keys made by the test, and
//! snapshots read straight from the emulator.

use aws_sdk_rds::types::Tag;

/// A PostgreSQL instance made by the test, with these tags.
pub async fn instance(rds: &aws_sdk_rds::Client, id: &str, tags: &[(&str, &str)]) {
    let mut request = rds
        .create_db_instance()
        .db_instance_identifier(id)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("opsfleet")
        .master_user_password("not-a-secret-1");
    for (k, v) in tags {
        request = request.tags(Tag::builder().key(*k).value(*v).build());
    }
    request.send().await.expect("create db instance");
}

/// An encrypted Aurora PostgreSQL cluster made by the test.
pub async fn encrypted_cluster(rds: &aws_sdk_rds::Client, id: &str) {
    rds.create_db_cluster()
        .db_cluster_identifier(id)
        .engine("aurora-postgresql")
        .master_username("opsfleet")
        .master_user_password("not-a-secret-1")
        .storage_encrypted(true)
        .send()
        .await
        .expect("create db cluster");
}

/// A KMS key in a region of the emulator (made with boto3: the workspace has no KMS client);
/// its ARN.
pub fn kms_key(region: &str) -> String {
    let python = std::env::var("OPSFLEET_TEST_PYTHON").expect("run with tests/run.sh");
    let script =
        format!("import boto3; print(boto3.client('kms', region_name='{region}').create_key()['KeyMetadata']['Arn'])");
    let out = std::process::Command::new(python).args(["-c", &script]).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The identifiers and tags of an instance's manual snapshots, straight from the emulator.
pub async fn snapshots(rds: &aws_sdk_rds::Client, instance: &str) -> Vec<(String, Vec<(String, String)>)> {
    let out = rds
        .describe_db_snapshots()
        .db_instance_identifier(instance)
        .snapshot_type("manual")
        .send()
        .await
        .expect("describe db snapshots");
    let mut found: Vec<(String, Vec<(String, String)>)> = out
        .db_snapshots()
        .iter()
        .map(|s| {
            let tags = s
                .tag_list()
                .iter()
                .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()));
            (s.db_snapshot_identifier().unwrap_or_default().to_owned(), tags.collect())
        })
        .collect();
    found.sort();
    found
}
