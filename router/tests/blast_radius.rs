//! Blast-radius limits on the embedded backend: a discovery's run over `max_targets_percent`
//! of the population it searched, and an event's run over `max_targets`, send no jobs and put
//! the event in the events DLQ with the reason; the other tasks' runs of the same event go
//! out, and a task that allows it runs anyway.

use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::dead_letter::REASON_ATTRIBUTE;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::{Config, Planner, Resource, ResourceType};
use opsfleet_router::{InventoryItem, Outcome, Router, StaticInventory};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
[fleet]
name = "b"
allowed_accounts = ["123456789012"]

[[tasks]]
name = "too-wide"
pattern = { source = ["ops.patch"] }
targets = { type = "ec2:instance", tags = { Patch = "yes" } }
action = "noop"
max_targets_percent = 50

[[tasks]]
name = "wide-enough"
pattern = { source = ["ops.patch"] }
targets = { type = "ec2:instance", tags = { Patch = "yes" } }
action = "noop"
max_targets_percent = 60

[[tasks]]
name = "one-at-most"
pattern = { source = ["ops.patch"] }
targets = "event"
action = "noop"
max_targets = 1

[[tasks]]
name = "one-but-allowed"
pattern = { source = ["ops.patch"] }
targets = "event"
action = "noop"
max_targets = 1
allow_over_max_targets = true
"#;

/// Ten instances, six of them tagged for patching.
fn inventory() -> StaticInventory {
    StaticInventory::new(
        (0..10)
            .map(|i| InventoryItem {
                resource: Resource {
                    account: "123456789012".into(),
                    region: "us-east-1".into(),
                    kind: ResourceType::Instance,
                    id: format!("i-{i:017x}"),
                },
                tags: if i < 6 { BTreeMap::from([("Patch".to_owned(), "yes".to_owned())]) } else { BTreeMap::new() },
                state: Some("running".into()),
            })
            .collect(),
    )
}

#[tokio::test]
async fn runs_over_their_limits_are_refused_with_the_reason_and_the_others_go_out() {
    let backend = EmbeddedBackend::new();
    let config = Config::parse(CONFIG, None).expect("config");
    setup(&backend, &config).await.expect("setup");
    let router = Router::open(&backend, Arc::new(Planner::new(config)), Arc::new(inventory())).await.expect("router");
    let event = serde_json::json!({
        "id": "patch-1", "detail-type": "Patch", "source": "ops.patch", "account": "123456789012",
        "region": "us-east-1", "detail": {},
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-00000000000000001",
                      "arn:aws:ec2:us-east-1:123456789012:instance/i-00000000000000002"],
    });
    let events = backend.queue("b-events").await.expect("events");
    let sent = events.send_batch(&[OutgoingMessage { body: event.to_string(), ..Default::default() }]).await;
    assert!(sent.expect("send").is_empty());

    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    let [Outcome::Routed { jobs, .. }] = &outcomes[..] else { panic!("one routed event: {outcomes:?}") };
    let mut per_task: BTreeMap<&str, usize> = BTreeMap::new();
    for job in jobs {
        *per_task.entry(job.task.as_str()).or_default() += 1;
    }
    assert_eq!(per_task, BTreeMap::from([("one-but-allowed", 2), ("wide-enough", 6)]));

    let dlq = backend.embedded_queue("b-events-dlq").expect("dlq");
    let mut reasons: Vec<String> = dlq.peek_attributes().iter().map(|a| a[REASON_ATTRIBUTE].clone()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "task one-at-most: a run of 2 targets is over max_targets = 1",
            "task too-wide: a run of 6 targets is 60% of the 10 ec2:instance searched, over max_targets_percent = 50",
        ]
    );
    assert!(dlq.peek_bodies().iter().all(|b| b.contains("patch-1")), "the letters carry the event, to redrive");
}
