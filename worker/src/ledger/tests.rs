use super::*;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::ports::{Cond, Item, Key};
use opsfleet_protocol::{Resource, ResourceType};
use serde_json::json;

async fn ledger() -> Ledger {
    let backend = EmbeddedBackend::new();
    backend.ensure_table("t").await.expect("table");
    Ledger::new(backend.store("t").await.expect("store"), Clock::new(), Duration::from_secs(3600))
}

fn job() -> Job {
    let params = json!({});
    let origin =
        JobOrigin { event_id: "e", event_time: None, received_ms: 1, task: "t", action: "noop", params: &params };
    let resource = Resource {
        account: "123456789012".into(),
        region: "us-east-1".into(),
        kind: ResourceType::Instance,
        id: "i-1".into(),
    };
    Job::new(origin, resource, 4)
}

#[tokio::test]
async fn begin_refuses_older_fences_and_finished_jobs() {
    let l = ledger().await;
    let j = job();
    assert_eq!(l.begin(&j, "a", 2, None, None).await.expect("begin"), Begin::Started(1));
    assert_eq!(l.begin(&j, "b", 1, None, None).await.expect("begin"), Begin::Stale, "an older fence cannot write");
    assert_eq!(l.begin(&j, "c", 3, None, None).await.expect("begin"), Begin::Started(2));
    assert!(!l.finish(&j, 2, Status::Succeeded, "x").await.expect("finish"), "a superseded holder cannot finish");
    assert!(l.finish(&j, 3, Status::Succeeded, "done").await.expect("finish"));
    assert_eq!(l.begin(&j, "d", 4, None, None).await.expect("begin"), Begin::Finished(Status::Succeeded));
}

const HOLD: Duration = Duration::from_secs(60);

fn link<'a>(previous: u32, token: &'a str, claim: &'a str) -> CheckLink<'a> {
    CheckLink { previous, token, claim, hold: HOLD }
}

#[tokio::test]
async fn a_check_goes_on_when_handed_back_but_a_duplicate_cannot_fork_the_chain() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    assert!(l.pending(&j, 1, &json!({}), 0, None, "link-1").await.expect("pending"));
    assert_eq!(
        l.checked(&j, 1, &link(0, "link-1", "h1")).await.expect("checked"),
        Checked::Running,
        "the first check runs"
    );
    assert_eq!(
        l.checked(&j, 1, &link(0, "link-1", "h1")).await.expect("checked"),
        Checked::Running,
        "the same handling again (an SDK retry) goes on"
    );
    assert!(
        matches!(l.checked(&j, 1, &link(0, "link-1", "h2")).await.expect("checked"), Checked::Busy(left) if left <= HOLD),
        "a second delivery of the same link waits while the first runs"
    );
    assert_eq!(
        l.checked(&j, 1, &link(0, "link-x", "h3")).await.expect("checked"),
        Checked::Stale,
        "another link of that place is stale"
    );
    assert_eq!(
        l.checked(&j, 2, &link(1, "link-2", "h4")).await.expect("checked"),
        Checked::Stale,
        "so is a check under another fence"
    );
    assert!(
        matches!(l.checked(&j, 1, &link(1, "link-2", "h4")).await.expect("checked"), Checked::Busy(_)),
        "the next check waits while a handling of this one runs"
    );
    assert!(l.pending(&j, 1, &json!({}), 1, Some("link-1"), "link-2").await.expect("pending"));
    assert_eq!(
        l.checked(&j, 1, &link(0, "link-1", "h2")).await.expect("checked"),
        Checked::Stale,
        "once it ended, its duplicate is stale"
    );
    assert_eq!(
        l.checked(&j, 1, &link(1, "link-2", "h4")).await.expect("checked"),
        Checked::Running,
        "the next check of the chain runs"
    );
}

