//! The autoscaling signal, from a real router and nothing else: a burst of jobs with no worker
//! at all shows up as `opsfleet_jobs_backlog` (Prometheus) and as the `JobsBacklog` embedded
//! metric (CloudWatch, for ECS), whatever the partition count; and the autoscaler rule the
//! KEDA manifest gives, fed that figure while new workers start, asks for what the backlog needs
//! and no more, where the per-worker signal it replaces overshot.

mod support;

use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{
    fast_backend, free_loopback_addr, http_get, opsfleet_fast, root, unique_fleet, write_config, ChildGuard,
};
use yaml_rust2::YamlLoader;

/// More partitions than CloudWatch's target tracking could read one metric each of.
const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 12

[[tasks]]
name = "quick"
pattern = { source = ["aws.ec2"] }
targets = "event"
action = "noop"
"#;

const JOBS: usize = 300;

/// The stopped event of the fleet's `n`th instance.
fn stopped(fleet: &str, n: usize) -> String {
    support::process_fleet::stopped(&format!("{fleet}-{n}"), "us-east-1", &format!("i-{n:08x}"))
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The HPA's rule for a KEDA trigger: `AverageValue` divides the metric by the target;
/// `Value` (what the per-worker signal used) scales the current count by metric ÷ target.
fn hpa_desired(metric_type: &str, metric: f64, target: f64, current: u32, max: u32) -> u32 {
    let wanted = match metric_type {
        "AverageValue" => (metric / target).ceil(),
        _ => (f64::from(current) * metric / target).ceil(),
    };
    (wanted as u32).clamp(1, max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_no_worker_is_reported_by_the_router_and_asks_for_what_it_needs() {
    let fleet = unique_fleet("scaling");
    let path = write_config(&fleet, CONFIG);
    let config = path.to_str().unwrap_or_default().to_owned();
    let setup = opsfleet_fast(&["setup", "--config", &config]).output().expect("setup");
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let addr = free_loopback_addr();
    let log = root().join("target/e2e").join(format!("{fleet}-router.log"));
    let mut router = opsfleet_fast(&["router", "--config", &config, "--metrics-addr", &addr])
        .env("OPSFLEET_EMF_NAMESPACE", "opsfleet")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("router");
    let stdout = router.stdout.take().expect("stdout");
    let _router = ChildGuard(router);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    // A burst: one job per event, spread over the 12 partitions, and no worker to take them.
    let events = fast_backend().await.queue(&format!("{fleet}-events")).await.expect("events");
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<OutgoingMessage> =
            chunk.iter().map(|&n| OutgoingMessage { body: stopped(&fleet, n), ..Default::default() }).collect();
        assert!(events.send_batch(&batch).await.expect("send").is_empty());
    }

    // The router alone reports the whole backlog (sampled every 15 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    let backlog = loop {
        let text = http_get(&addr, "/metrics");
        if let Some(n) = gauge(&text, "opsfleet_jobs_backlog").filter(|&n| n >= JOBS as f64) {
            break n;
        }
        assert!(Instant::now() < deadline, "the router never reported {JOBS} jobs:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(backlog, JOBS as f64, "every partition counts, and only jobs");
    // …and writes it as the embedded metric CloudWatch extracts for ECS.
    let emf = loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(40)).expect("an embedded-metric line on stdout");
        let doc: serde_json::Value = serde_json::from_str(&line).expect("stdout holds only JSON metric lines");
        if doc["JobsBacklog"] == JOBS {
            break doc;
        }
    };
    assert_eq!(emf["Fleet"], fleet);
    assert_eq!(emf["_aws"]["CloudWatchMetrics"][0]["Namespace"], "opsfleet");

    // The autoscaler, as the KEDA manifest configures it, fed the real figure while the workers
    // it asks for start one poll at a time: from zero it asks for ⌈backlog ÷ threshold⌉ and
    // never more, however many pods are up when it looks again.
    let keda = std::fs::read_to_string(root().join("infra/k8s/keda-scaledobject.yaml")).expect("KEDA");
    let keda = &YamlLoader::load_from_str(&keda).expect("YAML")[0];
    let trigger = &keda["spec"]["triggers"][0];
    let metric_type = trigger["metricType"].as_str().expect("metricType");
    let threshold: f64 = trigger["metadata"]["threshold"].as_str().and_then(|t| t.parse().ok()).expect("threshold");
    let max = u32::try_from(keda["spec"]["maxReplicaCount"].as_i64().expect("max")).expect("max");
    let needed = (backlog / threshold).ceil() as u32;
    assert!(needed >= 2 && needed < max, "the burst needs {needed} of at most {max} workers");
    let mut running = 0;
    let mut most = 0;
    for _poll in 0..10 {
        let desired = hpa_desired(metric_type, backlog, threshold, running, max);
        most = most.max(desired);
        running = (running + 1).min(desired); // one more pod ready per poll
    }
    assert_eq!(
        (most, running),
        (needed, needed),
        "asked for {most}, settled at {running}: {needed} is what {backlog} jobs need"
    );

    // The signal it replaces, visible jobs per live worker with `Value`, was divided by a
    // worker count seconds or minutes old and multiplied again by the pods up now: the same
    // burst drove it to the maximum.
    let mut running = 1;
    let mut most = 0;
    for _poll in 0..10 {
        let per_worker_seen = backlog / 1.0; // heartbeats still count the one worker of before the burst
        let desired = hpa_desired("Value", per_worker_seen, threshold, running, max);
        most = most.max(desired);
        running = desired;
    }
    assert!(most > needed, "the per-worker signal asked for {most}, over the {needed} needed");
}
