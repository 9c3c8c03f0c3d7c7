//! The fleet-wide EC2 API budget: token buckets per (account, region, API), as EC2 keeps them,
//! each sized by its API's class, shared so that N processes together stay within one.
//!
//! Every EC2 request of the fleet goes through [`Budgeted`], an HTTP client in front of the
//! SDK's, which reads the request's `Action` (and whether it filters or pages) and waits for a
//! token of that API's bucket before sending it, so SDK retries take tokens too. Each process
//! takes its share of every bucket (rate and burst): reads are split among every live router
//! and worker, writes among the workers only (routers only read), as counted from the
//! presence items they write. A process that joins a running fleet starts its buckets empty
//! for [`JOIN_WINDOW`], until the others have counted it, so a fast scale-out does not spend
//! the fleet's burst twice.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use opsfleet_protocol::config::{BucketSettings, Ec2BudgetSettings};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// EC2's API classes, each with a bucket of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiClass {
    /// `Describe*` and other reads that filter or page.
    Describe,
    /// Reads that neither filter nor page (by id, or everything): EC2's smaller bucket.
    DescribeUnfiltered,
    /// Mutating calls without a bucket of their own.
    Mutating,
    /// `RunInstances`, `StartInstances`.
    RunStart,
    /// `CreateTags`, `DeleteTags`.
    Tags,
    /// `CreateSnapshot`, `DeleteSnapshot`, `CopySnapshot`.
    Snapshots,
    /// `CopyImage`.
    CopyImage,
    /// DynamoDB `CreateBackup`, `DeleteBackup`.
    DynamodbBackups,
    /// DynamoDB's other control-plane calls.
    DynamodbControl,
    /// The Resource Groups Tagging API.
    Tagging,
    /// SSM's Run Command calls (`SendCommand`, `ListCommands`, `GetCommandInvocation`).
    Ssm,
    /// Auto Scaling calls.
    Autoscaling,
    /// RDS `Describe*` and `List*` calls.
    RdsDescribe,
    /// Every other RDS call.
    RdsMutating,
}

impl ApiClass {
    /// The class of an EC2 action (the `Action` of the request).
    pub fn of(action: &str) -> Self {
        match action {
            "RunInstances" | "StartInstances" => ApiClass::RunStart,
            "CreateTags" | "DeleteTags" => ApiClass::Tags,
            "CreateSnapshot" | "CreateSnapshots" | "DeleteSnapshot" | "CopySnapshot" => ApiClass::Snapshots,
            "CopyImage" => ApiClass::CopyImage,
            a if a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List") => ApiClass::Describe,
            _ => ApiClass::Mutating,
        }
    }

    /// The class of a request of a JSON service from its `X-Amz-Target` header
    /// (`DynamoDB_20120810.CreateBackup`, `ResourceGroupsTaggingAPI_20170126.GetResources`),
    /// with its API's name; `None` for other targets.
    pub fn of_target(target: &str) -> Option<(Self, &str)> {
        let (service, api) = target.split_once('.')?;
        let class = match service {
            s if s.starts_with("DynamoDB_") => match api {
                "CreateBackup" | "DeleteBackup" => ApiClass::DynamodbBackups,
                _ => ApiClass::DynamodbControl,
            },
            s if s.starts_with("ResourceGroupsTaggingAPI_") => ApiClass::Tagging,
            "AmazonSSM" => ApiClass::Ssm,
            _ => return None,
        };
        Some((class, api))
    }

    /// The class of an RDS request's action.
    pub fn of_rds(action: &str) -> Self {
        if action.starts_with("Describe") || action.starts_with("List") {
            ApiClass::RdsDescribe
        } else {
            ApiClass::RdsMutating
        }
    }

    /// The class of a request from its form body: a read that neither filters nor pages is in
    /// EC2's smaller bucket.
    pub fn of_request(action: &str, body: &str) -> Self {
        match ApiClass::of(action) {
            ApiClass::Describe
                if !body.split('&').any(|p| {
                    p.starts_with("Filter.") || p.starts_with("MaxResults=") || p.starts_with("NextToken=")
                }) =>
            {
                ApiClass::DescribeUnfiltered
            }
            class => class,
        }
    }

