//! `opsfleet audit` and `opsfleet dlq list` after a real run on the fast emulators: jobs found
//! by resource, task, status and age through the table's indexes, newest first, each with its
//! event, result or error and attempts; dead letters with their reason, receive count and
//! first and last seen.

mod support;

use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{fast_backend, opsfleet_fast, unique_fleet, write_config, ChildGuard};

const INSTANCES: usize = 3;

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2

[[tasks]]
name = "quick"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"

[[tasks]]
name = "broken"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"
params = { fail_rate = 1.0 }
retries = 0
"#;

fn stopped(fleet: &str, n: usize) -> String {
    serde_json::json!({
        "version": "0", "id": format!("{fleet}-{n}"), "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-11-25T00:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{}", instance(n))],
        "detail": { "instance-id": instance(n), "state": "stopped" }
    })
    .to_string()
}

fn instance(n: usize) -> String {
    format!("i-{n:017x}")
}

/// `opsfleet audit --json` with the given filters: its JSON lines.
fn audit(config: &str, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "--json", "--config", config];
    args.extend_from_slice(filters);
    let out = opsfleet_fast(&args).output().expect("audit");
    assert!(out.status.success(), "audit {filters:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn field<'a>(lines: &'a [Value], name: &str) -> Vec<&'a str> {
    lines.iter().map(|l| l[name].as_str().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_dlq_list_answer_what_happened() {
    let fleet = unique_fleet("audit");
    let path = write_config(&fleet, CONFIG);
    let config = path.to_str().unwrap_or_default().to_owned();
    let setup = opsfleet_fast(&["setup", "--config", &config]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let log = std::fs::File::create(support::root().join("target/e2e").join(format!("{fleet}.log"))).expect("log");
    let mut run = ChildGuard(opsfleet_fast(&["run", "--config", &config]).stderr(log).spawn().expect("run"));
    let events = fast_backend().await.queue(&format!("{fleet}-events")).await.expect("events");
    for n in 0..INSTANCES {
        // One at a time, so "newest first" has an order to show.
        let sent = events.send_batch(&[OutgoingMessage { body: stopped(&fleet, n), ..Default::default() }]).await;
        assert!(sent.expect("send").is_empty());
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let failed = audit(&config, &["--task", "broken", "--status", "failed"]);
        let succeeded = audit(&config, &["--task", "quick", "--status", "SUCCEEDED"]);
        if failed.len() == INSTANCES && succeeded.len() == INSTANCES {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not finish: {failed:?} {succeeded:?}; log in target/e2e");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    support::terminate(&mut run.0);
    assert!(run.0.wait().expect("exit").success(), "run exits 0 on SIGTERM");

    // By resource: both tasks' jobs of that instance, with the event that caused them.
    let one = audit(&config, &["--resource", &instance(1)]);
    let mut tasks = field(&one, "task");
    tasks.sort_unstable();
    assert_eq!(tasks, ["broken", "quick"], "{one:#?}");
    assert!(one.iter().all(|j| j["event_id"] == format!("{fleet}-1") && j["resource_id"] == instance(1)), "{one:#?}");
    let failed = one.iter().find(|j| j["task"] == "broken").expect("the failed job");
    assert_eq!(failed["status"], "FAILED");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()), "{failed}");
    assert_eq!(failed["attempts"][0]["outcome"], "FAILED", "{failed}");
    let quick = one.iter().find(|j| j["task"] == "quick").expect("the job that succeeded");
    assert!(quick["summary"].as_str().is_some_and(|s| s.contains(&instance(1))), "{quick}");

    // By task, newest first; by status, the failures; with no filter, the jobs not done well.
    let by_task = audit(&config, &["--task", "quick"]);
    let newest_first: Vec<String> = (0..INSTANCES).rev().map(|n| format!("{fleet}-{n}")).collect();
    assert_eq!(field(&by_task, "event_id"), newest_first, "{by_task:#?}");
    assert_eq!(field(&audit(&config, &["--task", "quick", "--limit", "1"]), "event_id"), [&newest_first[0]]);
    assert_eq!(field(&audit(&config, &["--status", "FAILED"]), "task"), ["broken"; INSTANCES]);
    assert_eq!(field(&audit(&config, &[]), "status"), ["FAILED"; INSTANCES]);
    assert!(audit(&config, &["--task", "quick", "--status", "FAILED"]).is_empty());
    let refused = opsfleet_fast(&["audit", "--config", &config, "--status", "SUCCEEDED"]).output().expect("audit");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs --resource or --task"));

    // By age: everything within the hour, nothing within the last second once a second passed.
    assert_eq!(audit(&config, &["--task", "quick", "--since", "1h"]).len(), INSTANCES);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(audit(&config, &["--task", "quick", "--since", "1s"]).is_empty());

    // Text by default: one line per job, then its error and attempts.
    let text = opsfleet_fast(&["audit", "--config", &config, "--resource", &instance(2), "--task", "broken"])
        .output()
        .expect("audit");
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("FAILED") && lines[0].contains(&format!("event {fleet}-2")), "{text}");
    assert!(lines.iter().any(|l| l.trim_start().starts_with("error: ")), "{text}");
    assert!(lines.iter().any(|l| l.trim_start().starts_with("attempt 1: FAILED")), "{text}");

    // The failures are dead letters: reason, receive count, first and last seen.
    let listed = opsfleet_fast(&["dlq", "list", "--config", &config, "--queue", "jobs"]).output().expect("dlq list");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let dead: Vec<Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).expect("dlq line")).collect();
    assert_eq!(dead.len(), INSTANCES, "{dead:#?}");
    for m in &dead {
        assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
        assert!(m["receive_count"].as_u64().is_some_and(|n| n >= 1), "{m}");
        let (first, last) = (m["first_seen"].as_str().unwrap_or_default(), m["last_seen"].as_str().unwrap_or_default());
        assert!(first.len() == 20 && first.ends_with('Z') && first <= last, "first {first}, last {last}");
    }
}
