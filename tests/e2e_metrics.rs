//! Metrics and logs of real processes: a router and a worker on the fast emulators run a few
//! events; their `/metrics` text holds the exact lines the run implies and passes `promtool
//! check metrics`; a real Prometheus scrapes both and its HTTP API returns the expected series
//! and values; the worker's JSON logs carry every job's id, task, resource and event on each
//! line about it, and no secret (the config's external id, the session token) appears.

mod support;

use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{fast_backend, free_loopback_addr, http_get, opsfleet_fast, unique_fleet, write_config, ChildGuard};

const EXTERNAL_ID: &str = "ext-id-s3cr3t-7781";
const SESSION_TOKEN: &str = "session-token-s3cr3t-9913";
const EVENTS: usize = 6;

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
member_role = "arn:aws:iam::{account}:role/OpsFleetMember"
external_id = "ext-id-s3cr3t-7781"

[[tasks]]
name = "quick"
pattern = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance State-change Notification"] }
targets = "event"
action = "noop"
params = { sleep_ms = 10 }
"#;

/// The stopped event of the fleet's `n`th instance.
fn stopped(fleet: &str, n: usize) -> String {
    support::process_fleet::stopped(&format!("{fleet}-{n}"), "us-east-1", &format!("i-{n:08x}"))
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn line_value(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_logs_of_a_running_router_and_worker() {
    let fleet = unique_fleet("metrics");
    let path = write_config(&fleet, CONFIG);
    let config = path.to_str().unwrap_or_default().to_owned();
    let setup = opsfleet_fast(&["setup", "--config", &config]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let (router_addr, worker_addr) = (free_loopback_addr(), free_loopback_addr());
    let logs = support::root().join("target/e2e");
    let _router = ChildGuard(
        opsfleet_fast(&["router", "--config", &config, "--metrics-addr", &router_addr])
            .stderr(std::fs::File::create(logs.join(format!("{fleet}-router.log"))).expect("log"))
            .spawn()
            .expect("router"),
    );
    let worker_log = logs.join(format!("{fleet}-worker.log"));
    let _worker = ChildGuard(
        opsfleet_fast(&["--log-format", "json", "worker", "--config", &config, "--metrics-addr", &worker_addr])
            .env("RUST_LOG", "info,opsfleet_worker=debug")
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .stderr(std::fs::File::create(&worker_log).expect("log"))
            .spawn()
            .expect("worker"),
    );
    let events = fast_backend().await.queue(&format!("{fleet}-events")).await.expect("events");
    let bodies: Vec<OutgoingMessage> =
        (0..EVENTS).map(|n| OutgoingMessage { body: stopped(&fleet, n), ..Default::default() }).collect();
    assert!(events.send_batch(&bodies).await.expect("send").is_empty());

    // The exact lines the run implies.
    let worker_line = r#"opsfleet_jobs_finished_total{task="quick",action="noop",outcome="succeeded"} "#;
    // A job counts as finished a moment before it leaves the in-flight gauge.
    wait_for("every job finished", Duration::from_secs(60), || {
        let text = http_get(&worker_addr, "/metrics");
        line_value(&text, worker_line) == Some(EVENTS as f64) && text.lines().any(|l| l == "opsfleet_jobs_in_flight 0")
    });
    // One process samples the queues, the router or the worker, whichever holds the lease,
    // every 15 s: wait for a sample after the last job finished.
    let sampled = |text: &str| text.contains("opsfleet_jobs_backlog ");
    wait_for("the queues sampled empty", Duration::from_secs(40), || {
        [&router_addr, &worker_addr]
            .iter()
            .any(|a| http_get(a, "/metrics").lines().any(|l| l == "opsfleet_jobs_backlog 0"))
    });
    let router_text = http_get(&router_addr, "/metrics");
    let worker_text = http_get(&worker_addr, "/metrics");
    assert!(sampled(&router_text) != sampled(&worker_text), "exactly one process samples");
    let sampler_text = if sampled(&router_text) { &router_text } else { &worker_text };
    for (text, line) in [
        (&router_text, format!("opsfleet_events_received_total{{source=\"aws.ec2\",detail_type=\"EC2 Instance State-change Notification\"}} {EVENTS}")),
        (&router_text, format!("opsfleet_jobs_emitted_total{{task=\"quick\",action=\"noop\"}} {EVENTS}")),
        (&router_text, format!("opsfleet_route_duration_seconds_count {EVENTS}")),
        (&worker_text, format!("opsfleet_jobs_finished_total{{task=\"quick\",action=\"noop\",outcome=\"succeeded\"}} {EVENTS}")),
        (&worker_text, format!("opsfleet_lock_acquisitions_total{{result=\"acquired\"}} {EVENTS}")),
        (&worker_text, format!("opsfleet_job_duration_seconds_count{{action=\"noop\"}} {EVENTS}")),
        (&worker_text, format!("opsfleet_event_to_start_seconds_count{{task=\"quick\"}} {EVENTS}")),
        (&worker_text, "opsfleet_jobs_in_flight 0".to_owned()),
        (&worker_text, format!("opsfleet_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
        (sampler_text, format!("opsfleet_queue_messages{{queue=\"{fleet}-jobs-0.fifo\",state=\"visible\"}} 0")),
        (sampler_text, "opsfleet_backlog_per_worker 0".to_owned()),
        (sampler_text, "opsfleet_jobs_backlog 0".to_owned()),
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    for text in [&router_text, &worker_text] {
        let ok = text.lines().find(|l| {
            l.starts_with("opsfleet_aws_requests_total{")
                && l.contains("operation=\"ReceiveMessage\"")
                && l.contains("outcome=\"ok\"")
        });
        assert!(ok.is_some(), "every AWS call is counted:\n{text}");
        assert!(text.contains("opsfleet_aws_request_duration_seconds_bucket{"), "with its duration");
        for id in ["i-00000000", &fleet, "\"job\""] {
            assert!(
                !text
                    .lines()
                    .any(|l| l.starts_with("opsfleet_") && l.contains(&format!("=\"{id}")) && !l.contains("queue=")),
                "an id in a label: {id}"
            );
        }
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        check.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The health check reads the same page: both answer and their loops turn.
    for addr in [&router_addr, &worker_addr] {
        let health = opsfleet_fast(&["healthcheck", "--address", addr]).output().expect("healthcheck");
        assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    }
    assert!(worker_text.lines().any(|l| l == "opsfleet_poll_loops_stalled 0"), "the watchdog reports: {worker_text}");

    // A real Prometheus scrapes both; its API answers with the same values.
    let prometheus_addr = free_loopback_addr();
    let dir = logs.join(format!("{fleet}-prometheus"));
    std::fs::create_dir_all(&dir).expect("dir");
    let scrape = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: opsfleet-router\n    static_configs:\n      - targets: [\"{router_addr}\"]\n  - job_name: opsfleet-worker\n    static_configs:\n      - targets: [\"{worker_addr}\"]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), scrape).expect("config");
    let _prometheus = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus (Debian's package, which tests/run.sh installs)"),
    );
    let query = |q: &str| -> Option<f64> {
        let encoded: String = q
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let body = http_get(&prometheus_addr, &format!("/api/v1/query?query={encoded}"));
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    wait_for("Prometheus scraped the fleet", Duration::from_secs(60), || {
        query("sum(opsfleet_jobs_finished_total{outcome=\"succeeded\"})") == Some(EVENTS as f64)
            && query("sum(up{job=~\"opsfleet-router|opsfleet-worker\"})") == Some(2.0)
    });
    assert_eq!(query("sum(opsfleet_jobs_emitted_total{job=\"opsfleet-router\"})"), Some(EVENTS as f64));
    assert_eq!(query("sum(opsfleet_backlog_per_worker)"), Some(0.0));
    assert_eq!(query("max(opsfleet_jobs_backlog)"), Some(0.0));
    assert!(query("sum(opsfleet_aws_requests_total{service=~\"(?i)sqs\"})").is_some_and(|n| n > 0.0));

    // Logs: JSON, a job's every line names it; no secret anywhere.
    let text = std::fs::read_to_string(&worker_log).expect("worker log");
    let mut about_jobs = 0;
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(span) = value.get("span").filter(|s| s["name"] == "job") {
            about_jobs += 1;
            for field in ["job_id", "task", "resource", "event_id"] {
                assert!(span[field].is_string(), "a line about a job without {field}: {line}");
            }
        }
    }
    assert!(about_jobs >= EVENTS, "{about_jobs} lines about jobs in\n{text}");
    let router_log = std::fs::read_to_string(logs.join(format!("{fleet}-router.log"))).expect("router log");
    for secret in [EXTERNAL_ID, SESSION_TOKEN] {
        assert!(!text.contains(secret) && !router_log.contains(secret), "a secret in the logs: {secret}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
