//! The worker on the embedded backend as AWS serves it: eventually consistent reads that lag,
//! writes whose replies are lost and sent again late, checks delivered twice, dead letters
//! redriven, tasks renamed under pending jobs. Each test fails on a worker that trusts the
//! emulators' kindness.

mod support;

use opsfleet_backend::realism::Realism;
use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Job;
use opsfleet_worker::ledger::{CheckLink, Checked, Status};
use opsfleet_worker::redrive::{dead_letter_queues, redrive, Which};
use opsfleet_worker::CheckMessage;
use std::time::Duration;
use support::Fleet;

/// A scratch folder for the noop's effects.
fn effects_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("opsfleet-semantics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("effects dir");
    dir
}

/// The check numbers the noop ran for a job, with when each began and ended.
fn checks_run(dir: &std::path::Path, job: &Job) -> Vec<(u64, u64, u64)> {
    let text = std::fs::read_to_string(dir.join(format!("{}.checks", job.id))).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| {
            (v["check"].as_u64().unwrap_or(0), v["began_ms"].as_u64().unwrap_or(0), v["ended_ms"].as_u64().unwrap_or(0))
        })
        .collect()
}

async fn wait_for(fleet: &Fleet, job: &Job, status: Status, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = fleet.ledger.job(&job.id).await.expect("ledger");
        if seen.as_ref().map(|r| r.status) == Some(status) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never became {status:?}: {seen:?}", job.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redriven_job_runs_though_an_eventually_consistent_read_still_says_it_failed() {
    let lag = Duration::from_secs(2);
    let text = tasks(&[noop_task("flaky", "fail_attempts = 1").with("retries = 0")]);
    let (fleet, _layer) = Fleet::realistic(&text.to_string(), Realism::stale_reads(lag)).await;
    let job = fleet.job("flaky", "e", "i-1");
    fleet.send(&job, "first").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
    assert_eq!(fleet.status(&job).await, Status::Failed);
    // Every read now sees it failed and dead-lettered; the redrive that follows is what an
    // eventually consistent read misses for a moment.
    tokio::time::sleep(lag + Duration::from_millis(500)).await;
    let pairs = dead_letter_queues(fleet.layer.as_ref(), &fleet.config, Which::Jobs).await.expect("dlqs");
    let mut sent = 0;
    for pair in &pairs {
        sent += redrive(pair, &fleet.ledger, 10, 1).await.expect("redrive").len();
    }
    assert_eq!(sent, 1, "the failed job was dead-lettered once");
    let (stop, handle) = fleet.start(None).await;
    wait_for(&fleet, &job, Status::Succeeded, Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.expect("worker");
}

/// A fleet on `realism` whose job goes pending for `checks` checks, `check_after_ms` apart:
/// the job is sent and run until it is pending, and the worker stopped.
async fn pending(
    realism: Realism,
    params: &str,
    lines: &[&str],
) -> (Fleet, std::sync::Arc<opsfleet_backend::realism::RealisticBackend>, Job) {
    let mut task = noop_task("slow", params);
    for line in lines {
        task = task.with(line);
    }
    let text = tasks(&[task]).to_string().replace("lease_secs = 5", "lease_secs = 3");
    let (fleet, layer) = Fleet::realistic(&text, realism).await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    wait_for(&fleet, &job, Status::Pending, Duration::from_secs(10)).await;
    stop.cancel();
    handle.await.expect("worker");
    (fleet, layer, job)
}

#[tokio::test(start_paused = true)]
async fn a_check_redriven_from_the_checks_dlq_after_its_handler_died_finishes_the_job() {
    let (fleet, _layer, job) = pending(
        Realism::stale_reads(Duration::ZERO),
        "pending_checks = 1, check_after_ms = 500",
        &["timeout_secs = 5"],
    )
    .await;
    let checks = fleet.backend.queue(&names::checks_queue("w")).await.expect("checks");
    let got = checks.receive(1, Duration::from_secs(5), None).await.expect("receive");
    assert_eq!(got.len(), 1, "the job's check is on its way");
    let check = CheckMessage::from_json(&got[0].body, 0).expect("check");
    // Its handler recorded that the check runs, then died, again and again: SQS moved the
    // message to the checks DLQ.
    let link =
        CheckLink { previous: 0, token: &check.token, claim: "a-handler-that-died", hold: Duration::from_secs(8) };
    assert_eq!(fleet.ledger.checked(&job, check.lock.fence, &link).await.expect("checked"), Checked::Running);
    let dlq = fleet.backend.queue(&names::checks_dlq("w")).await.expect("dlq");
    dlq.send_one(OutgoingMessage { body: got[0].body.clone(), ..Default::default() }).await.expect("dead-letter");
    assert!(checks.delete_batch(&[got[0].receipt.clone()]).await.expect("delete").is_empty());
    // The operator redrives the checks DLQ: the copy is a new message, the same link.
    for pair in dead_letter_queues(fleet.layer.as_ref(), &fleet.config, Which::Checks).await.expect("dlqs") {
        redrive(&pair, &fleet.ledger, 10, 1).await.expect("redrive");
    }
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(60)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 1), "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn a_late_retry_of_the_pending_write_does_not_set_the_chain_of_checks_back() {
    let text = tasks(&[noop_task("slow", "pending_checks = 3, check_after_ms = 1000")]);
    let (fleet, layer) = Fleet::realistic(&text.to_string(), Realism::stale_reads(Duration::ZERO)).await;
    let store = layer.eventual_store("w").await.expect("store");
    // The first pending write is applied, its reply lost, and the SDK sends it again 2.5 s
    // later: after the first check (1 s) and the second (2 s) recorded their places.
    store.lose_reply_of_next(
        Box::new(|_, update| {
            update.set.get("status").and_then(|v| v.as_str()) == Some("PENDING")
                && update.set.get("checks").and_then(|v| v.as_i64()) == Some(0)
        }),
        Duration::from_millis(2500),
    );
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "first").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(60)).await;
    assert_eq!(store.lost_replies(), 1, "the reply was lost");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 3), "{record:?}");
}