#[tokio::test]
async fn a_late_retry_of_a_pending_write_cannot_set_the_chain_back() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    assert!(l.pending(&j, 1, &json!({"n": 0}), 0, None, "link-1").await.expect("pending"));
    assert_eq!(l.checked(&j, 1, &link(0, "link-1", "h1")).await.expect("checked"), Checked::Running);
    assert!(l.pending(&j, 1, &json!({"n": 1}), 1, Some("link-1"), "link-2").await.expect("pending"));
    // The first pending write, sent again by the SDK long after its first try went through.
    assert!(
        l.pending(&j, 1, &json!({"n": 0}), 0, None, "link-1").await.expect("late retry"),
        "the chain is still this holder's"
    );
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!(record.checks, 1, "{record:?}");
    assert_eq!(record.attrs.get("check_token"), Some(&"link-2".into()));
    assert_eq!(
        l.checked(&j, 1, &link(1, "link-2", "h2")).await.expect("checked"),
        Checked::Running,
        "the next check runs"
    );
}

#[tokio::test]
async fn a_redriven_check_whose_handler_died_after_recording_it_goes_on_once_its_claim_lapsed() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    assert!(l.pending(&j, 1, &json!({}), 0, None, "link-1").await.expect("pending"));
    assert_eq!(l.checked(&j, 1, &link(0, "link-1", "died")).await.expect("checked"), Checked::Running);
    // The same message body, redriven from the checks DLQ: a new message id, the same token.
    let short = CheckLink { previous: 0, token: "link-1", claim: "redriven", hold: Duration::ZERO };
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(l.checked(&j, 1, &short).await.expect("checked"), Checked::Running, "the dead handler's claim lapsed");
}

#[tokio::test]
async fn a_failed_check_keeps_the_job_pending() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    l.pending(&j, 1, &json!({}), 0, None, "link-1").await.expect("pending");
    assert_eq!(l.failure(&j, 1, "throttled", "check/1").await.expect("failure"), Some(1));
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.failures), (Status::Pending, 1));
    assert_eq!(
        l.failure(&j, 7, "stale", "check/2").await.expect("failure"),
        None,
        "another fence cannot count failures"
    );
}

fn job_for(resource: &str) -> Job {
    let mut j = job();
    j.resource.id = resource.into();
    j.id = opsfleet_protocol::job::job_id(&j.event_id, &j.task, &j.resource.key());
    j
}

#[tokio::test]
async fn a_runs_counts_are_derived_from_its_jobs_so_retries_and_crashes_cannot_skew_them() {
    let l = ledger().await;
    let (a, b, c) = (job_for("i-a"), job_for("i-b"), job_for("i-c"));
    let run = a.run_id();
    l.begin(&a, "w", 1, None, None).await.expect("begin");
    assert!(l.finish(&a, 1, Status::Succeeded, "ok").await.expect("finish"));
    // The same write again (an SDK retry whose first response was lost) counts nothing more.
    assert!(l.finish(&a, 1, Status::Succeeded, "ok").await.expect("finish again"));
    l.begin(&b, "w", 1, None, None).await.expect("begin");
    assert!(l.finish(&b, 1, Status::Failed, "boom").await.expect("finish"));
    // A worker crashed after writing c's entry in its run and before finishing c: c runs again
    // and its final entry replaces the one of the crashed attempt.
    l.begin(&c, "w", 1, None, None).await.expect("begin");
    let entry = Item {
        key: Key::new(format!("run#{run}"), format!("job#{}", c.id)),
        attrs: [("status".to_owned(), "FAILED".into()), ("fence".to_owned(), 1i64.into())].into_iter().collect(),
    };
    l.store.put(entry, Cond::Always).await.expect("crashed write");
    assert_eq!(l.job(&c.id).await.expect("job").expect("record").status, Status::InProgress);
    l.begin(&c, "w2", 2, None, None).await.expect("begin again");
    assert!(l.finish(&c, 2, Status::Succeeded, "ok").await.expect("finish"));
    let counts = l.run(&run).await.expect("run");
    assert_eq!((counts.succeeded, counts.failed, counts.cancelled), (2, 1, 0), "{counts:?}");
    // A superseded holder (fence 1) cannot overwrite c's entry.
    assert!(!l.finish(&c, 1, Status::Failed, "zombie").await.expect("zombie finish"));
    assert_eq!(l.run(&run).await.expect("run").failed, 1);
    let mut listed = l.run_jobs(&run).await.expect("run jobs");
    listed.sort();
    let mut expected = vec![a.id.clone(), b.id.clone(), c.id.clone()];
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn a_pending_job_never_begins_again_and_is_adopted_by_a_newer_fence() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    assert!(l.pending(&j, 1, &json!({"snapshot": "snap-1"}), 0, None, "link-1").await.expect("pending"));
    assert_eq!(
        l.begin(&j, "b", 2, None, None).await.expect("begin"),
        Begin::Pending,
        "a second delivery does not start it"
    );
    assert!(!l.adopt(&j, 7, 8, "c").await.expect("adopt"), "only from the fence it is pending under");
    assert!(l.adopt(&j, 1, 3, "c").await.expect("adopt"));
    assert!(!l.adopt(&j, 1, 4, "d").await.expect("adopt"), "once");
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.fence, record.attempts), (Status::Pending, 3, 1));
    assert_eq!(
        l.checked(&j, 3, &link(0, "link-1", "h")).await.expect("checked"),
        Checked::Running,
        "its checks go on under the new fence"
    );
}

