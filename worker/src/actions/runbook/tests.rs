use super::*;
use crate::actions::AnyAction;
use opsfleet_protocol::job::{step_job_id, JOB_VERSION};
use opsfleet_protocol::Resource;
use std::collections::BTreeMap;

fn job(steps: Value) -> Job {
    let resource = Resource {
        account: "123456789012".into(),
        region: "us-east-1".into(),
        kind: ResourceType::Instance,
        id: "i-1".into(),
    };
    Job {
        v: JOB_VERSION,
        id: "job-1".into(),
        event_id: "e".into(),
        event_time: None,
        received_ms: 1,
        task: "t".into(),
        action: "runbook".into(),
        params: json!({ "steps": steps }),
        resource,
        partition: 0,
        event_fields: BTreeMap::new(),
        run_size: None,
    }
}

fn runbook() -> Arc<dyn AnyAction> {
    Arc::clone(ActionRegistry::builtin().get("runbook").expect("runbook"))
}

/// Drives a runbook's job to its end as the worker would (a pending step comes back as a
/// check with its state); every state it was handed on with, and the end.
async fn drive(job: &Job) -> (Vec<Progress>, Step) {
    let action = runbook();
    let ctx = |check| ActionContext { job, dry_run: false, attempt: 1, check, aws: None, now_ms: 1 };
    let mut step = action.start(ctx(0)).await;
    let mut states = Vec::new();
    for n in 1..200 {
        let Step::Pending { state, .. } = &step else { return (states, step) };
        states.push(serde_json::from_value(state.clone()).expect("progress"));
        step = action.check(ctx(n), state).await;
    }
    panic!("the runbook did not finish: {step:?}");
}

#[tokio::test]
async fn steps_run_in_order_each_handed_on_before_the_next_starts() {
    let job = job(json!([
        { "name": "a", "action": "noop", "params": { "pending_checks": 1 } },
        { "name": "b", "action": "noop", "params": { "fail_attempts": 2 } },
        { "name": "c", "action": "noop" },
    ]));
    let (states, end) = drive(&job).await;
    let Step::Done { summary } = end else { panic!("{end:?}") };
    assert!(
        summary.starts_with("a: ") && summary.contains("; b (3 tries): ") && summary.contains("; c: "),
        "{summary}"
    );
    // a pending, a checked done, b failed twice, b done, then c is done in the same call.
    let at: Vec<(usize, usize)> = states.iter().map(|p| (p.at, p.done.len())).collect();
    assert_eq!(at, [(0, 0), (1, 1), (1, 1), (1, 1), (2, 2)]);
    let last = states.last().expect("states");
    assert_eq!(last.done.iter().map(|o| o.tries).collect::<Vec<_>>(), [1, 3]);
}

#[tokio::test]
async fn on_failure_continues_goes_to_a_step_or_aborts() {
    let continued = job(json!([
        { "name": "a", "action": "noop", "params": { "fail_rate": 1.0 }, "on_failure": "continue" },
        { "name": "b", "action": "noop" },
    ]));
    let (_, end) = drive(&continued).await;
    assert!(
        matches!(&end, Step::Done { summary } if summary.contains("a failed: noop: fail_rate = 1; b: ")),
        "{end:?}"
    );

    let jumped = job(json!([
        { "name": "a", "action": "noop", "params": { "fail_attempts": 9 }, "retries": 1, "on_failure": "step:c" },
        { "name": "b", "action": "noop" },
        { "name": "c", "action": "noop" },
    ]));
    let (states, end) = drive(&jumped).await;
    let ran: Vec<&str> = states.last().expect("states").done.iter().map(|o| o.step.as_str()).collect();
    assert_eq!(ran, ["a"]);
    assert!(matches!(&end, Step::Done { summary } if !summary.contains("b:") && summary.contains("c: ")), "{end:?}");

    let aborted = job(json!([
        { "name": "a", "action": "noop", "params": { "fail_attempts": 9 }, "retries": 0 },
        { "name": "b", "action": "noop" },
    ]));
    let (_, end) = drive(&aborted).await;
    assert_eq!(
        end,
        Step::Failed {
            retryable: false,
            error: "step `a` (noop) failed: noop: failing attempt 1 (failure 1, over the step's retries = 0)".into()
        }
    );
}

#[tokio::test]
async fn a_loop_through_on_failure_ends_failed() {
    let looping = job(json!([
        { "name": "a", "action": "noop", "params": { "fail_rate": 1.0 }, "on_failure": "step:a" },
    ]));
    let (_, end) = drive(&looping).await;
    assert!(matches!(&end, Step::Failed { retryable: false, error } if error.contains("loop")), "{end:?}");
}

