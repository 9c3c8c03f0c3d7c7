//! The fleet-wide EC2 budget: a burst of 2,000 mutating jobs on one account and region, run by
//! two `opsfleet worker` processes that share the budget (each sees the other through the
//! table), never sends more `CreateTags` calls than the configured bucket allows. Queues and
//! table are on the fast emulators; EC2 is moto behind a proxy that logs every call, so the
//! calls are counted per second where they arrive.

mod support;

use opsfleet_backend::aws::budget::Ec2Budget;
use opsfleet_backend::aws::AwsAccounts;
use opsfleet_backend::AwsBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Clock;
use opsfleet_protocol::{Config, Job, Resource, ResourceType};
use opsfleet_worker::ledger::{Ledger, Status};
use opsfleet_worker::ActionRegistry;
use std::time::{Duration, Instant};
use support::fault_proxy::FaultProxy;
use support::{fast_backend, opsfleet_fast, unique_fleet, write_config, ChildGuard};

const RATE: f64 = 30.0;
const BURST: f64 = 10.0;

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 4

[ec2_budget]
tags = { rate = 30, burst = 10 }
describe = { rate = 400, burst = 100 }

[[tasks]]
name = "mark"
pattern = { source = ["x"] }
targets = "event"
action = "tag"
params = { add = { Marked = "{task}" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mutating_jobs_never_exceed_the_bucket_between_two_workers() {
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("run with tests/run.sh: it starts the emulators");
    let proxy = FaultProxy::start(&moto).await;
    let fleet = unique_fleet("budget");
    let path = write_config(&fleet, CONFIG);
    let setup = opsfleet_fast(&["setup", "--config", path.to_str().unwrap_or_default()]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let config = Config::parse(&std::fs::read_to_string(&path).expect("config"), Some(&ActionRegistry::builtin()))
        .expect("config");

    // 200 volumes, 10 events each: 2,000 tag jobs on one account and region, enough at once
    // to push against the bucket (each volume's jobs take its lock one after another).
    let direct = AwsAccounts::new(AwsBackend::sdk_config().await, &config.fleet, Ec2Budget::new(config.ec2_budget));
    let ec2 = direct.ec2("123456789012", "us-east-1").await.expect("ec2");
    let mut volumes = Vec::new();
    for _ in 0..200 {
        let out = ec2.create_volume().availability_zone("us-east-1a").size(1).send().await.expect("volume");
        volumes.push(out.volume_id().expect("id").to_owned());
    }
    let task = config.task("mark").expect("task");
    let mut jobs = Vec::new();
    for event in 0..10 {
        for volume in &volumes {
            let event_id = format!("{fleet}-{event}");
            let origin = JobOrigin {
                event_id: &event_id,
                event_time: None,
                received_ms: 0,
                task: "mark",
                action: &task.action,
                params: &task.params,
            };
            let resource = Resource {
                account: "123456789012".into(),
                region: "us-east-1".into(),
                kind: ResourceType::Volume,
                id: volume.clone(),
            };
            jobs.push(Job::new(origin, resource, 4));
        }
    }
    let backend = fast_backend().await;
    for p in 0..4 {
        let queue = backend.queue(&format!("{fleet}-jobs-{p}.fifo")).await.expect("queue");
        let messages: Vec<OutgoingMessage> = jobs
            .iter()
            .filter(|j| j.partition == p)
            .map(|j| OutgoingMessage {
                body: j.to_json().expect("json"),
                group_id: Some(j.id.clone()),
                dedup_id: Some(j.id.clone()),
                ..Default::default()
            })
            .collect();
        for chunk in messages.chunks(10) {
            assert!(queue.send_batch(chunk).await.expect("send").is_empty());
        }
    }

    // Two worker processes: EC2 (and STS) through the proxy, queues and table direct.
    let workers: Vec<ChildGuard> = (0..2)
        .map(|n| {
            let log = std::fs::File::create(support::root().join("target/e2e").join(format!("{fleet}-worker-{n}.log")))
                .expect("log");
            ChildGuard(
                opsfleet_fast(&["worker", "--config", path.to_str().unwrap_or_default()])
                    .env("AWS_ENDPOINT_URL", &proxy.url)
                    .stderr(log)
                    .spawn()
                    .expect("worker"),
            )
        })
        .collect();
    let ledger = Ledger::new(backend.store(&fleet).await.expect("table"), Clock::new(), Duration::from_secs(3600));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        let mut done = 0;
        for job in &jobs {
            done +=
                usize::from(ledger.job(&job.id).await.expect("ledger").is_some_and(|r| r.status == Status::Succeeded));
        }
        if done == jobs.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {} jobs done", jobs.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(workers);

    // Every window of one second holds at most a burst and a second's refill.
    let calls: Vec<Instant> =
        proxy.requests().into_iter().filter(|(_, action)| action == "CreateTags").map(|(at, _)| at).collect();
    assert_eq!(calls.len(), 2000, "one CreateTags per job");
    let mut peak = 0;
    for (i, at) in calls.iter().enumerate() {
        let within = calls[i..].iter().take_while(|t| t.duration_since(*at) < Duration::from_secs(1)).count();
        peak = peak.max(within);
    }
    let span = calls.last().map(|l| l.duration_since(calls[0])).unwrap_or_default();
    let bound = (BURST + RATE) as usize + 1;
    println!(
        "2,000 CreateTags by two workers sharing tags = {{ rate = {RATE}, burst = {BURST} }}: busiest second {peak} \
         calls (bound {bound}), first to last {:.1} s (the bucket allows no less than {:.1} s)",
        span.as_secs_f64(),
        (2000.0 - BURST) / RATE
    );
    assert!(peak <= bound, "{peak} CreateTags in one second, over the bucket's {bound}");
    assert!(span.as_secs_f64() >= (2000.0 - BURST) / RATE * 0.95, "{span:?}: faster than the bucket allows");
}
