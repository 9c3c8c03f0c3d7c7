//! The router on the embedded backend: partitions, acknowledgement, dead-lettering, the
//! expansion cap, retries of partially failed batches, deferral, deduplication and metrics.

use async_trait::async_trait;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::job::partition_of;
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{
    Backend, DeleteFailure, OutgoingMessage, Queue, QueueDepth, QueueError, QueueSpec, ReceivedMessage, SendFailure,
    Store, StoreError,
};
use opsfleet_protocol::setup::setup;
use opsfleet_protocol::{Config, Job, Planner};
use opsfleet_router::{NoDiscovery, Outcome, Router};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
[fleet]
name = "t"
partitions = 4
allowed_accounts = ["123456789012"]
max_jobs_per_event = 3

[[tasks]]
name = "stopped"
pattern = { "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "noop"

[[tasks]]
name = "alarm"
pattern = { "detail-type" = ["CloudWatch Alarm State Change"] }
targets = "event"
action = "noop"
"#;

fn stopped(id: &str, instance: &str) -> String {
    serde_json::json!({
        "version": "0", "id": id, "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "123456789012", "time": "2024-01-01T00:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": { "instance-id": instance, "state": "stopped" }
    })
    .to_string()
}

fn alarm(instances: &[&str]) -> String {
    let metrics: Vec<_> = instances
        .iter()
        .enumerate()
        .map(|(i, id)| serde_json::json!({"id": format!("m{i}"), "metricStat": {"metric": {"namespace": "AWS/EC2", "name": "CPUUtilization", "dimensions": {"InstanceId": id}}}}))
        .collect();
    serde_json::json!({
        "version": "0", "id": "alarm-1", "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
        "account": "123456789012", "region": "us-east-1", "resources": [],
        "detail": { "alarmName": "a", "state": {"value": "ALARM"}, "configuration": { "metrics": metrics } }
    })
    .to_string()
}

async fn fleet(backend: &dyn Backend) -> (Arc<Planner>, Arc<dyn Queue>) {
    fleet_of(backend, CONFIG).await
}

async fn fleet_of(backend: &dyn Backend, text: &str) -> (Arc<Planner>, Arc<dyn Queue>) {
    let config = Config::parse(text, None).expect("config");
    setup(backend, &config).await.expect("setup");
    let events = backend.queue("t-events").await.expect("events queue");
    (Arc::new(Planner::new(config)), events)
}

async fn send(queue: &dyn Queue, body: String) {
    assert!(queue.send_batch(&[OutgoingMessage { body, ..Default::default() }]).await.expect("send").is_empty());
}

async fn jobs_on(backend: &dyn Backend, partition: u32) -> Vec<ReceivedMessage> {
    let queue = backend.queue(&names::jobs_queue("t", partition)).await.expect("partition");
    let mut out = Vec::new();
    loop {
        let got = queue.receive(10, Duration::ZERO, None).await.expect("receive");
        if got.is_empty() {
            return out;
        }
        let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.delete_batch(&receipts).await.expect("delete");
        out.extend(got);
    }
}

#[tokio::test]
async fn jobs_land_on_their_partition_and_the_event_is_deleted() {
    let backend = EmbeddedBackend::new();
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    send(events.as_ref(), stopped("e1", "i-1")).await;
    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    assert!(matches!(&outcomes[..], [Outcome::Routed { jobs, .. }] if jobs.len() == 1), "{outcomes:?}");
    let key = "123456789012/us-east-1/ec2:instance/i-1";
    let partition = partition_of(key, 4);
    let got = jobs_on(&backend, partition).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].group_id.as_deref(), Some(key));
    let job = Job::from_json(&got[0].body).expect("job");
    assert_eq!((job.task.as_str(), job.partition, job.event_id.as_str()), ("stopped", partition, "e1"));
    assert_eq!(events.depth().await.expect("depth"), QueueDepth::default(), "the input is deleted");
}

