//! What a job costs in requests, counted by the load test on the embedded backend (which keeps
//! SQS's and DynamoDB's semantics): a locked job that runs once, from events that name one
//! resource each, writes three DynamoDB items (its lock, its record, its lock again), reads one
//! eventually consistently, reads nothing strongly, and shares its SQS requests with the other
//! jobs of its batches.

use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_opsfleet-loadtest"))
        .args(["--json", "--quiet", "--resources-per-event", "1", "--long-poll-ms", "100"])
        .args(args)
        .output()
        .expect("run the load test");
    assert!(out.status.success(), "the load test failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn a_locked_job_that_runs_once_costs_three_writes_one_eventual_read_and_a_share_of_batches() {
    let report = run(&["--events", "400", "--partitions", "1", "--workers", "1"]);
    let per_job = &report["requests_per_job"];
    let get = |name: &str| per_job[name].as_f64().unwrap_or_else(|| panic!("no {name} in {per_job}"));
    assert_eq!(report["jobs"], 400);
    // Every job: one lock acquire, one outcome write, one release; the sampler's and waiting
    // jobs' reads are none here.
    assert!((get("dynamodb_writes") - 3.0).abs() < 0.01, "{per_job}");
    assert!((get("dynamodb_eventual_reads") - 1.0).abs() < 0.01, "{per_job}");
    assert_eq!(get("dynamodb_strong_reads"), 0.0, "{per_job}");
    // Sends, receives and deletes carry many jobs each: one request per job each would be 3.
    assert!(get("sqs_job_queues") < 0.6, "{per_job}");
    let sends = per_job["by_operation"]["SendMessageBatch"].as_f64().expect("sends");
    assert!(sends < 0.2, "the router sends the jobs of many events together: {per_job}");
}
