use super::*;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::job::JobOrigin;
use opsfleet_protocol::ports::Backend;
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
    assert_eq!(l.begin(&j, "a", 2).await.expect("begin"), Begin::Started(1));
    assert_eq!(l.begin(&j, "b", 1).await.expect("begin"), Begin::Stale, "an older fence cannot write");
    assert_eq!(l.begin(&j, "c", 3).await.expect("begin"), Begin::Started(2));
    assert!(!l.finish(&j, 2, Status::Succeeded, "x").await.expect("finish"), "a superseded holder cannot finish");
    assert!(l.finish(&j, 3, Status::Succeeded, "done").await.expect("finish"));
    assert_eq!(l.begin(&j, "d", 4).await.expect("begin"), Begin::Finished(Status::Succeeded));
}

#[tokio::test]
async fn a_check_goes_on_when_handed_back_but_a_duplicate_cannot_fork_the_chain() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1).await.expect("begin");
    assert!(l.pending(&j, 1, &json!({}), 0).await.expect("pending"));
    assert!(l.checked(&j, 1, 0, 1, "msg-a").await.expect("checked"), "the first check runs");
    assert!(l.checked(&j, 1, 0, 1, "msg-a").await.expect("checked"), "the same check message, handed back, goes on");
    assert!(!l.checked(&j, 1, 0, 1, "msg-b").await.expect("checked"), "a duplicate of it does not");
    assert!(!l.checked(&j, 2, 1, 2, "msg-c").await.expect("checked"), "nor a check under another fence");
    assert!(l.checked(&j, 1, 1, 2, "msg-c").await.expect("checked"), "the next check of the chain runs");
}

#[tokio::test]
async fn a_failed_check_keeps_the_job_pending() {
    let l = ledger().await;
    let j = job();
    l.begin(&j, "a", 1).await.expect("begin");
    l.pending(&j, 1, &json!({}), 0).await.expect("pending");
    assert_eq!(l.failure(&j, 1, "throttled").await.expect("failure"), Some(1));
    let record = l.job(&j.id).await.expect("job").expect("record");
    assert_eq!((record.status, record.failures), (Status::Pending, 1));
    assert_eq!(l.failure(&j, 7, "stale").await.expect("failure"), None, "another fence cannot count failures");
}

#[tokio::test]
async fn a_run_lists_the_jobs_that_began() {
    let l = ledger().await;
    let j = job();
    assert!(l.run_jobs(&j.run_id()).await.expect("run jobs").is_empty());
    l.begin(&j, "a", 1).await.expect("begin");
    l.begin(&j, "a", 2).await.expect("begin again");
    assert_eq!(l.run_jobs(&j.run_id()).await.expect("run jobs"), std::slice::from_ref(&j.id));
}
