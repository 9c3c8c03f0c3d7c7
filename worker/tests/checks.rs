//! Completion checks on the embedded backend: pending jobs holding their leases, checks
//! chained past 15 minutes, failed checks, and checks that come after their leases lapsed.

mod support;

use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::Backend;
use opsfleet_worker::lease::{lock_key, Acquire, Leases, Watch};
use opsfleet_worker::ledger::Status;
use opsfleet_worker::PENDING_SLACK;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_pending_job_completes_through_the_checks_queue_holding_its_lock() {
    let fleet = Fleet::new(&tasks(&[noop_task("slow", "pending_checks = 2, check_after_ms = 1000")])).await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "s").await;
    let (stop, handle) = fleet.start(None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.status(&job).await, Status::Pending);
    let store = fleet.backend.store("w").await.expect("store");
    let lock = store
        .get(&opsfleet_protocol::ports::Key::new(format!("lock#{}", job.resource.key()), "lease"))
        .await
        .expect("get")
        .expect("lock item");
    assert!(lock.str("owner").is_some(), "the lock is held while the job waits");
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 2));
}

#[test]
fn a_check_due_past_the_15_minute_delay_is_chained_until_it_is_due() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let waited = metrics::with_local_recorder(&recorder, || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        runtime.block_on(async {
            let fleet =
                Fleet::new(&tasks(&[noop_task("glacial", "pending_checks = 1, check_after_ms = 2400000")])).await;
            let job = fleet.job("glacial", "e", "i-1");
            fleet.send(&job, "g").await;
            let started = tokio::time::Instant::now();
            let (stop, handle) = fleet.start(None).await;
            fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(3 * 3600)).await;
            let waited = started.elapsed();
            stop.cancel();
            handle.await.expect("worker");
            assert_eq!(fleet.status(&job).await, Status::Succeeded);
            waited
        })
    });
    assert!(waited >= Duration::from_secs(40 * 60), "completed after {waited:?}, before the 40 minutes were up");
    let text = handle.render();
    let line = "opsfleet_checks_total{result=\"early\"} 2";
    assert!(
        text.lines().any(|l| l == line),
        "a 40-minute wait is three delays of at most 15 minutes: missing `{line}` in\n{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_delivery_of_a_pending_job_is_acknowledged_and_the_check_finishes_it_once() {
    let (fleet, job) = pending_then_stopped().await;
    // The job message comes again (a delete that failed, a visibility that ran out) while
    // its check waits in the checks queue.
    fleet.send(&job, "again").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts, record.fence), (Status::Succeeded, 1, 1), "{record:?}");
    let partition = fleet.backend.embedded_queue(&names::jobs_queue("w", job.partition)).expect("queue");
    assert!(partition.peek_bodies().is_empty(), "the second delivery was acknowledged");
}

#[tokio::test]
async fn a_failed_check_is_checked_again_and_the_job_completes() {
    let fleet = Fleet::new(&tasks(&[
        noop_task("bumpy", "pending_checks = 1, fail_checks = 1, check_after_ms = 500").with("retries = 2")
    ]))
    .await;
    let job = fleet.job("bumpy", "e", "i-1");
    fleet.send(&job, "b").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!(
        (record.status, record.checks, record.failures, record.fence),
        (Status::Succeeded, 2, 1, 1),
        "{record:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_that_comes_after_its_leases_lapsed_goes_on_from_the_recorded_state() {
    let (fleet, job) = pending_then_stopped().await;
    // No worker runs the check until the pending leases (check_after + lease + slack) have
    // lapsed, and another job of the resource takes the lock meanwhile.
    let leases = Leases::new(fleet.backend.store("w").await.expect("store"));
    let key = lock_key(&job.resource.key());
    let mut watch = Watch::default();
    let Acquire::Held(holder) =
        leases.acquire(&key, "another", "another-job", Duration::from_secs(5), &mut watch).await.expect("acquire")
    else {
        panic!("the pending job holds its lock");
    };
    assert!(holder.pending && holder.lease > PENDING_SLACK, "{holder:?}");
    tokio::time::sleep(holder.lease).await;
    let Acquire::Acquired(other) =
        leases.acquire(&key, "another", "another-job", Duration::from_secs(5), &mut watch).await.expect("acquire")
    else {
        panic!("the lapsed lock is free to take");
    };
    assert!(leases.release(&other).await.expect("release"));
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(20)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!(
        (record.status, record.attempts, record.fence, record.checks),
        (Status::Succeeded, 1, 3, 1),
        "the job went on under a new fence without starting again: {record:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn work_still_pending_past_the_tasks_deadline_fails_and_lets_go_of_its_lock() {
    let fleet = Fleet::new(&tasks(&[
        noop_task("stuck", "pending_checks = 1000, check_after_ms = 600000").with("deadline_mins = 30")
    ]))
    .await;
    let job = fleet.job("stuck", "e", "i-1");
    fleet.send(&job, "s").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(3600)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!(record.status, Status::Failed, "{record:?}");
    assert!(
        (3..=4).contains(&record.checks),
        "checked every 10 minutes until 30 minutes had passed: {} checks",
        record.checks
    );
    let reason = record.error.clone().unwrap_or_default();
    assert!(reason.contains("deadline_mins is 30"), "{reason}");
    let dead = fleet.dead_letters(job.partition);
    assert!(dead.iter().any(|(_, r)| r.contains("deadline_mins")), "dead-lettered with the reason: {dead:?}");
    let store = fleet.backend.store("w").await.expect("store");
    let lock = store
        .get(&opsfleet_protocol::ports::Key::new(format!("lock#{}", job.resource.key()), "lease"))
        .await
        .expect("get");
    assert!(lock.and_then(|l| l.str("owner").map(str::to_owned)).is_none(), "the lock is released");
}
