//! End-to-end runs of real actions: a fleet set up by `opsfleet setup`, its router and worker
//! processes with AWS behind the realism layer, an event sent by a real client (boto3), and
//! the ledger record of the one job it plans.

use super::{opsfleet, python_client, root, unique_fleet, write_config, ChildGuard};
use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::event::normalize;
use opsfleet_protocol::job::job_id;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Planner, Resource};
use opsfleet_testkit::{Ec2Plan, Ec2Realism};
use opsfleet_worker::ledger::Ledger;
use opsfleet_worker::ActionRegistry;
use std::time::{Duration, Instant};

/// A fleet made by `opsfleet setup` from a config, with AWS behind a realism layer and clients
/// through it.
pub struct SetUp {
    /// The fleet's name.
    pub fleet: String,
    /// Its config file.
    pub path: std::path::PathBuf,
    /// Its config.
    pub config: Config,
    /// The realism layer its processes and the clients go through.
    pub layer: Ec2Realism,
    /// EC2 in its account, us-east-1.
    pub ec2: aws_sdk_ec2::Client,
    /// DynamoDB there.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// RDS there.
    pub rds: aws_sdk_rds::Client,
    /// Auto Scaling there.
    pub autoscaling: aws_sdk_autoscaling::Client,
}

/// Sets a fleet up from `text` (its `FLEET` the fleet's unique name) with AWS behind a realism
/// layer with `plan`.
pub async fn set_up(name: &str, text: &str, plan: Ec2Plan) -> SetUp {
    let fleet = unique_fleet(name);
    let path = write_config(&fleet, text);
    let setup = opsfleet(&["setup", "--config", path.to_str().unwrap_or_default()]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let config = Config::parse(&std::fs::read_to_string(&path).expect("config"), Some(&ActionRegistry::builtin()))
        .expect("config");
    let emulator = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh");
    let layer = Ec2Realism::start(&emulator, plan).await.expect("the EC2 realism layer");
    let base = layer.sdk_config(&AwsBackend::sdk_config().await);
    let accounts = AwsAccounts::new(base, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let ec2 = accounts.ec2("123456789012", "us-east-1").await.expect("ec2");
    let dynamodb = accounts.dynamodb("123456789012", "us-east-1").await.expect("dynamodb");
    let rds = accounts.rds("123456789012", "us-east-1").await.expect("rds");
    let autoscaling = accounts.autoscaling("123456789012", "us-east-1").await.expect("autoscaling");
    SetUp { fleet, path, config, layer, ec2, dynamodb, rds, autoscaling }
}

/// Runs a router and a worker of the fleet set up at `path` with EC2 behind `layer`, sends
/// `event` to the events queue with a real client (boto3), and waits for the one job it plans
/// (on the resource it names, or on `discovered`, found by its task's discovery) to end: its
/// id and ledger record.
pub async fn run_fleet(
    fleet: &str,
    path: &std::path::Path,
    config: Config,
    layer: &Ec2Realism,
    event: &serde_json::Value,
    discovered: Option<&Resource>,
) -> (String, opsfleet_worker::ledger::JobRecord) {
    let log =
        |name: &str| std::fs::File::create(root().join("target/e2e").join(format!("{fleet}-{name}.log"))).expect("log");
    let _router = ChildGuard(
        opsfleet(&["router", "--config", path.to_str().unwrap_or_default()])
            .env("AWS_ENDPOINT_URL", &layer.url)
            .stderr(log("router"))
            .spawn()
            .expect("router"),
    );
    let _worker = ChildGuard(
        opsfleet(&["worker", "--config", path.to_str().unwrap_or_default()])
            .env("AWS_ENDPOINT_URL", &layer.url)
            .stderr(log("worker"))
            .spawn()
            .expect("worker"),
    );
    let event = event.to_string();
    let file = root().join("target/e2e").join(format!("{fleet}-event.json"));
    std::fs::write(&file, &event).expect("event file");
    let sent = python_client(&["send-files", &format!("{fleet}-events"), file.to_str().unwrap_or_default()]).status();
    assert!(sent.expect("send").success());

    let event = normalize(&event).expect("event");
    let plan = Planner::new(config).plan(&event, 0).expect("plan");
    // The event's one job: the resource it names, or the one its task's discovery finds.
    let id = match (&plan.jobs[..], &plan.discoveries[..], discovered) {
        ([job], [], None) => job.id.clone(),
        ([], [discovery], Some(resource)) => job_id(&event.id, &discovery.task_name, &resource.key()),
        _ => panic!("one job, named by the event or found by one discovery: {plan:?}"),
    };
    let backend = AwsBackend::from_env().await;
    let ledger = Ledger::new(backend.store(fleet).await.expect("table"), Clock::new(), Duration::from_secs(3600));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let record = ledger.job(&id).await.expect("ledger");
        if record.as_ref().is_some_and(|r| r.status.is_final()) {
            return (id, record.expect("record"));
        }
        assert!(Instant::now() < deadline, "the job did not finish: {record:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
