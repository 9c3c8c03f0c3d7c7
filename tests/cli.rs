//! The CLI contract (docs/cli.md): `plan`, `validate` and `demo`, which need no AWS.

mod support;

use opsfleet_worker::ActionRegistry;
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;
use support::opsfleet_offline as opsfleet;

const FLEET: &str = "examples/fleet.toml";

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::to_owned).collect()
}

#[test]
fn plan_prints_one_job_per_line_with_the_contract_fields() {
    let out = opsfleet(&["plan", "--config", FLEET, "examples/events/alarm-io-pressure-metric-math.json"])
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs: Vec<Value> = lines(&out.stdout).iter().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert!(!jobs.is_empty());
    for job in &jobs {
        let mut keys: Vec<&str> = job.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["action", "id", "params", "partition", "resource", "task"]);
        let mut resource: Vec<&str> =
            job["resource"].as_object().expect("resource").keys().map(String::as_str).collect();
        resource.sort();
        assert_eq!(resource, ["account", "id", "region", "type"]);
        assert!(job["partition"].as_u64().expect("partition") < 4);
        match job["task"].as_str() {
            // instance-power acts on instances only: the alarm's volumes get no job of it.
            Some("reboot-alarmed-instance") => assert_eq!(job["resource"]["type"], "ec2:instance"),
            Some("page-on-alarm") => {}
            other => panic!("unexpected task {other:?}"),
        }
    }
    assert!(jobs.iter().any(|j| j["task"] == "page-on-alarm" && j["resource"]["type"] == "ec2:volume"));
    let again = opsfleet(&["plan", "--config", FLEET, "examples/events/alarm-io-pressure-metric-math.json"])
        .output()
        .expect("plan");
    assert_eq!(again.stdout, out.stdout, "plans are deterministic");
}

#[test]
fn plan_reads_json_lines_from_stdin() {
    let body =
        std::fs::read_to_string(support::root().join("examples/events/ec2-instance-stopped.json")).expect("event");
    let compact = serde_json::to_string(&serde_json::from_str::<Value>(&body).expect("json")).expect("compact");
    let mut child =
        opsfleet(&["plan", "--config", FLEET]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("plan");
    child.stdin.take().expect("stdin").write_all(format!("{compact}\n\n{compact}\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let got = lines(&out.stdout);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], got[1]);
}

#[test]
fn plan_of_an_unmatched_event_prints_nothing_and_succeeds() {
    let out =
        opsfleet(&["plan", "--config", FLEET, "examples/events/ec2-instance-running.json"]).output().expect("plan");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(out.stderr.is_empty());
}

#[test]
fn plan_of_input_that_is_not_an_event_fails_with_one_line_naming_the_file() {
    let out = opsfleet(&["plan", "--config", FLEET, "Cargo.toml"]).output().expect("plan");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = lines(&out.stderr);
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].starts_with("Cargo.toml: body is not JSON"), "{err:?}");
}

#[test]
fn plan_of_an_event_from_an_account_not_allowed_names_the_account() {
    let file = "examples/events/other-account-instance-stopped.json";
    let out = opsfleet(&["plan", "--config", FLEET, file]).output().expect("plan");
    assert!(out.stdout.is_empty(), "no jobs");
    assert_eq!(lines(&out.stderr), [format!("{file}: account 210987654321 is not in fleet.allowed_accounts")]);
    assert!(!out.status.success());
}

#[test]
fn validate_reports_every_problem_with_its_line() {
    let ok = opsfleet(&["validate", "--config", FLEET]).output().expect("validate");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid: fleet opsfleet-demo"));

    let dir = support::root().join("target").join("cli-tests");
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[fleet]\nname = \"f\"\n\n[[tasks]]\nname = \"a\"\npattern = { source = [{ prefx = \"aws.\" }] }\ntargets = \"event\"\naction = \"snapshot-everything\"\n",
    )
    .expect("write");
    let out = opsfleet(&["validate", "--config", bad.to_str().expect("path")]).output().expect("validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:line 4: tasks[0] \"a\".pattern: at `source[0]`: unknown operator `prefx`"), "{err}");
    assert!(err.contains("bad.toml:line 4: tasks[0] \"a\".action: unknown action `snapshot-everything`"), "{err}");
}

