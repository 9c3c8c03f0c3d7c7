//! Rate control and halting with router and worker processes on fauxqs and DynamoDB Local,
//! behind proxies that serve AWS's semantics (stale reads, second deliveries): a ramping run
//! starts one job, then two, then doubles up to `max_concurrency`, as its start times show; an
//! alarm in ALARM halts a run mid-way (an older OK arriving late does not resume it) and its
//! OK resumes it; `opsfleet halt` and `opsfleet resume` do the same by hand.

mod support;

use opsfleet_worker::ledger::ramped;
use serde_json::{json, Value};
use std::time::Duration;
use support::process_fleet::{instances_event, ProcessFleet};

const CONFIG: &str = r#"
[fleet]
name = "FLEET"
partitions = 2
allowed_accounts = ["123456789012"]

[[tasks]]
name = "rollout"
pattern = { source = ["ops.rollout"] }
targets = "event"
action = "noop"
params = { sleep_ms = 400, effects_dir = "EFFECTS" }
max_concurrency = 8
ramp_up = true

[[tasks]]
name = "guarded"
pattern = { source = ["ops.guarded"] }
targets = "event"
action = "noop"
params = { sleep_ms = 300, effects_dir = "EFFECTS" }
max_concurrency = 1
halt_on_alarms = ["api-errors"]
"#;

/// A state change of the alarm `api-errors` at `at`.
fn alarm(id: &str, state: &str, at: &str) -> String {
    json!({ "version": "0", "id": id, "detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch",
            "account": "123456789012", "time": at, "region": "us-east-1",
            "resources": ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:api-errors"],
            "detail": { "alarmName": "api-errors", "state": { "value": state, "reason": "5xx over 2%", "timestamp": at } } })
    .to_string()
}

/// The (began, ended) of every effect of `task`, in order of beginning.
fn runs_of(fleet: &ProcessFleet, task: &str) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = fleet
        .effects()
        .iter()
        .filter(|e| e["task"] == task)
        .map(|e: &Value| (e["began_ms"].as_u64().unwrap_or(0), e["ended_ms"].as_u64().unwrap_or(0)))
        .collect();
    runs.sort_unstable();
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramping_run_starts_one_job_then_two_then_doubles_up_to_max_concurrency() {
    let mut fleet = ProcessFleet::new("e2e-ramp", CONFIG).await;
    fleet.start("router", None);
    fleet.start("worker", None);
    let jobs = fleet.send(&[instances_event("ramp", "ops.rollout", 20)]).await;
    assert_eq!(jobs.len(), 20);
    fleet.wait_final(&jobs, Duration::from_secs(120)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;

    let runs = runs_of(&fleet, "rollout");
    assert_eq!(runs.len(), 20);
    let mut peak = 0;
    for (i, &(began, _)) in runs.iter().enumerate() {
        // Every job that began before this one and had not ended, and every one that had.
        let running = runs[..i].iter().filter(|&&(_, ended)| ended > began).count() as u32;
        let finished = runs[..i].iter().filter(|&&(_, ended)| ended <= began).count() as u32;
        assert!(
            running < ramped(8, finished),
            "job {i} began with {running} running after {finished} finished: over the ramp's {}",
            ramped(8, finished)
        );
        peak = peak.max(running + 1);
    }
    assert_eq!(runs[1].0.max(runs[0].1), runs[1].0, "the second job began after the first ended");
    assert!(peak >= 4, "the run ramped up past two at once (peak {peak})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_halts_a_run_mid_way_and_its_ok_resumes_it_and_so_do_halt_and_resume() {
    let mut fleet = ProcessFleet::new("e2e-halt", CONFIG).await;
    fleet.start("router", None);
    fleet.start("worker", None);
    let jobs = fleet.send(&[instances_event("halt", "ops.guarded", 12)]).await;
    let wait_for = |n: usize| {
        let fleet = &fleet;
        async move {
            for _ in 0..300 {
                if runs_of(fleet, "guarded").len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("fewer than {n} jobs ran");
        }
    };
    wait_for(2).await;
    fleet.send(&[alarm("alarm-1", "ALARM", "2026-12-05T10:05:00Z")]).await;
    // The router records the alarm, and workers read halts at most every 2 s (stale reads too).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let halted_at = runs_of(&fleet, "guarded").len();
    assert!(halted_at < jobs.len(), "the run was halted mid-way ({halted_at} of {} ran)", jobs.len());
    let listed = fleet.command(&["halts"], None);
    assert!(listed.contains("guarded halted by alarm api-errors"), "{listed}");
    // An OK older than the ALARM, arriving late, does not resume it.
    fleet.send(&[alarm("alarm-0", "OK", "2026-12-05T10:04:00Z")]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(runs_of(&fleet, "guarded").len(), halted_at, "no job started while halted");
    fleet.send(&[alarm("alarm-2", "OK", "2026-12-05T10:09:00Z")]).await;
    fleet.wait_final(&jobs, Duration::from_secs(90)).await;
    fleet.assert_succeeded_exactly_once(&jobs).await;

    // By hand, with the caller's identity recorded.
    let out = fleet.command(&["halt", "guarded"], None);
    assert!(out.contains("guarded halted by arn:aws:"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = fleet.send(&[instances_event("hand", "ops.guarded", 3)]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = runs_of(&fleet, "guarded").len();
    assert_eq!(before, jobs.len(), "no job of the new run started while halted by hand");
    assert!(fleet.command(&["halts"], None).contains("guarded halted by hand"));
    let out = fleet.command(&["resume", "guarded"], None);
    assert!(out.contains("guarded resumed by arn:aws:"), "{out}");
    fleet.wait_final(&more, Duration::from_secs(60)).await;
    fleet.assert_succeeded_exactly_once(&more).await;
}
