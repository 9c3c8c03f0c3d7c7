//! What the RDS actions share: an instance's or cluster's snapshots seen one way whichever
//! the source (`DBSnapshot` and `DBClusterSnapshot` differ only in names), one-line failures
//! from RDS's errors, and the presigned URL RDS asks of an encrypted cross-region copy.

use super::ec2::{failed_unless, SKIP_TAG};
use super::Step;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::Tag;
use aws_sdk_rds::Client;
use opsfleet_protocol::ResourceType;

/// Codes RDS answers when trying again later may pass.
const RETRYABLE: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalFailure",
    "ServiceUnavailable",
    "InvalidDBInstanceState",
    "InvalidDBInstanceStateFault",
    "InvalidDBClusterStateFault",
    "InvalidDBSnapshotState",
    "InvalidDBSnapshotStateFault",
    "InvalidDBClusterSnapshotStateFault",
];

/// A failed step from an RDS error.
pub fn failed<E, R>(what: &str, err: &SdkError<E, R>) -> Step
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    failed_unless(what, err, RETRYABLE)
}

fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
}

/// Whether an RDS error says the instance, cluster or snapshot does not exist.
pub fn not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    code(err).is_some_and(|c| c.contains("NotFound"))
}

/// Whether an RDS error says a snapshot of that identifier exists already.
pub fn already_exists<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    code(err).is_some_and(|c| c.contains("AlreadyExists"))
}

/// An instance's or cluster's snapshot, whichever it is.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Its identifier.
    pub id: String,
    /// Its ARN.
    pub arn: String,
    /// `creating`, `copying`, `available`, `failed`, …
    pub status: String,
    /// When it was made, (seconds, nanoseconds) since the epoch.
    pub made: (i64, u32),
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

fn pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

fn when(time: Option<&aws_sdk_rds::primitives::DateTime>) -> (i64, u32) {
    time.map(|t| (t.secs(), t.subsec_nanos())).unwrap_or_default()
}

/// The instance's or cluster's status, tags and whether it is encrypted, or the step's failure
/// (one that does not exist fails for good; one that opted out is skipped).
pub async fn describe_source(rds: &Client, kind: ResourceType, id: &str) -> Result<(String, bool), Step> {
    let gone = || Step::Failed { retryable: false, error: format!("{kind} {id} does not exist") };
    let (status, tags, encrypted) = if kind == ResourceType::RdsCluster {
        let out = match rds.describe_db_clusters().db_cluster_identifier(id).send().await {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Err(gone()),
            Err(e) => return Err(failed("DescribeDBClusters", &e)),
        };
        let c = out.db_clusters().first().ok_or_else(gone)?;
        (c.status().unwrap_or_default().to_owned(), pairs(c.tag_list()), c.storage_encrypted().unwrap_or(false))
    } else {
        let out = match rds.describe_db_instances().db_instance_identifier(id).send().await {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Err(gone()),
            Err(e) => return Err(failed("DescribeDBInstances", &e)),
        };
        let i = out.db_instances().first().ok_or_else(gone)?;
        (
            i.db_instance_status().unwrap_or_default().to_owned(),
            pairs(i.tag_list()),
            i.storage_encrypted().unwrap_or(false),
        )
    };
    if tags.iter().any(|(k, v)| k == SKIP_TAG && v.eq_ignore_ascii_case("true")) {
        return Err(Step::Skipped { reason: format!("{kind} {id} is tagged {SKIP_TAG} = true") });
    }
    Ok((status, encrypted))
}

/// A snapshot by identifier, or `None` when RDS does not know it (yet).
pub async fn snapshot(rds: &Client, kind: ResourceType, id: &str) -> Result<Option<Snapshot>, Step> {
    if kind == ResourceType::RdsCluster {
        match rds.describe_db_cluster_snapshots().db_cluster_snapshot_identifier(id).send().await {
            Ok(out) => Ok(out.db_cluster_snapshots().first().map(of_cluster)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(failed("DescribeDBClusterSnapshots", &e)),
        }
    } else {
        match rds.describe_db_snapshots().db_snapshot_identifier(id).send().await {
            Ok(out) => Ok(out.db_snapshots().first().map(of_instance)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(failed("DescribeDBSnapshots", &e)),
        }
    }
}

/// The manual snapshots of an instance or cluster in the client's region, every page.
pub async fn snapshots_of(rds: &Client, kind: ResourceType, source: &str) -> Result<Vec<Snapshot>, Step> {
    let mut found = Vec::new();
    if kind == ResourceType::RdsCluster {
        let mut pages = rds
            .describe_db_cluster_snapshots()
            .db_cluster_identifier(source)
            .snapshot_type("manual")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(out) => found.extend(out.db_cluster_snapshots().iter().map(of_cluster)),
                Err(e) if not_found(&e) => break,
                Err(e) => return Err(failed("DescribeDBClusterSnapshots", &e)),
            }
        }
    } else {
        let mut pages =
            rds.describe_db_snapshots().db_instance_identifier(source).snapshot_type("manual").into_paginator().send();
        while let Some(page) = pages.next().await {
            match page {
                Ok(out) => found.extend(out.db_snapshots().iter().map(of_instance)),
                Err(e) if not_found(&e) => break,
                Err(e) => return Err(failed("DescribeDBSnapshots", &e)),
            }
        }
    }
    Ok(found)
}