#[test]
fn validate_and_render_refuse_a_pattern_waiting_for_a_schedule_the_config_does_not_render() {
    let dir = support::root().join("target").join("cli-tests");
    std::fs::create_dir_all(&dir).expect("dir");
    let task = |name: &str, how: &str| {
        format!("\n[[tasks]]\nname = \"{name}\"\n{how}\ntargets = {{ type = \"ec2:volume\", tags = {{ Backup = \"nightly\" }} }}\naction = \"ebs-snapshot\"\n")
    };
    let waiting = r#"pattern = { "detail-type" = ["Scheduled Event"], resources = [{ suffix = "rule/f.nightly" }] }"#;
    let unscheduled = dir.join("unscheduled.toml");
    std::fs::write(&unscheduled, format!("[fleet]\nname = \"f\"\n{}", task("backup", waiting))).expect("write");
    let path = unscheduled.to_str().expect("path");
    for args in [
        vec!["validate", "--config", path],
        vec!["infra", "render", "--config", path, "--out", "target/cli-tests/never"],
    ] {
        let out = opsfleet(&args).output().expect("opsfleet");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unscheduled.toml:line 4: tasks[0] \"backup\".pattern: waits for a `Scheduled Event` no schedule of this config sends (it renders: none)"),
            "{args:?}: {err}"
        );
    }
    // The schedule named `nightly`, shared with another task, is what the pattern waits for.
    let scheduled = dir.join("scheduled.toml");
    let shared = r#"schedule = { name = "nightly", expression = "cron(0 2 * * ? *)" }"#;
    std::fs::write(&scheduled, format!("[fleet]\nname = \"f\"\n{}{}", task("backup", waiting), task("other", shared)))
        .expect("write");
    let out = opsfleet(&["validate", "--config", scheduled.to_str().expect("path")]).output().expect("validate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_whole_config_in_the_docs_validates_and_every_task_fragment_loads() {
    let dir = support::root().join("target").join("cli-tests").join("docs");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut checked = 0;
    for doc in ["README.md", "docs/configuration.md", "docs/actions.md", "docs/automation.md"] {
        let text = std::fs::read_to_string(support::root().join(doc)).expect(doc);
        for (n, block) in text.split("```toml\n").skip(1).filter_map(|b| b.split("```").next()).enumerate() {
            // A whole config as printed; a `[[tasks]]` fragment inside a minimal fleet.
            let config = if block.contains("[fleet]") {
                block.to_owned()
            } else if block.trim_start().starts_with("[[tasks]]") {
                format!("[fleet]\nname = \"docs\"\nmember_role = \"arn:aws:iam::{{account}}:role/M\"\nexternal_id = \"e\"\n\n{block}")
            } else {
                continue;
            };
            let path = dir.join(format!("{}-{n}.toml", doc.replace('/', "-")));
            std::fs::write(&path, config).expect("write");
            let out = opsfleet(&["validate", "--config", path.to_str().expect("path")]).output().expect("validate");
            assert!(out.status.success(), "{doc}, toml block {n}: {}", String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked} blocks");
    let out = opsfleet(&["validate", "--config", "examples/runbooks.toml"]).output().expect("validate");
    assert!(out.status.success(), "examples/runbooks.toml: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn healthcheck_fails_on_a_process_whose_poll_loops_stopped_turning() {
    for (stalled, healthy) in [(0, true), (1, false)] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let page = format!("opsfleet_build_info{{version=\"x\"}} 1\nopsfleet_poll_loops_stalled {stalled}\n");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().expect("accept");
            // Read the whole request before answering: closing on unread bytes resets the connection.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len());
            let _ = conn.shutdown(std::net::Shutdown::Write);
        });
        let out = opsfleet(&["healthcheck", "--address", &addr]).output().expect("healthcheck");
        let _ = server.join();
        assert_eq!(out.status.success(), healthy, "{}", String::from_utf8_lossy(&out.stderr));
        if !healthy {
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).trim(),
                "unhealthy: 1 long-poll loops have not turned for 3 minutes"
            );
        }
    }
}