#[tokio::test]
async fn bad_input_goes_to_the_dlq_with_its_reason_and_nothing_else_is_lost() {
    let backend = EmbeddedBackend::new();
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    send(events.as_ref(), "{not json".into()).await;
    send(events.as_ref(), stopped("e2", "i-2").replace("123456789012", "999999999999")).await;
    send(events.as_ref(), alarm(&["i-1", "i-2", "i-3", "i-4"])).await;
    send(events.as_ref(), stopped("e3", "i-3")).await;
    let mut outcomes = Vec::new();
    while let Ok(more) = router.poll_once(Duration::ZERO).await {
        if more.is_empty() {
            break;
        }
        outcomes.extend(more);
    }
    let dead: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::DeadLettered { .. })).collect();
    assert_eq!(dead.len(), 3, "{outcomes:?}");
    let dlq = backend.embedded_queue("t-events-dlq").expect("dlq");
    let reasons: Vec<String> =
        dlq.peek_attributes().iter().map(|a| a[opsfleet_protocol::dead_letter::REASON_ATTRIBUTE].clone()).collect();
    assert!(reasons[0].starts_with("body is not JSON"), "{reasons:?}");
    assert_eq!(reasons[1], "account 999999999999 is not in fleet.allowed_accounts");
    assert_eq!(reasons[2], "event expands to 4 jobs, over fleet.max_jobs_per_event = 3");
    assert_eq!(dlq.peek_bodies()[0], "{not json", "the body is kept as sent");
    let routed: usize =
        (0..4).map(|p| backend.embedded_queue(&names::jobs_queue("t", p)).map_or(0, |q| q.peek_bodies().len())).sum();
    assert_eq!(routed, 1, "the good event behind the bad ones is routed");
    assert_eq!(events.depth().await.expect("depth"), QueueDepth::default());
}

#[tokio::test]
async fn a_redelivered_event_yields_the_same_jobs_once() {
    let backend = EmbeddedBackend::new();
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    send(events.as_ref(), stopped("same", "i-9")).await;
    send(events.as_ref(), stopped("same", "i-9")).await;
    router.poll_once(Duration::ZERO).await.expect("poll");
    let total: usize = {
        let mut n = 0;
        for p in 0..4 {
            n += jobs_on(&backend, p).await.len();
        }
        n
    };
    assert_eq!(total, 1, "FIFO deduplication by job id");
}

/// Wraps the embedded backend: job queues fail some entries, or every call, as SQS can.
struct Faulty {
    inner: EmbeddedBackend,
    mode: Mode,
}

#[derive(Clone, Copy)]
enum Mode {
    /// The first send of every batch fails its odd entries (not the sender's fault).
    PartialOnce,
    /// Every send fails as unavailable.
    Down,
}