#[tokio::test]
async fn a_reopened_job_is_marked_redriven_and_loses_its_dead_letter_mark() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1, None, None).await.expect("begin");
    assert!(l.finish(&j, 1, Status::Cancelled, "cancelled: run failed").await.expect("finish"));
    l.dead_lettered(&j.id, 1).await.expect("dead-lettered");
    assert!(l.job(&j.id).await.expect("job").expect("record").dead_lettered);
    assert!(l.reopen(&j.id).await.expect("reopen"), "a cancelled job reopens");
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.redriven, record.dead_lettered), (Status::InProgress, true, false));
    assert!(!l.reopen(&j.id).await.expect("reopen"), "an open job does not");
}

#[tokio::test]
async fn writes_the_sdk_retried_after_their_first_try_went_through_count_once() {
    let l = ledger().await;
    let j = job();
    assert_eq!(l.begin(&j, "w/j/1", 1, None, None).await.expect("begin"), Begin::Started(1));
    assert_eq!(
        l.begin(&j, "w/j/1", 1, None, None).await.expect("retried begin"),
        Begin::Started(1),
        "the same attempt"
    );
    assert_eq!(
        l.begin(&j, "w/j/2", 1, None, None).await.expect("begin"),
        Begin::Stale,
        "another owner of that fence is not"
    );
    assert_eq!(l.failure(&j, 1, "throttled", "start/1").await.expect("failure"), Some(1));
    assert_eq!(l.failure(&j, 1, "throttled", "start/1").await.expect("retried failure"), Some(1));
    assert_eq!(l.begin(&j, "w/j/3", 2, None, None).await.expect("begin"), Begin::Started(2));
    assert_eq!(l.failure(&j, 2, "throttled", "start/2").await.expect("failure"), Some(2));
    assert!(l.finish(&j, 2, Status::Succeeded, "ok").await.expect("finish"));
    assert!(l.finish(&j, 2, Status::Succeeded, "ok").await.expect("retried finish"));
    assert!(!l.finish(&j, 2, Status::Failed, "no").await.expect("finish"), "another outcome is refused");
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.attempts, record.failures), (Status::Succeeded, 2, 2));
}

fn attempt(number: u32, owner: &str, fence: i64, outcome: &str) -> Attempt {
    Attempt {
        number,
        owner: owner.into(),
        fence,
        locked_ms: 10,
        started_ms: 11,
        released_ms: 12,
        outcome: outcome.into(),
        error: None,
    }
}

#[tokio::test]
async fn a_first_attempt_is_begun_by_the_write_of_its_outcome_with_its_attempt_in_the_record() {
    let l = ledger().await;
    let j = job();
    let done = attempt(1, "w/j/1", 3, "SUCCEEDED");
    let writer = Writer { fence: 3, unbegun: Some("w/j/1"), attempt: Some(&done), lock: None };
    assert!(l.finish(&j, writer, Status::Succeeded, "ok").await.expect("finish"));
    assert!(l.finish(&j, writer, Status::Succeeded, "ok").await.expect("retried finish"), "an SDK retry is its own");
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.attempts, record.fence), (Status::Succeeded, 1, 3));
    assert_eq!(record.attrs.get("task"), Some(&"t".into()), "the audit indexes' keys are written too");
    assert_eq!(record.attrs.get("run"), Some(&j.run_id().into()));
    assert_eq!(l.attempts(&j.id).await.expect("attempts"), vec![done]);
    assert_eq!(l.run_jobs(&j.run_id()).await.expect("run jobs"), vec![j.id.clone()], "found through by-run");
    assert_eq!(l.run(&j.run_id()).await.expect("run").succeeded, 1);
}