/// Deletes a snapshot; one already gone counts as deleted.
pub async fn delete(rds: &Client, kind: ResourceType, id: &str) -> Result<(), Step> {
    let result = if kind == ResourceType::RdsCluster {
        rds.delete_db_cluster_snapshot().db_cluster_snapshot_identifier(id).send().await.map(|_| ()).map_err(|e| {
            if not_found(&e) {
                None
            } else {
                Some(failed("DeleteDBClusterSnapshot", &e))
            }
        })
    } else {
        rds.delete_db_snapshot().db_snapshot_identifier(id).send().await.map(|_| ()).map_err(|e| {
            if not_found(&e) {
                None
            } else {
                Some(failed("DeleteDBSnapshot", &e))
            }
        })
    };
    match result {
        Ok(()) | Err(None) => Ok(()),
        Err(Some(step)) => Err(step),
    }
}

fn of_instance(s: &aws_sdk_rds::types::DbSnapshot) -> Snapshot {
    Snapshot {
        id: s.db_snapshot_identifier().unwrap_or_default().to_owned(),
        arn: s.db_snapshot_arn().unwrap_or_default().to_owned(),
        status: s.status().unwrap_or_default().to_owned(),
        made: when(s.snapshot_create_time()),
        encrypted: s.encrypted().unwrap_or(false),
        tags: pairs(s.tag_list()),
    }
}

fn of_cluster(s: &aws_sdk_rds::types::DbClusterSnapshot) -> Snapshot {
    Snapshot {
        id: s.db_cluster_snapshot_identifier().unwrap_or_default().to_owned(),
        arn: s.db_cluster_snapshot_arn().unwrap_or_default().to_owned(),
        status: s.status().unwrap_or_default().to_owned(),
        made: when(s.snapshot_create_time()),
        encrypted: s.storage_encrypted().unwrap_or(false),
        tags: pairs(s.tag_list()),
    }
}

/// An RDS tag.
pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// The snapshot identifier a job makes: `opsfleet-<task>-<job id>` in the letters, digits and
/// single hyphens RDS takes (RDS keeps identifiers in lower case).
pub fn snapshot_id(task: &str, job: &str) -> String {
    let mut id = String::from("opsfleet-");
    for c in task.chars().chain(std::iter::once('-')).chain(job.chars()) {
        let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' };
        if !(c == '-' && id.ends_with('-')) {
            id.push(c);
        }
    }
    id.trim_end_matches('-').to_owned()
}

/// IAM resource ARNs.
pub mod iam {
    /// Every DB instance.
    pub const INSTANCES: &str = "arn:aws:rds:*:*:db:*";
    /// Every DB cluster.
    pub const CLUSTERS: &str = "arn:aws:rds:*:*:cluster:*";
    /// Every instance snapshot.
    pub const SNAPSHOTS: &str = "arn:aws:rds:*:*:snapshot:*";
    /// Every cluster snapshot.
    pub const CLUSTER_SNAPSHOTS: &str = "arn:aws:rds:*:*:cluster-snapshot:*";
    /// The instance snapshots opsfleet names.
    pub const OWN_SNAPSHOTS: &str = "arn:aws:rds:*:*:snapshot:opsfleet-*";
    /// The cluster snapshots opsfleet names.
    pub const OWN_CLUSTER_SNAPSHOTS: &str = "arn:aws:rds:*:*:cluster-snapshot:opsfleet-*";
}

#[cfg(test)]
mod tests {
    use super::snapshot_id;

    #[test]
    fn snapshot_ids_are_in_rdss_characters() {
        let job = "0123456789abcdef0123456789abcdef";
        assert_eq!(snapshot_id("Nightly_DB.backup", job), format!("opsfleet-nightly-db-backup-{job}"));
        assert_eq!(snapshot_id("a--b", job), format!("opsfleet-a-b-{job}"));
    }
}