struct FaultyQueue {
    inner: Arc<dyn Queue>,
    mode: Mode,
    sends: AtomicU32,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<SendFailure>, QueueError> {
        let n = self.sends.fetch_add(1, Ordering::SeqCst);
        match self.mode {
            Mode::Down => Err(QueueError::Unavailable {
                queue: self.name().into(),
                operation: "SendMessageBatch",
                message: "503".into(),
            }),
            Mode::PartialOnce if n == 0 && messages.len() > 1 => {
                let (keep, fail): (Vec<_>, Vec<_>) =
                    messages.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
                let kept: Vec<OutgoingMessage> = keep.into_iter().map(|(_, m)| m).collect();
                self.inner.send_batch(&kept).await?;
                Ok(fail
                    .into_iter()
                    .map(|(index, _)| SendFailure {
                        index,
                        code: "InternalError".into(),
                        message: "try again".into(),
                        sender_fault: false,
                    })
                    .collect())
            }
            Mode::PartialOnce => self.inner.send_batch(messages).await,
        }
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, QueueError> {
        self.inner.delete_batch(receipts).await
    }
    async fn change_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.change_visibility(receipt, visibility).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

#[async_trait]
impl Backend for Faulty {
    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        let inner = self.inner.queue(name).await?;
        if name.contains("-jobs-") {
            return Ok(Arc::new(FaultyQueue { inner, mode: self.mode, sends: AtomicU32::new(0) }));
        }
        Ok(inner)
    }
    async fn store(&self, table: &str) -> Result<Arc<dyn Store>, StoreError> {
        self.inner.store(table).await
    }
    async fn ensure_queue(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        self.inner.ensure_queue(spec).await
    }
    async fn ensure_table(&self, table: &str) -> Result<(), StoreError> {
        self.inner.ensure_table(table).await
    }
}

#[tokio::test]
async fn partially_failed_batches_are_retried_until_every_job_is_accepted() {
    let backend = Faulty { inner: EmbeddedBackend::new(), mode: Mode::PartialOnce };
    // With one partition, the three jobs of the event share one batch, whose odd entries fail.
    let (planner, events) = fleet_of(&backend, &CONFIG.replace("partitions = 4", "partitions = 1")).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    let many: Vec<String> = (0..3).map(|i| format!("i-{i}")).collect();
    let ids: Vec<&str> = many.iter().map(String::as_str).collect();
    send(events.as_ref(), alarm(&ids)).await;
    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    assert!(matches!(&outcomes[..], [Outcome::Routed { jobs, .. }] if jobs.len() == 3), "{outcomes:?}");
    let got = jobs_on(&backend.inner, 0).await;
    let mut bodies: Vec<String> = got.iter().map(|m| Job::from_json(&m.body).expect("job").resource.id).collect();
    bodies.sort();
    assert_eq!(bodies, ["i-0", "i-1", "i-2"], "the failed entries were sent again, each once");
}

#[tokio::test]
async fn an_event_whose_jobs_cannot_be_sent_stays_for_redelivery() {
    let backend = Faulty { inner: EmbeddedBackend::new(), mode: Mode::Down };
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    send(events.as_ref(), stopped("e1", "i-1")).await;
    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    assert!(matches!(&outcomes[..], [Outcome::Deferred { error }] if error.contains("503")), "{outcomes:?}");
    assert_eq!(events.depth().await.expect("depth").in_flight, 1, "not deleted: it comes back after its visibility");
    assert!(backend.inner.embedded_queue("t-events-dlq").expect("dlq").peek_bodies().is_empty());
}

#[test]
fn metrics_count_events_jobs_and_rejections() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let backend = EmbeddedBackend::new();
            let (planner, events) = fleet(&backend).await;
            let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
            send(events.as_ref(), stopped("e1", "i-1")).await;
            send(events.as_ref(), "nope".into()).await;
            router.poll_once(Duration::ZERO).await.expect("poll");
        });
    });
    let text = handle.render();
    for line in [
        "opsfleet_events_received_total{source=\"aws.ec2\",detail_type=\"EC2 Instance State-change Notification\"} 1",
        "opsfleet_events_rejected_total{reason=\"not_an_event\"} 1",
        "opsfleet_jobs_emitted_total{task=\"stopped\",action=\"noop\"} 1",
        "opsfleet_route_duration_seconds_count 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn an_event_whose_job_is_over_the_message_limit_is_dead_lettered() {
    let backend = EmbeddedBackend::new();
    let big = "x".repeat(300 * 1024);
    let text = CONFIG.replace(
        "action = \"noop\"\n\n[[tasks]]",
        &format!("action = \"noop\"\nparams = {{ blob = \"{big}\" }}\n\n[[tasks]]"),
    );
    let (planner, events) = fleet_of(&backend, &text).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    send(events.as_ref(), stopped("e1", "i-1")).await;
    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    assert!(
        matches!(&outcomes[..], [Outcome::DeadLettered { kind: "job_too_large", reason }] if reason.contains("over the 262144-byte message limit")),
        "{outcomes:?}"
    );
    assert_eq!(events.depth().await.expect("depth"), QueueDepth::default());
}

/// A discoverer that takes its time.
struct SlowDiscovery;

#[async_trait]
impl opsfleet_router::Discover for SlowDiscovery {
    async fn discover(
        &self,
        discovery: &opsfleet_protocol::plan::Discovery,
    ) -> Result<Vec<opsfleet_protocol::Resource>, opsfleet_router::DiscoveryError> {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(vec![opsfleet_protocol::Resource {
            account: discovery.accounts[0].clone(),
            region: discovery.regions[0].clone(),
            kind: opsfleet_protocol::ResourceType::Volume,
            id: "vol-1".into(),
        }])
    }
}