    /// Whether the class is of reads (split among every process, routers too).
    pub fn reads(self) -> bool {
        matches!(self, ApiClass::Describe | ApiClass::DescribeUnfiltered | ApiClass::Tagging | ApiClass::RdsDescribe)
    }

    /// The class's name in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiClass::Describe => "describe",
            ApiClass::DescribeUnfiltered => "describe_unfiltered",
            ApiClass::Mutating => "mutating",
            ApiClass::RunStart => "run_start",
            ApiClass::Tags => "tags",
            ApiClass::Snapshots => "snapshots",
            ApiClass::CopyImage => "copy_image",
            ApiClass::DynamodbBackups => "dynamodb_backups",
            ApiClass::DynamodbControl => "dynamodb_control",
            ApiClass::Tagging => "tagging",
            ApiClass::Ssm => "ssm",
            ApiClass::Autoscaling => "autoscaling",
            ApiClass::RdsDescribe => "rds_describe",
            ApiClass::RdsMutating => "rds_mutating",
        }
    }

    fn settings(self, budget: &Ec2BudgetSettings) -> BucketSettings {
        match self {
            ApiClass::Describe => budget.describe,
            ApiClass::DescribeUnfiltered => budget.describe_unfiltered,
            ApiClass::Mutating => budget.mutating,
            ApiClass::RunStart => budget.run_start,
            ApiClass::Tags => budget.tags,
            ApiClass::Snapshots => budget.snapshots,
            ApiClass::CopyImage => budget.copy_image,
            ApiClass::DynamodbBackups => budget.dynamodb_backups,
            ApiClass::DynamodbControl => budget.dynamodb_control,
            ApiClass::Tagging => budget.tagging,
            ApiClass::Ssm => budget.ssm,
            ApiClass::Autoscaling => budget.autoscaling,
            ApiClass::RdsDescribe => budget.rds_describe,
            ApiClass::RdsMutating => budget.rds_mutating,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How long a process that joined a running fleet starts its buckets empty: until every other
/// process has counted it (they count every 5 s).
pub const JOIN_WINDOW: Duration = Duration::from_secs(6);

/// The EC2 budget of this process: its share of the fleet's buckets.
#[derive(Debug)]
pub struct Ec2Budget {
    settings: Ec2BudgetSettings,
    /// The live processes sharing the read buckets (at least 1).
    readers: AtomicU32,
    /// The live processes sharing the write buckets: the workers (at least 1).
    writers: AtomicU32,
    /// Until when new buckets start empty (a process that joined a running fleet).
    empty_until: Mutex<Option<Instant>>,
    buckets: Mutex<HashMap<(String, String, String), Bucket>>,
}

impl Ec2Budget {
    /// A budget with these buckets, shared with no one until told otherwise.
    pub fn new(settings: Ec2BudgetSettings) -> Arc<Self> {
        Arc::new(Ec2Budget {
            settings,
            readers: AtomicU32::new(1),
            writers: AtomicU32::new(1),
            empty_until: Mutex::new(None),
            buckets: Mutex::default(),
        })
    }

    /// Sets how many processes share the budget, all of them workers.
    pub fn set_fleet_size(&self, processes: u32) {
        self.set_fleet(0, processes);
    }

    /// Sets the live routers and workers: reads are split among all of them, writes among the
    /// workers.
    pub fn set_fleet(&self, routers: u32, workers: u32) {
        self.readers.store((routers + workers).max(1), Ordering::Relaxed);
        self.writers.store(workers.max(1), Ordering::Relaxed);
    }

    /// This process joined a fleet already running: its buckets start empty for
    /// [`JOIN_WINDOW`], while the others do not count it yet.
    pub fn joined_running_fleet(&self) {
        *self.empty_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + JOIN_WINDOW);
    }

    /// This process's share of a class's bucket: (rate per second, burst).
    pub fn share(&self, class: ApiClass) -> (f64, f64) {
        let sharing = if class.reads() { &self.readers } else { &self.writers };
        let n = f64::from(sharing.load(Ordering::Relaxed).max(1));
        let s = class.settings(&self.settings);
        (f64::from(s.rate) / n, (f64::from(s.burst) / n).max(1.0))
    }

    /// Waits until a request of API `action` (of `class`) in `account`/`region` may be sent,
    /// and takes its token. Each API has a bucket of its own, as in EC2.
    pub async fn take(&self, account: &str, region: &str, action: &str, class: ApiClass) {
        loop {
            let wait = {
                let (rate, burst) = self.share(class);
                let now = Instant::now();
                let joining = self.empty_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| now < t);
                let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
                let bucket = buckets
                    .entry((account.to_owned(), region.to_owned(), action.to_owned()))
                    .or_insert(Bucket { tokens: if joining { 0.0 } else { burst }, at: now });
                bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
                bucket.at = now;
                if bucket.tokens >= 1.0 {
                    bucket.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64(((1.0 - bucket.tokens) / rate.max(1e-6)).min(60.0))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// An HTTP client that takes a token of the request's class from a budget before each
/// request it sends.
#[derive(Debug, Clone)]
pub struct Budgeted {
    inner: SharedHttpClient,
    budget: Arc<Ec2Budget>,
    account: String,
    region: String,
    service: Query,
}

/// Which classes a query-protocol request falls in: EC2's, RDS's or Auto Scaling's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Ec2,
    Rds,
    Autoscaling,
}

impl Budgeted {
    /// `inner`, shaped by `budget` for the calls of one account and region (EC2's classes for
    /// query-protocol requests, the JSON services' by their target).
    pub fn new(inner: SharedHttpClient, budget: Arc<Ec2Budget>, account: &str, region: &str) -> Self {
        Budgeted { inner, budget, account: account.to_owned(), region: region.to_owned(), service: Query::Ec2 }
    }

    /// The same for an RDS client: its query-protocol requests fall in RDS's classes.
    pub fn for_rds(self) -> Self {
        Budgeted { service: Query::Rds, ..self }
    }

    /// The same for an Auto Scaling client: its requests fall in one class.
    pub fn for_autoscaling(self) -> Self {
        Budgeted { service: Query::Autoscaling, ..self }
    }
}

impl HttpClient for Budgeted {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(BudgetedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: Arc::clone(&self.budget),
            account: self.account.clone(),
            region: self.region.clone(),
            service: self.service,
        })
    }
}

#[derive(Debug)]
struct BudgetedConnector {
    inner: SharedHttpConnector,
    budget: Arc<Ec2Budget>,
    account: String,
    region: String,
    service: Query,
}

impl HttpConnector for BudgetedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").and_then(ApiClass::of_target);
        let (action, class) = match target {
            Some((class, api)) => (api.to_owned(), class),
            None => {
                let body = request.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
                let action =
                    body.split('&').find_map(|pair| pair.strip_prefix("Action=")).unwrap_or_default().to_owned();
                let class = match self.service {
                    Query::Rds => ApiClass::of_rds(&action),
                    Query::Autoscaling => ApiClass::Autoscaling,
                    Query::Ec2 => ApiClass::of_request(&action, &body),
                };
                (action, class)
            }
        };
        let (inner, budget) = (self.inner.clone(), Arc::clone(&self.budget));
        let (account, region) = (self.account.clone(), self.region.clone());
        HttpConnectorFuture::new(async move {
            budget.take(&account, &region, &action, class).await;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_fall_in_ec2s_classes() {
        assert_eq!(ApiClass::of("DescribeInstances"), ApiClass::Describe);
        assert_eq!(ApiClass::of("StartInstances"), ApiClass::RunStart);
        assert_eq!(ApiClass::of("CreateTags"), ApiClass::Tags);
        assert_eq!(ApiClass::of("DeleteSnapshot"), ApiClass::Snapshots);
        assert_eq!(ApiClass::of("CopyImage"), ApiClass::CopyImage);
        assert_eq!(ApiClass::of("StopInstances"), ApiClass::Mutating);
        assert_eq!(
            ApiClass::of_target("DynamoDB_20120810.CreateBackup"),
            Some((ApiClass::DynamodbBackups, "CreateBackup"))
        );
        assert_eq!(
            ApiClass::of_target("DynamoDB_20120810.UpdateTable"),
            Some((ApiClass::DynamodbControl, "UpdateTable"))
        );
        assert_eq!(
            ApiClass::of_target("ResourceGroupsTaggingAPI_20170126.GetResources"),
            Some((ApiClass::Tagging, "GetResources"))
        );
        assert_eq!(ApiClass::of_target("AmazonSSM.SendCommand"), Some((ApiClass::Ssm, "SendCommand")));
        assert_eq!(ApiClass::of_target("AmazonSQS.SendMessage"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_gives_its_burst_then_its_rate_split_among_the_fleet() {
        let budget = Ec2Budget::new(Ec2BudgetSettings::default());
        budget.set_fleet_size(5);
        // Tags: 100 burst, 10 per s, a fifth of each here.
        let started = Instant::now();
        for _ in 0..20 {
            budget.take("a", "r", "CreateTags", ApiClass::Tags).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst is immediate");
        for _ in 0..10 {
            budget.take("a", "r", "CreateTags", ApiClass::Tags).await;
        }
        let took = started.elapsed().as_secs_f64();
        assert!((4.9..=5.1).contains(&took), "ten more at 2 per s took {took} s");
        // Another region has a bucket of its own, and so has another API of the class.
        let other = Instant::now();
        budget.take("a", "r2", "CreateTags", ApiClass::Tags).await;
        budget.take("a", "r", "DeleteTags", ApiClass::Tags).await;
        assert_eq!(other.elapsed(), Duration::ZERO);
    }

    #[test]
    fn reads_by_id_are_in_the_smaller_bucket_and_writes_are_shared_by_the_workers_only() {
        assert_eq!(
            ApiClass::of_request("DescribeSnapshots", "Action=DescribeSnapshots&SnapshotId.1=s"),
            ApiClass::DescribeUnfiltered
        );
        assert_eq!(
            ApiClass::of_request("DescribeSnapshots", "Action=DescribeSnapshots&Filter.1.Name=tag%3Ax"),
            ApiClass::Describe
        );
        assert_eq!(ApiClass::of_request("DescribeImages", "Action=DescribeImages&MaxResults=100"), ApiClass::Describe);
        assert_eq!(ApiClass::of_request("CopySnapshot", "Action=CopySnapshot"), ApiClass::Snapshots);
        let budget = Ec2Budget::new(Ec2BudgetSettings::default());
        assert_eq!(budget.share(ApiClass::Snapshots), (5.0, 50.0), "CopySnapshot: EC2's 50 and 5 per s");
        assert_eq!(budget.share(ApiClass::DescribeUnfiltered), (10.0, 50.0));
        budget.set_fleet(2, 3);
        assert_eq!(budget.share(ApiClass::Describe), (4.0, 20.0), "reads: a fifth each");
        let (rate, burst) = budget.share(ApiClass::Mutating);
        assert!((rate - 5.0 / 3.0).abs() < 1e-9 && (burst - 50.0 / 3.0).abs() < 1e-9, "writes: a third each");
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_joining_a_running_fleet_starts_with_empty_buckets() {
        let budget = Ec2Budget::new(Ec2BudgetSettings::default());
        budget.set_fleet(0, 5);
        budget.joined_running_fleet();
        let started = Instant::now();
        budget.take("a", "r", "StopInstances", ApiClass::Mutating).await;
        // A fifth of 5 per s: one token a second, none to start with.
        let took = started.elapsed().as_secs_f64();
        assert!((0.9..=1.1).contains(&took), "the first call waited for its token: {took} s");
        tokio::time::sleep(JOIN_WINDOW).await;
        let later = Instant::now();
        budget.take("a", "r", "RebootInstances", ApiClass::Mutating).await;
        assert_eq!(later.elapsed(), Duration::ZERO, "a bucket made after the window starts full");
    }
}
