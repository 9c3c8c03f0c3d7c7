//! Faults a worker must survive without losing a job or running it twice: a crash between two
//! ledger writes, a hung step, a paused holder whose lease was taken over, batch deletes that
//! leave entries behind, and a long poll under way at shutdown.

mod support;

use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{AttrValue, Backend};
use opsfleet_protocol::Job;
use opsfleet_worker::ledger::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::faulty::{Faults, FaultyBackend};
use support::*;

fn effects_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("opsfleet-effects-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("effects dir");
    dir
}

fn faulty(fleet: &Fleet, faults: &Arc<Faults>) -> Arc<dyn Backend> {
    Arc::new(FaultyBackend::new(fleet.backend.clone(), Arc::clone(faults)))
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_a_jobs_final_write_leaves_its_attempt_in_the_audit_and_counts_it_once() {
    let dir = effects_dir("crash");
    let fleet = Fleet::new(&format!(
        r#"
[[tasks]]
name = "counted"
pattern = {{ source = ["x"] }}
targets = "event"
action = "noop"
params = {{ effects_dir = "{}" }}
max_errors = 3
"#,
        dir.display()
    ))
    .await;
    let job = fleet.job("counted", "e", "i-1");
    fleet.send(&job, "m").await;
    // The worker dies at the write that finishes the job: the write that would also have begun
    // its first attempt.
    let faults = Arc::new(Faults::default());
    *faults.crash_at.lock().expect("lock") = Some(Box::new(|key, update| {
        key.pk.starts_with("job#") && update.set.get("status") == Some(&AttrValue::from("SUCCEEDED"))
    }));
    let (stop, handle) = fleet.start_on(faulty(&fleet, &faults), None, "doomed").await;
    for _ in 0..100 {
        if faults.crashed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(faults.crashed.load(Ordering::SeqCst), "the worker reached the final write");
    assert_eq!(fleet.ledger.job(&job.id).await.expect("ledger"), None, "nothing was written of the job");
    stop.cancel();
    handle.await.expect("worker");
    // Another worker takes the job over once the dead one's lease and message lapse.
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(120)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 2), "{record:?}");
    let attempts = fleet.ledger.attempts(&job.id).await.expect("attempts");
    let outcomes: Vec<(&str, &str)> =
        attempts.iter().map(|a| (a.owner.split('/').next().unwrap_or_default(), a.outcome.as_str())).collect();
    assert_eq!(outcomes.len(), 2, "{attempts:?}");
    assert_eq!(outcomes[0], ("doomed", "LAPSED"), "the crashed attempt is in the audit trail: {attempts:?}");
    assert_eq!(outcomes[1].1, "SUCCEEDED", "{attempts:?}");
    let run = fleet.ledger.run(&job.run_id()).await.expect("run");
    assert_eq!((run.succeeded, run.failed, run.cancelled), (1, 0, 0), "{run:?}");
    assert_eq!(fleet.ledger.run_jobs(&job.run_id()).await.expect("run jobs"), std::slice::from_ref(&job.id));
    let effects = std::fs::read_to_string(dir.join(&job.id)).expect("effect").lines().count();
    assert_eq!(effects, 1, "the second run found the first one's effect");
}

