//! The rendered core stack deploys on the emulator's CloudFormation, and a fleet then runs on
//! the queues and table it created, with no `opsfleet setup`: an event in, a job done.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{opsfleet, python_client, root, terminate, unique_fleet, write_config, ChildGuard};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
alarm_topics = ["arn:aws:sns:us-east-1:123456789012:FLEET-alarms"]

[[tasks]]
name = "on-stop"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"], detail = { state = ["stopped"] } }
targets = "event"
action = "noop"

[[tasks]]
name = "nightly"
schedule = "rate(1 day)"
targets = { type = "ec2:volume", tags = { Backup = "nightly" } }
action = "noop"
"#;

#[test]
fn the_core_stack_deploys_and_a_fleet_runs_on_what_it_created() {
    let fleet = unique_fleet("stack");
    let config = write_config(&fleet, CONFIG);
    let config = config.to_str().unwrap_or_default().to_owned();
    let out = root().join("target/e2e").join(format!("render-{fleet}"));
    let rendered = opsfleet(&["infra", "render", "--config", &config, "--out"]).arg(&out).output().expect("render");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));

    // The emulator's SNS must know the alarm topic the stack subscribes the events queue to.
    let python = std::env::var("OPSFLEET_TEST_PYTHON").unwrap_or_default();
    let topic = std::process::Command::new(&python)
        .args(["-c", &format!("import boto3; boto3.client('sns').create_topic(Name='{fleet}-alarms')")])
        .status()
        .expect("create topic");
    assert!(topic.success());
    let template = out.join("opsfleet-core.yaml");
    let deployed = std::process::Command::new(&python)
        .arg(root().join("tests/cfn_client.py"))
        .args(["deploy", &format!("{fleet}-core")])
        .arg(&template)
        .current_dir(root())
        .output()
        .expect("deploy");
    assert!(deployed.status.success(), "deploy: {}", String::from_utf8_lossy(&deployed.stderr));
    let stack: Value = serde_json::from_slice(&deployed.stdout).expect("the stack as JSON");
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{stack:#}");
    let resources = stack["resources"].as_object().expect("resources");
    for kind in ["AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::Events::Rule", "AWS::IAM::Role"] {
        assert!(resources.values().any(|r| r[0] == kind), "no {kind} in {stack:#}");
    }
    assert_eq!(stack["outputs"]["TableName"], fleet.as_str(), "{stack:#}");

    // No setup: the fleet runs on the stack's queues and table.
    let metrics = support::free_loopback_addr();
    let log = std::fs::File::create(root().join("target/e2e").join(format!("{fleet}.log"))).expect("log");
    let mut run = ChildGuard(
        opsfleet(&["run", "--config", &config, "--metrics-addr", &metrics]).stderr(log).spawn().expect("run"),
    );
    let event = support::process_fleet::stopped(&format!("{fleet}-1"), "us-east-1", "i-0123456789abcdef0");
    let sent = python_client(&["send-bodies", &format!("{fleet}-events"), &event]).status().expect("send");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let audit = opsfleet(&["audit", "--config", &config, "--task", "on-stop", "--json"]).output().expect("audit");
        let text = String::from_utf8_lossy(&audit.stdout).to_string();
        if text.contains("\"SUCCEEDED\"") {
            let job: Value = serde_json::from_str(text.lines().next().unwrap_or_default()).expect("a job");
            assert_eq!(job["resource_id"], "i-0123456789abcdef0", "{job}");
            assert_eq!(job["event_id"], format!("{fleet}-1"), "{job}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no job done: {text} {}; log in target/e2e",
            String::from_utf8_lossy(&audit.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The container health check passes against the running process.
    let health = opsfleet(&["healthcheck", "--address", &metrics]).output().expect("healthcheck");
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    terminate(&mut run.0);
    assert!(run.0.wait().expect("exit").success(), "run exits 0 on SIGTERM");
}