#[tokio::test]
async fn a_step_over_its_timeout_is_a_retryable_failure() {
    let slow = job(
        json!([{ "name": "a", "action": "noop", "params": { "sleep_ms": 5000 }, "timeout_secs": 1, "retries": 0 }]),
    );
    let started = std::time::Instant::now();
    let (_, end) = drive(&slow).await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(matches!(&end, Step::Failed { error, .. } if error.contains("timeout_secs = 1")), "{end:?}");
}

#[test]
fn each_step_runs_under_an_id_of_its_own_with_earlier_outputs_put_in() {
    let job = job(json!([]));
    let spec: RunbookStep =
        serde_json::from_value(json!({ "name": "n", "action": "notify", "params": { "note": "{steps.s.ids}" } }))
            .expect("step");
    let snapshot: RunbookStep = serde_json::from_value(json!({ "name": "s", "action": "ebs-snapshot" })).expect("step");
    let done = [StepOutput::new(&snapshot, "succeeded", "snap-0123456789abcdef0 of vol-1 completed".into(), 1)];
    let step = step_job(&job, &spec, &done);
    assert_eq!(step.id, step_job_id("job-1", "n"));
    assert_ne!(step_job_id("job-1", "n"), step_job_id("job-1", "s"));
    assert_eq!(step.params, json!({ "note": "snap-0123456789abcdef0" }));
    assert_eq!(step.action, "notify");
}

#[test]
fn validation_names_the_step_and_what_is_wrong() {
    let check = |steps: Value| runbook().check_params(&json!({ "steps": steps })).map(|_| ()).unwrap_err();
    assert!(check(json!([])).contains("at least one step"));
    let e = check(json!([{ "name": "a", "action": "noop" }, { "name": "a", "action": "noop" }]));
    assert!(e.contains("steps[1] `a`: another step has the same name"), "{e}");
    let e = check(json!([{ "name": "a", "action": "runbook" }]));
    assert!(e.contains("steps[0] `a`: unknown action `runbook`"), "{e}");
    let e = check(json!([{ "name": "a", "action": "noop", "on_failure": "step:zz" }]));
    assert!(e.contains("on_failure names no step `zz`"), "{e}");
    let e = check(json!([{ "name": "a", "action": "noop", "on_failure": "retry" }]));
    assert!(e.contains("is not `abort`, `continue` or `step:NAME`"), "{e}");
    let topic = "arn:aws:sns:us-east-1:111122223333:ops";
    let e =
        check(json!([{ "name": "n", "action": "notify", "params": { "topic_arn": topic, "note": "{steps.s.ids}" } }]));
    assert!(e.contains("no step before it is named `s`"), "{e}");
    let e = check(json!([
        { "name": "s", "action": "noop" },
        { "name": "n", "action": "notify", "params": { "topic_arn": topic, "note": "{steps.s.size}" } },
    ]));
    assert!(e.contains("a step's outputs are status, summary, ids, error, tries"), "{e}");
    let e = check(json!([{ "name": "a", "action": "noop", "params": { "nope": 1 } }]));
    assert!(e.contains("steps[0] `a`: params: unknown field `nope`"), "{e}");
}

#[test]
fn a_runbook_acts_on_what_all_its_steps_act_on() {
    let params = json!({ "steps": [
        { "name": "a", "action": "noop" },
        { "name": "b", "action": "instance-power", "params": { "operation": "stop" } },
    ] });
    assert_eq!(runbook().targets_for(&params), [ResourceType::Instance]);
}

#[test]
fn a_step_whose_check_state_is_null_stays_at_its_checks() {
    // `tag` and `notify` check with no state (`()`, JSON null): the progress must still say
    // the step's start is behind it, or every check would start it again.
    let progress = Progress { started: true, state: Value::Null, checks: 1, ..Progress::default() };
    let read: Progress = serde_json::from_value(serde_json::to_value(&progress).expect("json")).expect("progress");
    assert_eq!(read, progress);
}

#[tokio::test]
async fn an_approval_step_hands_the_job_to_the_worker_then_counts_as_approved() {
    let topic = "arn:aws:sns:us-east-1:111122223333:ops";
    let job = job(json!([
        { "name": "a", "action": "noop" },
        { "name": "go", "action": "approve", "params": { "topic_arn": topic, "timeout_mins": 30 } },
        { "name": "b", "action": "noop" },
    ]));
    let (states, end) = drive(&job).await;
    // a done; the approval step reached (started: the worker's check of it waits); approved.
    let at: Vec<(usize, bool)> = states.iter().map(|p| (p.at, p.started)).collect();
    assert_eq!(at, [(1, false), (1, true), (2, false)]);
    assert!(matches!(&end, Step::Done { summary } if summary.contains("go: approved")), "{end:?}");
    let e = runbook()
        .check_params(&json!({ "steps": [{ "name": "go", "action": "approve", "params": { "topic_arn": "nope" } }] }))
        .unwrap_err();
    assert!(e.contains("steps[0] `go`: params: topic_arn `nope` is not an SNS topic ARN"), "{e}");
}