#[tokio::test(start_paused = true)]
async fn a_step_past_its_timeout_is_a_retryable_failure() {
    let fleet =
        Fleet::new(&tasks(&[noop_task("hung", "sleep_ms = 3600000").with("timeout_secs = 2").with("retries = 1")]))
            .await;
    let job = fleet.job("hung", "e", "i-1");
    fleet.send(&job, "m").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(600)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts, record.failures), (Status::Failed, 2, 2), "{record:?}");
    assert!(record.error.as_deref().is_some_and(|e| e.contains("timeout_secs = 2")), "{record:?}");
    assert_eq!(fleet.dead_letters(job.partition).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_paused_holder_whose_lease_was_taken_over_dead_letters_nothing() {
    let fleet = Fleet::new(&tasks(&[noop_task("broken", "fail_rate = 1.0").with("retries = 0")])).await;
    let job = fleet.job("broken", "e", "i-1");
    // Worker a pauses for a minute at the run entry of the job's final failure: its 5 s lease
    // lapses meanwhile, and worker b takes the job over from a second delivery.
    let faults = Arc::new(Faults::default());
    *faults.stall_puts.lock().expect("lock") =
        Some((Box::new(|item| item.key.pk.starts_with("run#")), Duration::from_secs(60)));
    fleet.send_in_group(&job, "first", "a").await;
    let (stop_a, a) = fleet.start_on(faulty(&fleet, &faults), None, "a").await;
    for _ in 0..100 {
        if fleet.ledger.job(&job.id).await.expect("ledger").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fleet.send_in_group(&job, "second", "b").await;
    let backend: Arc<dyn Backend> = fleet.backend.clone();
    let (stop_b, b) = fleet.start_on(backend, None, "b").await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    stop_a.cancel();
    stop_b.cancel();
    a.await.expect("a");
    b.await.expect("b");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    let attempts = fleet.ledger.attempts(&job.id).await.expect("attempts");
    assert_eq!(
        faults.stalled_refused.load(Ordering::SeqCst),
        1,
        "a's stalled write was refused by b's fence: {record:?} {attempts:?} {:?}",
        fleet.dead_letters(job.partition)
    );
    assert_eq!((record.status, record.fence), (Status::Failed, 2), "{record:?}");
    assert_eq!(fleet.dead_letters(job.partition).len(), 1, "only the holder of the newer fence dead-lettered it");
}

#[tokio::test]
async fn deletes_a_batch_left_behind_are_retried() {
    let fleet = Fleet::new(NOOP).await;
    let jobs: Vec<Job> = (0..6).map(|i| fleet.job("quick", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    let faults = Arc::new(Faults::default());
    faults.failing_deletes.store(3, Ordering::SeqCst);
    let (stop, handle) = fleet.start_on(faulty(&fleet, &faults), None, "w").await;
    fleet.wait_final(&jobs, Duration::from_secs(10)).await;
    // The visibility timeout is 10 s: empty queues well before it mean the deletes were
    // retried, not left to come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut left = 0;
        for p in 0..2 {
            left += fleet.backend.embedded_queue(&names::jobs_queue("w", p)).expect("queue").peek_bodies().len();
        }
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} finished messages were never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(faults.failing_deletes.load(Ordering::SeqCst), 0, "the faults were injected");
    stop.cancel();
    handle.await.expect("worker");
}

#[tokio::test]
async fn a_long_poll_under_way_at_shutdown_hands_back_what_it_brings() {
    let fleet = Fleet::new(NOOP).await;
    let faults = Arc::new(Faults::default());
    faults.detached_receives.store(true, Ordering::SeqCst);
    let (stop, handle) = {
        // Long polls as long as the grace allows (4 s of the 5 s grace).
        let backend = faulty(&fleet, &faults);
        let mut config = fleet.config.as_ref().clone();
        config.worker.max_in_flight = 4.try_into().expect("non-zero");
        let config = Arc::new(config);
        let hard_stop = tokio_util::sync::CancellationToken::new();
        let worker = opsfleet_worker::Worker::open(
            backend.as_ref(),
            Arc::clone(&config),
            opsfleet_worker::ActionRegistry::builtin(),
            "w".into(),
            false,
            hard_stop.clone(),
        )
        .await
        .expect("worker");
        let consumer = opsfleet_worker::Consumer::open(backend.as_ref(), Arc::new(worker), &config)
            .await
            .expect("consumer")
            .with_long_poll(Duration::from_secs(20));
        let shutdown = tokio_util::sync::CancellationToken::new();
        (shutdown.clone(), tokio::spawn(consumer.run(shutdown, hard_stop)))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    // A job arrives while the long polls are still open.
    let job = fleet.job("quick", "e", "i-1");
    fleet.send(&job, "late").await;
    let summary =
        tokio::time::timeout(Duration::from_secs(10), handle).await.expect("within the grace").expect("worker");
    assert_eq!(summary.handled, 0, "{summary:?}");
    let queue = fleet.backend.queue(&names::jobs_queue("w", job.partition)).await.expect("queue");
    let visible = queue.receive(10, Duration::ZERO, None).await.expect("receive");
    assert_eq!(visible.len(), 1, "the message a closing long poll took is visible again at once");
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_table_spends_no_receives() {
    // Messages go to the DLQ after two receives; the table is down for six minutes.
    let text = BASE.replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 5\nmax_receive_count = 2");
    let fleet = Fleet::with(&format!(
        "{text}{}",
        tasks(&[noop_task("quick", ""), noop_task("slow", "pending_checks = 1, check_after_ms = 500")])
    ))
    .await;
    let pending = fleet.job("slow", "e", "i-0");
    fleet.send(&pending, "pending").await;
    let faults = Arc::new(Faults::default());
    let (stop, handle) = fleet.start_on(faulty(&fleet, &faults), None, "w").await;
    while fleet.ledger.job(&pending.id).await.expect("ledger").map(|r| r.status) != Some(Status::Pending) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    faults.table_down.store(true, Ordering::SeqCst);
    let jobs: Vec<Job> = (1..5).map(|i| fleet.job("quick", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    tokio::time::sleep(Duration::from_secs(360)).await;
    faults.table_down.store(false, Ordering::SeqCst);
    let mut all = jobs.clone();
    all.push(pending.clone());
    fleet.wait_final(&all, Duration::from_secs(120)).await;
    stop.cancel();
    handle.await.expect("worker");
    for job in &all {
        assert_eq!(fleet.status(job).await, Status::Succeeded, "{}", job.id);
    }
    for p in 0..2 {
        assert!(fleet.dead_letters(p).is_empty(), "{:?}", fleet.dead_letters(p));
    }
    let checks_dlq = fleet.backend.embedded_queue(&names::checks_dlq("w")).expect("dlq").peek_bodies();
    assert!(checks_dlq.is_empty(), "{checks_dlq:?}");
}

#[tokio::test]
async fn a_run_is_cancelled_though_counting_its_failures_failed_once() {
    let fleet =
        Fleet::new(&tasks(&[noop_task("doomed", "fail_rate = 1").with("retries = 0").with("max_errors = 0")])).await;
    let job = fleet.job("doomed", "e", "i-1");
    fleet.send(&job, "first").await;
    let faults = Arc::new(Faults::default());
    // The query that counts the run's failures is throttled once.
    faults.failing_queries.store(1, Ordering::SeqCst);
    let (stop, handle) = fleet.start_on(faulty(&fleet, &faults), None, "w").await;
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fleet.ledger.run_cancelled(&job.run_id()).await.expect("run").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the run was never cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while fleet.dead_letters(job.partition).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the job was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    assert_eq!(faults.failing_queries.load(Ordering::SeqCst), 0, "the throttled query was made");
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_interrupted_at_shutdown_stays_in_the_audit_and_the_rerun_is_the_second() {
    let fleet = Fleet::new(&tasks(&[noop_task("long", "sleep_ms = 60000")])).await;
    let job = fleet.job("long", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Shut down while it runs: the grace (5 s) runs out and the attempt is interrupted.
    stop.cancel();
    let summary = handle.await.expect("worker");
    assert_eq!(summary.interrupted, 1, "{summary:?}");
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(300)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 2), "{record:?}");
    let attempts: Vec<(u32, String)> =
        fleet.ledger.attempts(&job.id).await.expect("attempts").into_iter().map(|a| (a.number, a.outcome)).collect();
    assert_eq!(attempts, [(1, "INTERRUPTED".to_owned()), (2, "SUCCEEDED".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_pending_renewal_that_fails_half_way_does_not_hold_the_job_for_an_hour() {
    let text = format!(
        "{}[limits.one]\nmax = 1\n{}",
        "",
        tasks(&[noop_task("slow", "pending_checks = 1, check_after_ms = 500").with("limit = \"one\"")])
    );
    let fleet = Fleet::new(&text).await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "first").await;
    let faults = Arc::new(Faults::default());
    // The lock is kept for the check; then the table goes away for two seconds, as the slot is.
    *faults.outage_at.lock().expect("faults") = Some((
        Box::new(|key, update| key.pk.starts_with("slot#") && update.set.contains_key("pending")),
        Duration::from_secs(2),
    ));
    let (stop, handle) = fleet.start_on(faulty(&fleet, &faults), None, "w").await;
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(300)).await;
    stop.cancel();
    handle.await.expect("worker");
    assert!(faults.table_down_seen.load(Ordering::SeqCst), "the outage happened");
    assert_eq!(fleet.status(&job).await, Status::Succeeded);
}