#[tokio::test]
async fn an_event_stays_hidden_while_a_slow_discovery_runs() {
    let backend = EmbeddedBackend::new();
    let text = format!(
        "{CONFIG}\n[router]\nvisibility_secs = 1\n\n[[tasks]]\nname = \"nightly\"\npattern = {{ \"detail-type\" = [\"Scheduled Event\"] }}\ntargets = {{ type = \"ec2:volume\" }}\naction = \"noop\"\n"
    );
    let (planner, events) = fleet_of(&backend, &text).await;
    let router = Arc::new(Router::open(&backend, planner, Arc::new(SlowDiscovery)).await.expect("router"));
    let scheduled = serde_json::json!({
        "id": "s1", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:123456789012:rule/nightly"], "detail": {}
    });
    send(events.as_ref(), scheduled.to_string()).await;
    let routing = tokio::spawn({
        let router = Arc::clone(&router);
        async move { router.poll_once(Duration::ZERO).await }
    });
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(events.receive(10, Duration::ZERO, None).await.expect("receive").is_empty(), "the event is still hidden");
    let outcomes = routing.await.expect("join").expect("poll");
    assert!(matches!(&outcomes[..], [Outcome::Routed { jobs, .. }] if jobs.len() == 1), "{outcomes:?}");
}

#[tokio::test]
async fn a_rejected_event_with_many_attributes_still_reaches_the_dlq() {
    let backend = EmbeddedBackend::new();
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    let mut message = OutgoingMessage { body: "nope".into(), ..Default::default() };
    message.attributes = (0..10).map(|i| (format!("attr{i}"), "v".to_owned())).collect();
    assert!(events.send_batch(&[message]).await.expect("send").is_empty());
    let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
    assert!(matches!(&outcomes[..], [Outcome::DeadLettered { kind: "not_an_event", .. }]), "{outcomes:?}");
    let attributes = &backend.embedded_queue("t-events-dlq").expect("dlq").peek_attributes()[0];
    assert_eq!(attributes.len(), 10, "ours and eight of the original ten: {attributes:?}");
    assert!(attributes[opsfleet_protocol::dead_letter::REASON_ATTRIBUTE].starts_with("body is not JSON"));
}

#[tokio::test]
async fn an_event_naming_an_invalid_id_is_dead_lettered_at_once_and_sends_nothing() {
    let backend = EmbeddedBackend::new();
    let (planner, events) = fleet(&backend).await;
    let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
    let long = format!("i-{}", "f".repeat(200));
    for ids in [vec!["i-1", "i-01 23"], vec![long.as_str()], vec!["i-2", "vol-0123"]] {
        send(events.as_ref(), alarm(&ids)).await;
        let outcomes = router.poll_once(Duration::ZERO).await.expect("poll");
        assert!(
            matches!(&outcomes[..], [Outcome::DeadLettered { kind: "invalid_resource", .. }]),
            "{ids:?}: {outcomes:?}"
        );
    }
    let dlq = backend.embedded_queue("t-events-dlq").expect("dlq");
    let reasons: Vec<String> =
        dlq.peek_attributes().iter().map(|a| a[opsfleet_protocol::dead_letter::REASON_ATTRIBUTE].clone()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("`i-01 23` is not a ec2:instance id"), "{reasons:?}");
    assert!(reasons[1].len() < 300 && reasons[1].contains('…'), "a long id is shown clipped: {reasons:?}");
    assert!(reasons[2].contains("`vol-0123` is not a ec2:instance id"), "{reasons:?}");
    let sent: usize =
        (0..4).map(|p| backend.embedded_queue(&names::jobs_queue("t", p)).map_or(0, |q| q.peek_bodies().len())).sum();
    assert_eq!(sent, 0, "no job of an event with an invalid id is sent, not even its valid ones");
    assert_eq!(events.depth().await.expect("depth"), QueueDepth::default(), "nothing is left to be received again");
}

#[test]
fn a_task_that_matches_and_finds_nothing_is_counted_and_reported() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let outcomes = metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let backend = EmbeddedBackend::new();
            let (planner, events) = fleet(&backend).await;
            let router = Router::open(&backend, planner, Arc::new(NoDiscovery)).await.expect("router");
            // A composite alarm names no instance.
            send(events.as_ref(), alarm(&[])).await;
            router.poll_once(Duration::ZERO).await.expect("poll")
        })
    });
    assert!(matches!(&outcomes[..], [Outcome::Routed { jobs, .. }] if jobs.is_empty()), "{outcomes:?}");
    let line = "opsfleet_tasks_found_nothing_total{task=\"alarm\"} 1";
    let text = handle.render();
    assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
}