#[tokio::test]
async fn a_check_delivered_twice_runs_once() {
    let dir = effects_dir("twice");
    let params =
        format!("pending_checks = 3, check_after_ms = 0, check_sleep_ms = 300, effects_dir = \"{}\"", dir.display());
    let realism = Realism { duplicates: 1.0, ..Realism::stale_reads(Duration::ZERO) };
    let text = tasks(&[noop_task("slow", &params)]);
    let (fleet, _layer) = Fleet::realistic(&text.to_string(), realism).await;
    let job = fleet.job("slow", "e", "i-1");
    fleet.send(&job, "first").await;
    fleet.run_until_final(std::slice::from_ref(&job), Some(4), Duration::from_secs(30)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.checks), (Status::Succeeded, 3), "{record:?}");
    let mut ran = checks_run(&dir, &job);
    ran.sort();
    assert_eq!(ran.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(), [1, 2, 3], "each check ran once: {ran:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pending_job_whose_task_a_deploy_removed_fails_in_the_ledger_and_runs_when_redriven() {
    let (fleet, layer, job) =
        pending(Realism::stale_reads(Duration::ZERO), "pending_checks = 1, check_after_ms = 500", &[]).await;
    // The next release renamed the task: its workers cannot check the job.
    let mut renamed = fleet.config.as_ref().clone();
    renamed.tasks.retain(|t| t.name != "slow");
    let renamed = std::sync::Arc::new(renamed);
    let (stop, handle) = fleet.start_configured(layer.clone(), renamed).await;
    wait_for(&fleet, &job, Status::Failed, Duration::from_secs(30)).await;
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert!(record.error.as_deref().is_some_and(|e| e.contains("can no longer be checked")), "{record:?}");
    let dead = fleet.dead_letters(job.partition);
    assert_eq!(dead.len(), 1, "{dead:?}");
    // The task is back (a rollback): the redrive reopens the job, and it runs.
    for pair in dead_letter_queues(fleet.layer.as_ref(), &fleet.config, Which::Jobs).await.expect("dlqs") {
        redrive(&pair, &fleet.ledger, 10, 1).await.expect("redrive");
    }
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(60)).await;
    assert_eq!(fleet.status(&job).await, Status::Succeeded);
}

/// The fleet's base config with SQS moving a message to its DLQ after `n` receives.
fn max_receives(n: u32, tasks: &str) -> String {
    format!(
        "{}{tasks}",
        support::BASE.replace("shutdown_grace_secs = 5", &format!("shutdown_grace_secs = 5\nmax_receive_count = {n}"))
    )
}