#[test]
fn demo_runs_the_sample_events_on_the_embedded_backend() {
    let out = opsfleet(&["demo"]).output().expect("demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("opsfleet-demo-jobs-0.fifo"), "{text}");
    assert!(text.contains("account 210987654321 is not in fleet.allowed_accounts"), "{text}");
    // Plan mode: each real action says what it would do.
    for would in [
        "would snapshot every volume of i-0a1b2c3d4e5f60718 as one set and keep the newest 7 this task made",
        "would copy snap-0b1c2d3e4f5a60718 from us-west-2 to eu-west-1",
        "would reboot i-0123456789abcdef0",
        "would resize i-0a1b2c3d4e5f60719 one rung up the ladder t3.small → t3.medium → t3.large (else m5.large)",
        "would image i-0a1b2c3d4e5f60006 as `nightly-i-0a1b2c3d4e5f60006-",
        "would deprecate it 7 days after it was made and deregister it with its snapshots 30 days after it was made, if opsfleet made it (ami-0a1b2c3d4e5f60007)",
        "would set FirstSeen=",
        "would publish `ALARM on i-0123456789abcdef0 (us-east-1)`",
    ] {
        assert!(text.contains(would), "missing `{would}` in {text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn actions_lists_every_action_with_its_targets_limit_iam_and_params() {
    let out = opsfleet(&["actions"]).output().expect("actions");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    let registered: Vec<&str> = ActionRegistry::builtin().names().collect();
    assert_eq!(names, registered);
    for param in ["sleep_ms", "fail_rate", "retain", "destination_region", "operation", "topic_arn", "max_age_days"] {
        assert!(text.contains(&format!("param {param}:")), "{param} missing in {text}");
    }
    assert!(
        text.contains("limit:    snapshot-copy (default max 5, pool {account}/{params.destination_region})"),
        "{text}"
    );
    assert!(text.contains("ec2:CreateSnapshot"), "{text}");
}

#[test]
fn iam_policy_prints_a_policy_scoped_to_the_fleet() {
    let out = opsfleet(&["iam-policy", "--config", FLEET]).output().expect("iam-policy");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy: Value = serde_json::from_slice(&out.stdout).expect("JSON policy");
    assert_eq!(policy["Version"], "2012-10-17");
    assert!(policy["Statement"][0]["Resource"]
        .as_array()
        .is_some_and(|queues| queues.contains(&serde_json::json!("arn:aws:sqs:*:*:opsfleet-demo-events"))));
    assert_eq!(policy["Statement"][1]["Resource"][0], "arn:aws:dynamodb:*:*:table/opsfleet-demo");
    let text = policy.to_string();
    for action in ["ec2:CreateSnapshot", "ec2:CopySnapshot", "ec2:CreateImage", "ec2:RebootInstances", "sns:Publish"] {
        assert!(text.contains(action), "{action} missing: {text}");
    }
}

#[test]
fn match_says_which_tasks_fire_and_why_the_others_do_not() {
    let out = opsfleet(&[
        "match",
        "--config",
        FLEET,
        "examples/events/ec2-instance-running.json",
        "examples/events/scheduled-nightly.json",
    ])
    .output()
    .expect("run match");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> = lines(&out.stdout).iter().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(events.len(), 2);
    // A running instance: the stopped-instance task fails on its state, and says so.
    let running = &events[0];
    assert_eq!(running["event"], "examples/events/ec2-instance-running.json");
    assert_eq!(running["matched"], serde_json::json!([]));
    let stopped = running["unmatched"]
        .as_array()
        .expect("unmatched")
        .iter()
        .find(|u| u["task"] == "snapshot-stopped-instance")
        .expect("the task");
    assert_eq!(stopped["field"], "detail.state");
    assert_eq!(stopped["why"], "\"running\" matches none of [\"stopped\"]");
    assert!(running.get("runbooks").is_none(), "no runbook matched");
    let tasks = running["unmatched"].as_array().map(Vec::len).unwrap_or_default();
    assert_eq!(tasks, 17, "every task is accounted for");
    // The nightly schedule: four discovery tasks match and find their resources later.
    let nightly = &events[1];
    assert_eq!(
        nightly["matched"],
        serde_json::json!(["nightly-volume-backup", "nightly-image", "retire-nightly-images", "nightly-table-backup"])
    );
    let later: Vec<&str> =
        nightly["no_jobs_from_the_event"].as_array().expect("list").iter().filter_map(|n| n["why"].as_str()).collect();
    assert_eq!(
        later,
        [
            "finds ec2:volume by discovery when it runs",
            "finds ec2:instance by discovery when it runs",
            "finds ec2:image by discovery when it runs",
            "finds dynamodb:table by discovery when it runs"
        ]
    );
    // Not an event: one line naming the input, non-zero exit.
    let mut child = opsfleet(&["match", "--config", FLEET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"{not json\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("stdin:1: "), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every registered action: in `opsfleet actions` with each of its params, in `iam-policy` for
/// a task that uses its example params (every IAM action it lists), and in docs/actions.md.
/// The registry is the one list of actions; an action missing anywhere else fails here.
#[test]
fn every_registered_action_is_in_the_catalog_the_policy_and_the_docs() {
    let registry = ActionRegistry::builtin();
    let listed = opsfleet(&["actions"]).output().expect("actions");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let docs = std::fs::read_to_string("docs/actions.md").expect("docs/actions.md");
    let dir = std::env::temp_dir().join(format!("opsfleet-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for action in registry.iter() {
        let name = action.name();
        // The action's block: its name's line, then its indented lines.
        let block: Vec<&str> =
            listed.lines().skip_while(|l| *l != name).skip(1).take_while(|l| l.starts_with(' ')).collect();
        assert!(!block.is_empty(), "`{name}` missing from `opsfleet actions`");
        for param in action.params() {
            let line = format!("  param {}: ", param.name);
            assert!(block.iter().any(|l| l.starts_with(&line)), "{name}'s {} not listed", param.name);
            assert!(!param.help.is_empty(), "{name}'s param {} has no doc comment", param.name);
        }
        assert!(docs.lines().any(|l| l == format!("## `{name}`")), "`{name}` has no section in docs/actions.md");
        // TOML has no null: an absent param is its default.
        let mut example = action.example();
        example.as_object_mut().expect("params are a table").retain(|_, v| !v.is_null());
        let params = toml::Value::try_from(&example).expect("example params as TOML");
        let config = format!(
            "[fleet]\nname = \"catalog\"\nallowed_accounts = [\"111122223333\"]\n\n[[tasks]]\nname = \"t\"\n\
             pattern = {{ source = [\"x\"] }}\ntargets = \"event\"\naction = \"{name}\"\nparams = {}\n",
            params
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &config).expect("config");
        let path = path.to_string_lossy().into_owned();
        let valid = opsfleet(&["validate", "--config", &path]).output().expect("validate");
        assert!(valid.status.success(), "{name}'s example params: {}", String::from_utf8_lossy(&valid.stderr));
        let policy = opsfleet(&["iam-policy", "--config", &path]).output().expect("iam-policy");
        let policy = String::from_utf8_lossy(&policy.stdout).into_owned();
        let first: Vec<String> = action
            .iam_statements(&action.example())
            .expect("statements")
            .iter()
            .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        for iam in first {
            assert!(policy.contains(&format!("\"{iam}\"")), "{name}: `{iam}` missing from iam-policy");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn match_shows_the_steps_a_matched_runbook_would_run() {
    let out =
        opsfleet(&["match", "--config", FLEET, "examples/events/scheduled-patch-window.json"]).output().expect("match");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_str(&lines(&out.stdout)[0]).expect("JSON");
    assert_eq!(line["matched"], serde_json::json!(["weekly-patch-window"]));
    assert_eq!(
        line["runbooks"],
        serde_json::json!([{ "task": "weekly-patch-window",
            "steps": ["stop (instance-power)", "snapshot (ebs-snapshot)", "start (instance-power)", "report (notify)"] }])
    );
}
