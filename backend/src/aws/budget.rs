//! The fleet-wide EC2 API budget: token buckets per (account, region, API class), shaped like
//! EC2's own request-token buckets, shared so that N processes together stay within one.
//!
//! Every EC2 request of the fleet goes through [`Budgeted`], an HTTP client in front of the
//! SDK's, which reads the request's `Action` and waits for a token of its class before sending
//! it, so SDK retries take tokens too. Each process takes `1/N` of every bucket (rate and
//! burst), with N the live processes it is told of (counted from the presence items every
//! router and worker writes): N processes together never send more than one bucket's worth,
//! however the work is spread.

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
    /// `Describe*` and other reads.
    Describe,
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
}

impl ApiClass {
    /// The class of an EC2 action (the `Action` of the request).
    pub fn of(action: &str) -> Self {
        match action {
            "RunInstances" | "StartInstances" => ApiClass::RunStart,
            "CreateTags" | "DeleteTags" => ApiClass::Tags,
            "CreateSnapshot" | "DeleteSnapshot" | "CopySnapshot" => ApiClass::Snapshots,
            "CopyImage" => ApiClass::CopyImage,
            a if a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List") => ApiClass::Describe,
            _ => ApiClass::Mutating,
        }
    }

    /// The class's name in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiClass::Describe => "describe",
            ApiClass::Mutating => "mutating",
            ApiClass::RunStart => "run_start",
            ApiClass::Tags => "tags",
            ApiClass::Snapshots => "snapshots",
            ApiClass::CopyImage => "copy_image",
        }
    }

    fn settings(self, budget: &Ec2BudgetSettings) -> BucketSettings {
        match self {
            ApiClass::Describe => budget.describe,
            ApiClass::Mutating => budget.mutating,
            ApiClass::RunStart => budget.run_start,
            ApiClass::Tags => budget.tags,
            ApiClass::Snapshots => budget.snapshots,
            ApiClass::CopyImage => budget.copy_image,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The EC2 budget of this process: its share of the fleet's buckets.
#[derive(Debug)]
pub struct Ec2Budget {
    settings: Ec2BudgetSettings,
    /// The live processes sharing the budget (at least 1).
    fleet: AtomicU32,
    buckets: Mutex<HashMap<(String, String, ApiClass), Bucket>>,
}

impl Ec2Budget {
    /// A budget with these buckets, shared with no one until told otherwise.
    pub fn new(settings: Ec2BudgetSettings) -> Arc<Self> {
        Arc::new(Ec2Budget { settings, fleet: AtomicU32::new(1), buckets: Mutex::default() })
    }

    /// Sets how many processes share the budget.
    pub fn set_fleet_size(&self, processes: u32) {
        self.fleet.store(processes.max(1), Ordering::Relaxed);
    }

    /// This process's share of a class's bucket: (rate per second, burst).
    pub fn share(&self, class: ApiClass) -> (f64, f64) {
        let n = f64::from(self.fleet.load(Ordering::Relaxed).max(1));
        let s = class.settings(&self.settings);
        (f64::from(s.rate) / n, (f64::from(s.burst) / n).max(1.0))
    }

    /// Waits until a request of `class` in `account`/`region` may be sent, and takes its token.
    pub async fn take(&self, account: &str, region: &str, class: ApiClass) {
        loop {
            let wait = {
                let (rate, burst) = self.share(class);
                let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                let bucket = buckets
                    .entry((account.to_owned(), region.to_owned(), class))
                    .or_insert(Bucket { tokens: burst, at: now });
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

/// An HTTP client that takes a token of the request's class from a budget before each EC2
/// request it sends.
#[derive(Debug, Clone)]
pub struct Budgeted {
    inner: SharedHttpClient,
    budget: Arc<Ec2Budget>,
    account: String,
    region: String,
}

impl Budgeted {
    /// `inner`, shaped by `budget` for the calls of one account and region.
    pub fn new(inner: SharedHttpClient, budget: Arc<Ec2Budget>, account: &str, region: &str) -> Self {
        Budgeted { inner, budget, account: account.to_owned(), region: region.to_owned() }
    }
}

impl HttpClient for Budgeted {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(BudgetedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: Arc::clone(&self.budget),
            account: self.account.clone(),
            region: self.region.clone(),
        })
    }
}

#[derive(Debug)]
struct BudgetedConnector {
    inner: SharedHttpConnector,
    budget: Arc<Ec2Budget>,
    account: String,
    region: String,
}

impl HttpConnector for BudgetedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let class = ApiClass::of(&action_of(&request));
        let (inner, budget) = (self.inner.clone(), Arc::clone(&self.budget));
        let (account, region) = (self.account.clone(), self.region.clone());
        HttpConnectorFuture::new(async move {
            budget.take(&account, &region, class).await;
            inner.call(request).await
        })
    }
}

/// The `Action` of an EC2 (query protocol) request, from its form body.
fn action_of(request: &HttpRequest) -> String {
    let body = request.body().bytes().unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    text.split('&').find_map(|pair| pair.strip_prefix("Action=")).unwrap_or_default().to_owned()
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
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_gives_its_burst_then_its_rate_split_among_the_fleet() {
        let budget = Ec2Budget::new(Ec2BudgetSettings::default());
        budget.set_fleet_size(5);
        // Tags: 100 burst, 10 per s, a fifth of each here.
        let started = Instant::now();
        for _ in 0..20 {
            budget.take("a", "r", ApiClass::Tags).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst is immediate");
        for _ in 0..10 {
            budget.take("a", "r", ApiClass::Tags).await;
        }
        let took = started.elapsed().as_secs_f64();
        assert!((4.9..=5.1).contains(&took), "ten more at 2 per s took {took} s");
        // Another region has a bucket of its own.
        let other = Instant::now();
        budget.take("a", "r2", ApiClass::Tags).await;
        assert_eq!(other.elapsed(), Duration::ZERO);
    }
}