#[tokio::test]
async fn jobs_received_together_from_one_group_run_in_order_without_spending_receives() {
    let dir = effects_dir("group");
    let params = format!("sleep_ms = 20, effects_dir = \"{}\"", dir.display());
    // SQS returns as many messages of one group as it can per receive: ten jobs of one
    // resource come in one receive, and a queue that dead-letters after two receives.
    let fleet = Fleet::with(&max_receives(2, &tasks(&[noop_task("quick", &params)]).to_string())).await;
    let jobs: Vec<Job> = (0..10).map(|i| fleet.job("quick", &format!("e{i}"), "i-1")).collect();
    for job in &jobs {
        fleet.send_in_group(job, &job.resource.key(), &job.id).await;
    }
    fleet.run_until_final(&jobs, Some(4), Duration::from_secs(30)).await;
    for job in &jobs {
        assert_eq!(fleet.status(job).await, Status::Succeeded, "{}", job.id);
    }
    for p in 0..2 {
        assert!(fleet.dead_letters(p).is_empty(), "nothing was dead-lettered: {:?}", fleet.dead_letters(p));
    }
    let began: Vec<u64> = jobs
        .iter()
        .map(|job| {
            let text = std::fs::read_to_string(dir.join(&job.id)).expect("effect");
            serde_json::from_str::<serde_json::Value>(text.lines().next().expect("line")).expect("json")["began_ms"]
                .as_u64()
                .expect("began")
        })
        .collect();
    assert!(began.windows(2).all(|w| w[0] <= w[1]), "in the order they were sent: {began:?}");
}

#[tokio::test(start_paused = true)]
async fn a_handling_that_panics_is_dead_lettered_with_its_reason_not_stranded() {
    let fleet = Fleet::with(&max_receives(3, &tasks(&[noop_task("buggy", "panic_attempts = 100")]).to_string())).await;
    let job = fleet.job("buggy", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while fleet.dead_letters(job.partition).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the job was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = fleet.dead_letters(job.partition);
    assert!(dead[0].1.contains("panicked: noop: panicking in attempt"), "{dead:?}");
    stop.cancel();
    handle.await.expect("worker");
}

#[tokio::test(start_paused = true)]
async fn a_check_due_after_more_than_anyone_waits_is_kept_within_bounds() {
    let params = format!("pending_checks = 1, check_after_ms = {}", i64::MAX);
    let fleet = Fleet::new(&tasks(&[noop_task("forever", &params)]).to_string()).await;
    let job = fleet.job("forever", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    wait_for(&fleet, &job, Status::Pending, Duration::from_secs(30)).await;
    stop.cancel();
    handle.await.expect("worker");
    let checks = fleet.backend.embedded_queue(&names::checks_queue("w")).expect("checks").peek_bodies();
    assert_eq!(checks.len(), 1, "{checks:?}");
    let check = CheckMessage::from_json(&checks[0], 0).expect("check");
    assert!(check.wait_ms <= 7 * 86_400_000, "{check:?}");
}

#[tokio::test]
async fn a_job_retried_after_its_tasks_lock_changed_takes_the_lock_it_began_under() {
    let task = noop_task("t", "fail_attempts = 1").with("retries = 1").with("lock = \"{id}\"");
    let fleet = Fleet::new(&tasks(&[task]).to_string()).await;
    let job = fleet.job("t", "e", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fleet.ledger.job(&job.id).await.expect("ledger").is_none_or(|r| r.failures != 1) {
        assert!(tokio::time::Instant::now() < deadline, "the first attempt never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    // The next release locks the task by region: the retry still takes the item it began under.
    let mut changed = fleet.config.as_ref().clone();
    let at = changed.tasks.iter().position(|t| t.name == "t").expect("task");
    changed.tasks[at].lock = opsfleet_protocol::template::Template::parse("{region}").expect("template");
    let (stop, handle) =
        fleet.start_configured(std::sync::Arc::clone(&fleet.layer), std::sync::Arc::new(changed)).await;
    wait_for(&fleet, &job, Status::Succeeded, Duration::from_secs(20)).await;
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.attempts, record.lock.as_deref()), (2, Some("lock#i-1")), "{record:?}");
}
