//! End to end: a real SQS client (boto3) sends events to the events queue of a fleet set up by
//! `opsfleet setup`; the router, running as its own process, puts the jobs `opsfleet plan`
//! predicts on the right partitions, with group id = resource key and deduplication id = job
//! id, and malformed bodies end in the events DLQ with their reason.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use support::{drain, opsfleet, python_client, unique_fleet, write_config};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 3
allowed_accounts = ["123456789012"]

[[tasks]]
name = "snapshot-stopped-instance"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "noop"

[[tasks]]
name = "recover-alarmed-resource"
pattern = '''{"detail-type": ["CloudWatch Alarm State Change"], "detail": {"state": {"value": ["ALARM"]}}}'''
targets = "event"
action = "noop"
params = { sleep_ms = 1 }
"#;

const EVENTS: &[&str] = &[
    "examples/events/ec2-instance-stopped.json",
    "examples/events/alarm-cpu-high.json",
    "examples/events/alarm-io-pressure-metric-math.json",
    "examples/events/sns-classic-alarm-cpu-high.json",
    "examples/events/sns-ec2-instance-stopped-us-west-2.json",
    "examples/events/ec2-instance-running.json",
];

#[test]
fn router_process_routes_events_from_a_real_client() {
    let fleet = unique_fleet("e2e-router");
    let config = write_config(&fleet, CONFIG);
    for _ in 0..2 {
        let setup = opsfleet(&["setup", "--config", config.to_str().unwrap_or_default()]).output().expect("run setup");
        assert!(setup.status.success(), "setup failed: {}", String::from_utf8_lossy(&setup.stderr));
    }

    // What the router should do, from `opsfleet plan` on the same files.
    let mut plan_args = vec!["plan", "--config", config.to_str().unwrap_or_default()];
    plan_args.extend(EVENTS);
    let plan = opsfleet(&plan_args).output().expect("run plan");
    assert!(plan.status.success(), "plan failed: {}", String::from_utf8_lossy(&plan.stderr));
    let expected: BTreeMap<String, Value> = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("plan line is JSON"))
        .map(|j| (j["id"].as_str().unwrap_or_default().to_owned(), j))
        .collect();
    assert_eq!(expected.len(), 6, "plan: {expected:#?}");

    let metrics_addr = support::free_loopback_addr();
    let log =
        std::fs::File::create(support::root().join("target/e2e").join(format!("{fleet}.log"))).expect("router log");
    let mut router = support::ChildGuard(
        opsfleet(&["router", "--config", config.to_str().unwrap_or_default(), "--metrics-addr", &metrics_addr])
            .stderr(log)
            .spawn()
            .expect("start router"),
    );

    let events_queue = format!("{fleet}-events");
    let mut send = python_client(&["send-files", &events_queue]);
    send.args(EVENTS).arg("examples/events/other-account-instance-stopped.json");
    assert!(send.status().expect("send events").success());
    let bad = python_client(&["send-bodies", &events_queue, "this is not json", r#"{"hello": "world"}"#]).status();
    assert!(bad.expect("send bad bodies").success());

    let mut got: BTreeMap<String, (u32, Value)> = BTreeMap::new();
    for p in 0..3u32 {
        for m in drain(&format!("{fleet}-jobs-{p}.fifo"), 4.0) {
            let job: Value = serde_json::from_str(m["body"].as_str().unwrap_or_default()).expect("job JSON");
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            assert_eq!(m["dedup_id"], job["id"], "deduplication id is the job id");
            let r = &job["resource"];
            let key = format!(
                "{}/{}/{}/{}",
                r["account"].as_str().unwrap_or_default(),
                r["region"].as_str().unwrap_or_default(),
                r["type"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            assert_eq!(m["group_id"].as_str(), Some(key.as_str()), "group id is the resource key");
            assert!(got.insert(id, (p, job)).is_none(), "each job arrives once");
        }
    }
    let missing: Vec<&Value> = expected.iter().filter(|(id, _)| !got.contains_key(*id)).map(|(_, j)| j).collect();
    assert!(missing.is_empty(), "jobs missing: {missing:#?}; router log in target/e2e/{fleet}.log");
    assert_eq!(got.len(), expected.len());
    for (id, plan) in &expected {
        let (partition, job) = got.get(id).unwrap_or_else(|| panic!("job {id} missing"));
        assert_eq!(u64::from(*partition), plan["partition"].as_u64().unwrap_or(99), "job {id} on its partition");
        assert_eq!(job["task"], plan["task"]);
        assert_eq!(job["resource"], plan["resource"]);
        assert_eq!(job["params"], plan["params"]);
    }

    // `opsfleet dlq list` shows the rejected events with their reasons and leaves them there;
    // `redrive` sends them back, and the router rejects them again.
    let listed = opsfleet(&["dlq", "list", "--config", config.to_str().unwrap_or_default(), "--queue", "events"])
        .output()
        .expect("dlq list");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Vec<Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).expect("dlq line")).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed.iter().all(|m| m["reason"].is_string() && m["queue"] == format!("{fleet}-events-dlq")),
        "{listed:?}"
    );
    let redrive = opsfleet(&["dlq", "redrive", "--config", config.to_str().unwrap_or_default(), "--queue", "events"])
        .output()
        .expect("dlq redrive");
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    assert_eq!(String::from_utf8_lossy(&redrive.stdout).lines().count(), 3);
    std::thread::sleep(std::time::Duration::from_secs(2));

    let dead = drain(&format!("{fleet}-events-dlq"), 2.0);
    let reasons: Vec<String> =
        dead.iter().map(|m| m["attributes"]["opsfleet-reason"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("body is not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("body is not an event")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "account 210987654321 is not in fleet.allowed_accounts"), "{reasons:?}");
    assert!(dead.iter().any(|m| m["body"] == "this is not json"), "the body is kept as sent");
    assert!(drain(&events_queue, 1.0).is_empty(), "every input message was deleted");

    // Every rejection counted twice: once as sent, once after the redrive.
    let metrics = support::http_get(&metrics_addr, "/metrics");
    for line in [
        "opsfleet_jobs_emitted_total{task=\"snapshot-stopped-instance\",action=\"noop\"} 2",
        "opsfleet_jobs_emitted_total{task=\"recover-alarmed-resource\",action=\"noop\"} 4",
        "opsfleet_events_rejected_total{reason=\"not_an_event\"} 4",
        "opsfleet_events_rejected_total{reason=\"account_not_allowed\"} 2",
        "opsfleet_events_unmatched_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in /metrics:\n{metrics}");
    }

    support::terminate(&mut router.0);
    let status = router.0.wait().expect("router exit");
    assert!(status.success(), "router exits 0 on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_routes_and_runs_an_event_end_to_end_in_one_process() {
    use opsfleet_protocol::ports::Backend;
    use opsfleet_worker::ledger::{Ledger, Status};

    let fleet = unique_fleet("e2e-run");
    let config = write_config(&fleet, CONFIG);
    let config_arg = config.to_str().unwrap_or_default().to_owned();
    let setup = opsfleet(&["setup", "--config", &config_arg]).output().expect("run setup");
    assert!(setup.status.success(), "setup failed: {}", String::from_utf8_lossy(&setup.stderr));
    let event = "examples/events/alarm-io-pressure-metric-math.json";
    let plan = opsfleet(&["plan", "--config", &config_arg, event]).output().expect("plan");
    let ids: Vec<String> = String::from_utf8_lossy(&plan.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("plan line")["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "the alarm names an instance and a volume");

    let log = std::fs::File::create(support::root().join("target/e2e").join(format!("{fleet}.log"))).expect("log");
    let mut run =
        support::ChildGuard(opsfleet(&["run", "--config", &config_arg]).stderr(log).spawn().expect("start run"));
    assert!(python_client(&["send-files", &format!("{fleet}-events"), event]).status().expect("send").success());

    let backend = opsfleet_backend::AwsBackend::from_env().await;
    let ledger = Ledger::new(
        backend.store(&fleet).await.expect("table"),
        opsfleet_protocol::Clock::new(),
        std::time::Duration::from_secs(3600),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for id in &ids {
        loop {
            if ledger.job(id).await.expect("ledger").is_some_and(|r| r.status == Status::Succeeded) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not succeed");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    support::terminate(&mut run.0);
    assert!(run.0.wait().expect("exit").success(), "run exits 0 on SIGTERM");

    // The audit trail of the event: its run, and each job with its attempt.
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(support::root().join(event)).expect("event")).expect("json");
    let event_id = body["id"].as_str().unwrap_or_default();
    let audit = opsfleet(&["audit", "--json", "--config", &config_arg, "--event", event_id]).output().expect("audit");
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&audit.stdout).lines().map(|l| serde_json::from_str(l).expect("audit line")).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(
        (lines[0]["task"].as_str(), lines[0]["succeeded"].as_u64()),
        (Some("recover-alarmed-resource"), Some(2))
    );
    for line in &lines[1..] {
        assert!(ids.iter().any(|id| line["job"] == id.as_str()), "{line}");
        assert_eq!(line["status"], "SUCCEEDED");
        assert_eq!(line["attempts"].as_array().map(Vec::len), Some(1));
        assert_eq!(line["attempts"][0]["outcome"], "SUCCEEDED");
    }
    let one = opsfleet(&["audit", "--json", "--config", &config_arg, "--job", &ids[0]]).output().expect("audit job");
    let one: Value = serde_json::from_slice(&one.stdout).expect("one JSON line");
    assert_eq!((one["job"].as_str(), one["status"].as_str()), (Some(ids[0].as_str()), Some("SUCCEEDED")));
}
