//! The monitoring material in `infra/`: the alert rules pass `promtool` and their unit tests
//! (each alert fires when it should and not otherwise), the Grafana dashboard is a valid
//! dashboard model, and every metric the rules and the dashboard use is one the code emits.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use support::root;

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(root().join("infra/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package, which tests/run.sh installs)")
}

/// Every `opsfleet_…` metric name in a text.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("opsfleet_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

/// The metric names the code emits (string literals in the crates' sources), with the
/// series a histogram exports.
fn emitted() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text
                    .lines()
                    .filter(|l| l.contains("counter!(") || l.contains("gauge!(") || l.contains("histogram!("))
                {
                    out.extend(names_in(line));
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for dir in ["src", "router/src", "worker/src", "backend/src"] {
        walk(&root().join(dir), &mut names);
    }
    let histograms: Vec<String> = names.iter().filter(|n| n.ends_with("_seconds")).cloned().collect();
    for h in histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{h}{suffix}"));
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "opsfleet-rules.yml"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = promtool(&["test", "rules", "opsfleet-rules.test.yml"]);
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    let rules = std::fs::read_to_string(root().join("infra/prometheus/opsfleet-rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(root().join("infra/prometheus/opsfleet-rules.test.yml")).expect("tests");
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let exp = format!("alertname: {line}");
        let cases = tests.matches(&exp).count();
        assert!(cases >= 1, "alert {line} has no unit test");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook_that_exists() {
    let text = std::fs::read_to_string(root().join("infra/prometheus/opsfleet-rules.yml")).expect("rules");
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).expect("docs/runbooks.md");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("YAML");
    let mut alerts = 0;
    let mut records = BTreeSet::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            if let Some(record) = rule["record"].as_str() {
                records.insert(record.to_owned());
                continue;
            }
            let name = rule["alert"].as_str().expect("an alert or a record");
            alerts += 1;
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(["page", "ticket"].contains(&severity), "{name}: severity `{severity}`");
            let annotations = &rule["annotations"];
            for key in ["summary", "description"] {
                assert!(annotations[key].as_str().is_some_and(|v| v.len() > 10), "{name} has no {key}");
            }
            let url = annotations["runbook_url"].as_str().unwrap_or_default();
            assert_eq!(url, format!("docs/runbooks.md#{}", name.to_lowercase()), "{name}");
            assert!(runbooks.lines().any(|l| l == format!("## {name}")), "docs/runbooks.md has no section {name}");
            let mentioned = if severity == "page" { "**Page.**" } else { "**Ticket.**" };
            let section = &runbooks[runbooks.find(&format!("## {name}\n")).unwrap_or_default()..];
            assert!(
                section.lines().nth(2).is_some_and(|l| l.starts_with(mentioned)),
                "{name}'s runbook says {mentioned}"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    // Every recorded series an alert reads is recorded.
    let used: BTreeSet<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("opsfleet:"))
        .map(str::to_owned)
        .collect();
    assert!(!used.is_empty() && used.is_subset(&records), "{used:?} vs {records:?}");
}

#[test]
fn the_rules_and_the_dashboard_use_only_metrics_the_code_emits() {
    let emitted = emitted();
    assert!(
        emitted.contains("opsfleet_aws_requests_total") && emitted.contains("opsfleet_backlog_per_worker"),
        "{emitted:?}"
    );
    for file in ["infra/prometheus/opsfleet-rules.yml", "infra/grafana/opsfleet-dashboard.json"] {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        let used = names_in(&text);
        assert!(used.len() > 5, "{file} uses {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|n| !emitted.contains(*n)).collect();
        assert!(unknown.is_empty(), "{file} uses metrics the code does not emit: {unknown:?}");
    }
}

#[test]
fn every_emitted_metric_has_help_text_and_every_help_text_a_metric() {
    let exporter = std::fs::read_to_string(root().join("src/cli/exporter.rs")).expect("exporter");
    let start = exporter.find("pub const DESCRIPTIONS").expect("DESCRIPTIONS");
    let block = &exporter[start..];
    let described = names_in(&block[..block.find("];").expect("the end of DESCRIPTIONS")]);
    let series = ["_bucket", "_sum", "_count"];
    let emitted: BTreeSet<String> =
        emitted().into_iter().filter(|n| !series.iter().any(|s| n.ends_with(s) && n.contains("_seconds_"))).collect();
    assert!(described.len() > 20, "{described:?}");
    assert_eq!(described, emitted, "DESCRIPTIONS in src/cli/exporter.rs and the metrics the code emits differ");
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_model() {
    let text = std::fs::read_to_string(root().join("infra/grafana/opsfleet-dashboard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("JSON");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", dash["schemaVersion"]);
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let variables = dash["templating"]["list"].as_array().expect("templating.list");
    let datasource = variables.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
    assert_eq!(datasource["query"], "prometheus");
    let var = format!("${{{}}}", datasource["name"].as_str().expect("name"));
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is not unique");
        let grid = &panel["gridPos"];
        assert!(["h", "w", "x", "y"].iter().all(|k| grid[k].is_u64()), "panel {id} gridPos: {grid}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], var, "panel {id} uses the datasource variable");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("opsfleet_")), "panel {id}: {t}");
            assert_eq!(t["datasource"]["uid"], var);
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Events in, by source",
        "Jobs out, by task",
        "Job outcomes",
        "Job duration, by action",
        "Event → start latency, by task",
        "Job success ratio, by task (SLO: 99 %)",
        "Scaling signal: job backlog",
        "Backlog per partition",
        "Dead-letter queues",
        "AWS errors and throttles, by operation",
        "Lock contention",
    ] {
        assert!(titles.contains(&wanted), "no `{wanted}` panel: {titles:?}");
    }
    // Variables narrow every panel to tasks, actions and processes; rates follow the scrape
    // interval ($__rate_interval) instead of a fixed window.
    for (name, label) in [("task", "task"), ("action", "action"), ("instance", "instance")] {
        let variable = variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
        assert_eq!(variable["type"], "query");
        assert!(variable["definition"]
            .as_str()
            .is_some_and(|q| q.starts_with("label_values(") && q.ends_with(&format!(", {label})"))));
        assert_eq!((&variable["includeAll"], &variable["multi"]), (&json!(true), &json!(true)));
    }
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for expr in &exprs {
        assert!(!expr.contains("[5m]") && !expr.contains("[1m]"), "a fixed window: {expr}");
        if expr.contains("rate(") {
            assert!(expr.contains("[$__rate_interval]"), "{expr}");
        }
        if expr.contains("opsfleet_job_duration_seconds_bucket") {
            assert!(expr.contains("by (le, action)"), "job duration quantiles mix the actions: {expr}");
        }
    }
    for (metric, variable) in [
        ("opsfleet_jobs_finished_total", "task=~\"$task\""),
        ("opsfleet_aws_requests_total", "instance=~\"$instance\""),
    ] {
        assert!(
            exprs.iter().filter(|e| e.contains(metric)).all(|e| e.contains(variable)),
            "{metric} panels ignore {variable}"
        );
    }
}