#[tokio::test]
async fn an_unbegun_holder_cannot_write_over_a_newer_fence() {
    let l = ledger().await;
    let j = job();
    // A zombie of fence 1 that never began, after the holder of fence 2 began.
    assert_eq!(l.begin(&j, "w/j/2", 2, None, None).await.expect("begin"), Begin::Started(1));
    let zombie = Writer { fence: 1, unbegun: Some("w/j/1"), attempt: None, lock: None };
    assert!(!l.finish(&j, zombie, Status::Succeeded, "late").await.expect("finish"));
    assert_eq!(l.failure(&j, zombie, "late", "start/1").await.expect("failure"), None);
    assert!(!l.pending(&j, zombie, &json!({}), 0, None, "link-1").await.expect("pending"));
    // A newer unbegun holder takes over a job in progress under an older fence.
    let newer = Writer { fence: 5, unbegun: Some("w/j/5"), attempt: None, lock: None };
    assert_eq!(l.failure(&j, newer, "throttled", "start/2").await.expect("failure"), Some(1));
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.fence, record.attempts), (Status::InProgress, 5, 2));
    assert!(l.finish(&j, 5, Status::Succeeded, "ok").await.expect("finish as begun"));
}

#[tokio::test]
async fn a_lapsed_attempt_is_recorded_only_while_its_job_is_unfinished() {
    let l = ledger().await;
    let (a, b) = (job_for("i-a"), job_for("i-b"));
    l.lapsed(&a.id, &attempt(0, "w/a/1", 1, "LAPSED")).await.expect("lapsed");
    // Sent again by the SDK: counted once.
    l.lapsed(&a.id, &attempt(0, "w/a/1", 1, "LAPSED")).await.expect("lapsed again");
    let record = l.job(&a.id).await.expect("job").expect("a record in progress");
    assert_eq!((record.status, record.attempts, record.fence), (Status::InProgress, 1, 1), "{record:?}");
    let open = l.jobs_by(opsfleet_protocol::ports::INDEXES[2], "IN_PROGRESS", None, 10).await.expect("by status");
    assert!(open.iter().any(|(id, _)| id == &a.id), "the by-status index lists it: {open:?}");
    let done = attempt(1, "w/a/2", 2, "SUCCEEDED");
    let writer = Writer { fence: 2, unbegun: Some("w/a/2"), attempt: Some(&done), lock: None };
    assert!(l.finish(&a, writer, Status::Succeeded, "ok").await.expect("finish"));
    let outcomes: Vec<String> = l.attempts(&a.id).await.expect("attempts").into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, ["LAPSED", "SUCCEEDED"]);
    // b finished under fence 1 and only failed to release its lock: not lapsed.
    l.begin(&b, "w/b/1", 1, None, None).await.expect("begin");
    assert!(l.finish(&b, 1, Status::Succeeded, "ok").await.expect("finish"));
    l.lapsed(&b.id, &attempt(0, "w/b/1", 1, "LAPSED")).await.expect("lapsed");
    assert!(l.attempts(&b.id).await.expect("attempts").is_empty());
}

#[tokio::test]
async fn attempts_of_the_older_layout_are_still_read() {
    let l = ledger().await;
    let j = job();
    let item = Item {
        key: Key::new(format!("job#{}", j.id), "attempt#0001#4"),
        attrs: [
            ("owner".to_owned(), "w".into()),
            ("fence".to_owned(), 4i64.into()),
            ("outcome".to_owned(), "RETRY".into()),
        ]
        .into_iter()
        .collect(),
    };
    l.store.put(item, Cond::Always).await.expect("put");
    let got = l.attempts(&j.id).await.expect("attempts");
    assert_eq!(got.iter().map(|a| (a.number, a.fence, a.outcome.as_str())).collect::<Vec<_>>(), [(1, 4, "RETRY")]);
}
