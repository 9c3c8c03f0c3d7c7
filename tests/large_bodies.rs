//! No message body up to SQS's maximum (1 MiB) makes routing use unbounded memory or time:
//! adversarial bodies (deep nesting, a huge string, thousands of resources or metrics, an SNS
//! envelope around a whole body, tens of thousands of keys) go through `opsfleet plan`, the
//! router's own normalize-match-expand path, as a process whose peak memory is read by the
//! operating system. Each must end with jobs or a one-line reason, and stay within a bound of
//! memory over what a small event takes.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::{opsfleet_offline, write_config};

const MIB: usize = 1024 * 1024;

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
max_jobs_per_event = 5000

[[tasks]]
name = "prefixed"
pattern = { source = [{ prefix = "aws." }], detail = { s = [{ wildcard = "a*a*a*b" }] } }
targets = "event"
action = "noop"

[[tasks]]
name = "numbers"
pattern = { detail = { n = [{ numeric = [">", 0, "<", 10] }] } }
targets = "event"
action = "noop"

[[tasks]]
name = "any-resource"
pattern = { "detail-type" = [{ anything-but = "nothing" }] }
targets = "event"
action = "noop"
"#;

fn event(detail_type: &str, resources: Vec<String>, detail: Value) -> Value {
    json!({"version": "0", "id": "big", "detail-type": detail_type, "source": "aws.ec2", "account": "123456789012",
        "region": "us-east-1", "time": "2026-11-25T00:00:00Z", "resources": resources, "detail": detail})
}

/// Bodies of up to 1 MiB built to hurt a parser, a matcher or an expander.
fn bodies() -> Vec<(&'static str, String)> {
    let arns = |n: usize| (0..n).map(|i| format!("arn:aws:ec2:us-east-1:123456789012:instance/i-{i:08x}")).collect();
    let metrics: Vec<Value> = (0..6_000)
        .map(|i| json!({"id": format!("m{i}"), "metricStat": {"metric": {"dimensions": {"InstanceId": format!("i-{i:08x}")}}}}))
        .collect();
    let mut keys = serde_json::Map::new();
    for i in 0..40_000 {
        keys.insert(format!("k{i}"), json!(i));
    }
    let whole = event("Tag Change on Resource", arns(4_000), json!({"s": "a".repeat(200_000)})).to_string();
    let out = vec![
        ("deep nesting", format!("{}{}", "[".repeat(MIB / 2 - 1), "]".repeat(MIB / 2 - 1))),
        ("a huge string", event("x", vec![], json!({"s": "a".repeat(MIB - 300)})).to_string()),
        ("resources past the cap", event("Tag Change on Resource", arns(15_000), json!({})).to_string()),
        ("resources under the cap", event("Tag Change on Resource", arns(4_900), json!({})).to_string()),
        (
            "alarm metrics",
            json!({"version": "0", "id": "a", "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
                "account": "123456789012", "region": "us-east-1", "resources": [],
                "detail": {"configuration": {"metrics": metrics}}})
            .to_string(),
        ),
        ("an SNS envelope around a whole body", json!({"Type": "Notification", "MessageId": "m", "Message": whole}).to_string()),
        ("forty thousand keys", event("x", vec![], Value::Object(keys)).to_string()),
        ("many numbers", event("x", vec![], json!({"n": (0..120_000).map(|i| i % 20).collect::<Vec<_>>()})).to_string()),
    ];
    for (name, body) in &out {
        assert!(body.len() <= MIB, "{name} is {} bytes, over SQS's 1 MiB", body.len());
    }
    out
}

/// Runs `opsfleet plan` on a body; returns (exit code, peak RSS in KiB, seconds, stderr).
fn plan(config: &std::path::Path, name: &str, body: &str) -> (i32, u64, f64, String) {
    let dir = support::root().join("target").join("e2e");
    let file = dir.join(format!("large-{}-{}.json", name.replace(' ', "-"), std::process::id()));
    std::fs::write(&file, body).expect("write body");
    let bin = env!("CARGO_BIN_EXE_opsfleet");
    let script = "import resource, subprocess, sys, time\n\
                  t = time.time()\n\
                  p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)\n\
                  print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.time() - t)\n\
                  sys.stderr.write(p.stderr.decode(errors='replace'))";
    let python = std::env::var("OPSFLEET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", script, bin, "plan", "--config"])
        .arg(config)
        .arg(&file)
        .output()
        .expect("run plan under python");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
    let rss = parts.next().and_then(|c| c.parse().ok()).unwrap_or(u64::MAX);
    let secs = parts.next().and_then(|c| c.parse().ok()).unwrap_or(f64::MAX);
    (code, rss, secs, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bodies_up_to_one_mib_take_bounded_memory_and_time() {
    // The binary itself answers offline.
    assert!(opsfleet_offline(&["--version"]).output().expect("opsfleet").status.success());
    let config = write_config(&support::unique_fleet("large"), CONFIG);
    let small = event("x", vec![], json!({"s": "aab", "n": 5})).to_string();
    let (code, base_rss, base_secs, err) = plan(&config, "small", &small);
    assert_eq!(code, 0, "{err}");
    println!("a small event: peak {base_rss} KiB in {base_secs:.2} s");
    for (name, body) in bodies() {
        let (code, rss, secs, err) = plan(&config, name, &body);
        println!(
            "{name} ({} KiB): exit {code}, peak {rss} KiB ({:.1}x a small event), {secs:.2} s",
            body.len() / 1024,
            rss as f64 / base_rss as f64
        );
        assert!(code == 0 || (code == 1 && err.lines().count() == 1 && err.len() < 600), "{name}: exit {code}: {err}");
        // Bounded: a 1 MiB body may cost some tens of times its size while it is expanded,
        // never more; and it ends (the 120 s limit only catches a hang).
        assert!(rss <= base_rss + 64 * 1024, "{name}: peak {rss} KiB over a small event's {base_rss} KiB");
        assert!(secs < Duration::from_secs(120).as_secs_f64(), "{name}: {secs} s");
    }
}
