//! What the EC2 action tests share: clients through the EC2 realism layer in front of the
//! emulator, jobs, a runner that drives an action as the worker does, and resources to act on.

use aws_sdk_ec2::types::{Filter, ResourceType as Ec2Type, Tag as Ec2Tag, TagSpecification};
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::{Config, Job, Resource, ResourceType};
use opsfleet_testkit::{Ec2Plan, Ec2Realism};
use opsfleet_worker::actions::AnyAction;
use opsfleet_worker::{ActionContext, Step};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

pub fn require_emulator() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect("the action tests need the emulator: run them with tests/run.sh")
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Clients in the emulator's account through an EC2 realism layer with this plan.
pub async fn accounts_with(plan: Ec2Plan) -> (Arc<AwsAccounts>, Ec2Realism) {
    let layer = Ec2Realism::start(&require_emulator(), plan).await.expect("the EC2 realism layer");
    let base = layer.sdk_config(&AwsBackend::sdk_config().await);
    let config = Config::parse("[fleet]\nname = \"t\"\n", None).expect("config");
    (Arc::new(AwsAccounts::new(base, &config.fleet, Ec2Budget::new(config.ec2_budget))), layer)
}

/// Clients through EC2 as it behaves on an ordinary day.
pub async fn accounts() -> (Arc<AwsAccounts>, Ec2Realism) {
    accounts_with(Ec2Plan::aws()).await
}

pub async fn ec2(aws: &AwsAccounts, region: &str) -> aws_sdk_ec2::Client {
    aws.ec2(ACCOUNT, region).await.expect("ec2 client")
}

pub fn job(task: &str, event: &str, action: &str, params: &Value, kind: ResourceType, id: &str, region: &str) -> Job {
    let origin = JobOrigin { event_id: event, event_time: None, received_ms: 0, task, action, params };
    let resource = Resource { account: ACCOUNT.into(), region: region.into(), kind, id: id.into() };
    Job::new(origin, resource, 4)
}

pub fn ctx<'a>(job: &'a Job, aws: &'a AwsAccounts) -> ActionContext<'a> {
    at(job, aws, 1, 0)
}

pub fn at<'a>(job: &'a Job, aws: &'a AwsAccounts, attempt: u32, check: u32) -> ActionContext<'a> {
    ActionContext { job, dry_run: false, attempt, check, aws: Some(aws), now_ms: now_ms() }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs a job as the worker does: its start, its checks while pending (quickly: the layer's
/// windows are seconds), another attempt after a retryable failure (up to 6).
pub async fn run(action: &Arc<dyn AnyAction>, job: &Job, aws: &AwsAccounts) -> Step {
    run_from(action, job, aws, 1).await
}

pub async fn run_from(action: &Arc<dyn AnyAction>, job: &Job, aws: &AwsAccounts, first: u32) -> Step {
    let mut attempt = first;
    loop {
        let mut step = action.start(at(job, aws, attempt, 0)).await;
        let mut checks = 0;
        while let Step::Pending { state, .. } = &step {
            assert!(checks < 120, "still pending after {checks} checks: {state}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            checks += 1;
            step = action.check(at(job, aws, attempt, checks), state).await;
        }
        match step {
            Step::Failed { retryable: true, .. } if attempt < first + 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

pub fn tags(pairs: &[(&str, &str)]) -> Vec<Ec2Tag> {
    pairs.iter().map(|(k, v)| Ec2Tag::builder().key(*k).value(*v).build()).collect()
}

pub fn spec(kind: Ec2Type, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder().resource_type(kind).set_tags(Some(tags(pairs))).build()
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub async fn volume(ec2: &aws_sdk_ec2::Client, pairs: &[(&str, &str)]) -> String {
    let mut request = ec2.create_volume().availability_zone(format!("{REGION}a")).size(8);
    if !pairs.is_empty() {
        request = request.tag_specifications(spec(Ec2Type::Volume, pairs));
    }
    request.send().await.expect("create volume").volume_id().expect("volume id").to_owned()
}

/// A snapshot of a volume, made by the test (not by opsfleet).
pub async fn snapshot_of(ec2: &aws_sdk_ec2::Client, volume: &str) -> String {
    let out = ec2.create_snapshot().volume_id(volume).send().await.expect("snapshot");
    out.snapshot_id().expect("id").to_owned()
}

pub async fn instance(ec2: &aws_sdk_ec2::Client) -> String {
    instance_of(ec2, "m1.small").await
}

/// An instance of a type, made by the test.
pub async fn instance_of(ec2: &aws_sdk_ec2::Client, kind: &str) -> String {
    let out = ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .instance_type(kind.into())
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("run instance");
    out.instances()[0].instance_id().expect("instance id").to_owned()
}

/// An instance's type and state.
pub async fn type_and_state(ec2: &aws_sdk_ec2::Client, id: &str) -> (String, String) {
    let out = ec2.describe_instances().instance_ids(id).send().await.expect("describe");
    let i = &out.reservations()[0].instances()[0];
    let kind = i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default();
    (kind, i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default())
}

pub async fn snapshots(ec2: &aws_sdk_ec2::Client, key: &str, value: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&format!("tag:{key}"), value))
        .send()
        .await
        .expect("describe snapshots");
    out.snapshots().to_vec()
}

/// The images this account owns tagged `key = value`.
pub async fn images(ec2: &aws_sdk_ec2::Client, key: &str, value: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter(&format!("tag:{key}"), value))
        .send()
        .await
        .expect("describe images");
    out.images().to_vec()
}

pub fn tag_map(tags: &[Ec2Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect()
}

pub fn done(step: &Step) -> &str {
    match step {
        Step::Done { summary } => summary,
        other => panic!("expected done, got {other:?}"),
    }
}
