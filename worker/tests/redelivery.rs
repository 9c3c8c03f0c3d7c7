//! Messages that come more than once: a second delivery of a running job, a redriven job whose
//! task is gone, a redriven job of a cancelled run.

mod support;

use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Job;
use opsfleet_worker::ledger::Status;
use std::time::Duration;
use support::*;

fn effects_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("opsfleet-effects-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("effects dir");
    dir
}

fn effects(dir: &std::path::Path, job: &Job) -> usize {
    std::fs::read_to_string(dir.join(&job.id)).map(|t| t.lines().count()).unwrap_or(0)
}

fn starts(dir: &std::path::Path, job: &Job) -> usize {
    std::fs::read_to_string(dir.join(format!("{}.starts", job.id))).map(|t| t.lines().count()).unwrap_or(0)
}

#[tokio::test]
async fn a_second_delivery_of_a_running_job_in_the_same_process_never_starts_it_again() {
    let dir = effects_dir("second-delivery");
    let fleet = Fleet::new(&format!(
        r#"
[[tasks]]
name = "slow"
pattern = {{ source = ["x"] }}
targets = "event"
action = "noop"
params = {{ sleep_ms = 1500, effects_dir = "{}" }}
"#,
        dir.display()
    ))
    .await;
    let job = fleet.job("slow", "e", "i-1");
    // The same job twice at once, as when a visibility heartbeat was throttled and SQS handed
    // the message out again while the first run went on.
    fleet.send_in_group(&job, "first", "a").await;
    fleet.send_in_group(&job, "second", "b").await;
    let (stop, handle) = fleet.start(None).await;
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    let queue = fleet.backend.embedded_queue(&names::jobs_queue("w", job.partition)).expect("queue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !queue.peek_bodies().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the second delivery was never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 1), "{record:?}");
    assert_eq!(effects(&dir, &job), 1, "the action ran once");
    assert_eq!(starts(&dir, &job), 1, "the second delivery waited for the lock and never started the action");
}

#[tokio::test]
async fn a_redriven_job_that_fails_the_same_way_within_five_minutes_is_dead_lettered_again() {
    // A worker whose config lacks the job's task, as during a rolling deploy.
    let fleet = Fleet::new(NOOP).await;
    let mut job = fleet.job("quick", "e", "i-1");
    job.task = "added-in-the-next-release".into();
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    let dlq = fleet.backend.queue(&names::jobs_dlq("w", job.partition)).await.expect("dlq");
    for round in 0..3 {
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead = dlq.receive(10, Duration::from_millis(50), None).await.expect("receive");
            if !dead.is_empty() {
                break;
            }
        }
        assert_eq!(dead.len(), 1, "round {round}: the dead letter is kept");
        assert!(dead[0].attributes[opsfleet_protocol::dead_letter::REASON_ATTRIBUTE]
            .contains("is not in this worker's config"));
        // `opsfleet dlq redrive`: back to the partition, then out of the DLQ.
        let partition = fleet.backend.queue(&names::jobs_queue("w", job.partition)).await.expect("queue");
        let back = OutgoingMessage {
            body: dead[0].body.clone(),
            group_id: Some(job.resource.key()),
            dedup_id: Some(format!("redrive-{}", dead[0].message_id)),
            ..Default::default()
        };
        partition.send_one(back).await.expect("redrive");
        dlq.delete_batch(&[dead[0].receipt.clone()]).await.expect("delete");
    }
    stop.cancel();
    handle.await.expect("worker");
}

#[tokio::test]
async fn redriven_jobs_of_a_cancelled_run_run() {
    let fleet =
        Fleet::new(&tasks(&[noop_task("doomed", "fail_attempts = 1").with("retries = 0").with("max_errors = 0")]))
            .await;
    let jobs: Vec<Job> = (0..3).map(|i| fleet.job("doomed", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, Some(1), Duration::from_secs(20)).await;
    let run = fleet.ledger.run(&jobs[0].run_id()).await.expect("run");
    assert_eq!((run.failed, run.cancelled), (1, 2), "{run:?}");
    // Every job of the run is in the DLQ, the cancelled ones too, with their reasons.
    let mut dead = Vec::new();
    for p in 0..2 {
        dead.extend(fleet.dead_letters(p));
    }
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(dead.iter().filter(|(_, reason)| reason.starts_with("cancelled: run failed 1 jobs")).count(), 2);
    // The operator redrives them: each is reopened and sent back, and runs (the noop fails
    // only a job's first attempt).
    for job in &jobs {
        assert!(fleet.ledger.reopen(&job.id).await.expect("reopen"), "{} reopens", job.id);
        fleet.send(job, &format!("redrive-{}", job.id)).await;
    }
    fleet.run_until_final(&jobs, Some(1), Duration::from_secs(20)).await;
    for job in &jobs {
        assert_eq!(fleet.status(job).await, Status::Succeeded, "{}", job.id);
    }
}
