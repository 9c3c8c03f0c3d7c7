//! A discovery that fails in some (account, region) on the embedded backend: the jobs of the
//! places that answered go out at once, the failed places are retried on their own (never the
//! others again), and past their retries go to the events DLQ with each place's reason.

use async_trait::async_trait;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::dead_letter::REASON_ATTRIBUTE;
use opsfleet_protocol::plan::Discovery;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::{Config, Planner, Resource, ResourceType};
use opsfleet_router::{Discover, Discovered, DiscoveryError, Outcome, PlaceFailed, Router, DISCOVERY_RETRIES};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIG: &str = r#"
[fleet]
name = "t"
partitions = 2
allowed_accounts = ["123456789012", "210987654321"]
member_role = "arn:aws:iam::{account}:role/OpsFleetMember"
external_id = "opsfleet-test"

[[tasks]]
name = "nightly"
pattern = { "detail-type" = ["Scheduled Event"] }
targets = { type = "ec2:volume", accounts = ["123456789012", "210987654321"], regions = ["us-east-1", "eu-west-1"] }
action = "noop"
"#;

/// Finds one volume per place; eu-west-1 of the member account refuses the first `failures`
/// searches (a region not opted in there).
struct OneRegionDown {
    failures: Mutex<u32>,
    searched: Mutex<BTreeMap<String, u32>>,
}

#[async_trait]
impl Discover for OneRegionDown {
    async fn discover(&self, _discovery: &Discovery) -> Result<Vec<Resource>, DiscoveryError> {
        unreachable!("the router searches place by place")
    }

    async fn discover_places(&self, d: &Discovery) -> Result<Discovered, DiscoveryError> {
        let mut out = Discovered::default();
        for account in &d.accounts {
            for region in &d.regions {
                *self.searched.lock().expect("lock").entry(format!("{account}/{region}")).or_default() += 1;
                let mut failures = self.failures.lock().expect("lock");
                if account == "210987654321" && region == "eu-west-1" && *failures > 0 {
                    *failures -= 1;
                    out.failed.push(PlaceFailed {
                        account: account.clone(),
                        region: region.clone(),
                        error: "OptInRequired: the region is not enabled for this account".into(),
                    });
                    continue;
                }
                out.resources.push(Resource {
                    account: account.clone(),
                    region: region.clone(),
                    kind: ResourceType::Volume,
                    id: format!("vol-{}", &account[..4]),
                });
            }
        }
        Ok(out)
    }
}

fn scheduled() -> String {
    serde_json::json!({
        "id": "run-1", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/nightly"], "detail": {}
    })
    .to_string()
}

async fn router(backend: &EmbeddedBackend, failures: u32) -> (Router, Arc<OneRegionDown>) {
    let config = Config::parse(CONFIG, None).expect("config");
    setup(backend, &config).await.expect("setup");
    let discover = Arc::new(OneRegionDown { failures: Mutex::new(failures), searched: Mutex::default() });
    let router = Router::open(backend, Arc::new(Planner::new(config)), discover.clone()).await.expect("router");
    let events = backend.queue("t-events").await.expect("events");
    let sent = events.send_batch(&[OutgoingMessage { body: scheduled(), ..Default::default() }]).await;
    assert!(sent.expect("send").is_empty());
    (router, discover)
}

fn routed(outcomes: &[Outcome]) -> Vec<String> {
    match outcomes {
        [Outcome::Routed { jobs, .. }] => jobs.iter().map(|j| j.resource.key()).collect(),
        other => panic!("expected one routed message, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_places_that_answered_go_out_at_once_and_a_failed_one_is_retried_on_its_own() {
    let backend = EmbeddedBackend::new();
    let (router, discover) = router(&backend, 2).await;
    let first = routed(&router.poll_once(Duration::ZERO).await.expect("poll"));
    assert_eq!(first.len(), 3, "three of the four places answered: {first:?}");
    assert!(first.iter().all(|k| !k.contains("210987654321/eu-west-1")), "{first:?}");
    assert!(router.poll_once(Duration::ZERO).await.expect("poll").is_empty(), "the retry waits its delay");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(routed(&router.poll_once(Duration::ZERO).await.expect("poll")).is_empty(), "it fails once more");
    tokio::time::advance(Duration::from_secs(121)).await;
    let last = routed(&router.poll_once(Duration::ZERO).await.expect("poll"));
    assert_eq!(last, ["210987654321/eu-west-1/ec2:volume/vol-2109"], "only the failed place, found at last");
    let searched = discover.searched.lock().expect("lock").clone();
    assert_eq!(searched.get("123456789012/us-east-1"), Some(&1), "the places that answered are not searched again");
    assert_eq!(searched.get("210987654321/eu-west-1"), Some(&3));
    let dlq = backend.embedded_queue("t-events-dlq").expect("dlq");
    assert!(dlq.peek_bodies().is_empty(), "nothing was dead-lettered");
}

#[tokio::test(start_paused = true)]
async fn a_place_that_keeps_failing_is_dead_lettered_with_its_reason_and_the_others_are_not_lost() {
    let backend = EmbeddedBackend::new();
    let (router, _discover) = router(&backend, u32::MAX).await;
    assert_eq!(routed(&router.poll_once(Duration::ZERO).await.expect("poll")).len(), 3);
    let mut last = Vec::new();
    for _ in 0..DISCOVERY_RETRIES {
        tokio::time::advance(Duration::from_secs(901)).await;
        last = router.poll_once(Duration::ZERO).await.expect("poll");
    }
    assert!(matches!(&last[..], [Outcome::DeadLettered { kind: "discovery", .. }]), "{last:?}");
    let dlq = backend.embedded_queue("t-events-dlq").expect("dlq");
    let reason = dlq.peek_attributes()[0][REASON_ATTRIBUTE].clone();
    assert!(reason.contains("210987654321/eu-west-1: OptInRequired") && reason.contains("5 times"), "{reason}");
    tokio::time::advance(Duration::from_secs(901)).await;
    assert!(router.poll_once(Duration::ZERO).await.expect("poll").is_empty(), "nothing is left on the events queue");
}
