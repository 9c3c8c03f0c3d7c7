//! The worker on the embedded backend: exactly-once effect, redelivery, poison jobs,
//! retries, limits, `max_errors`, per-resource order, reopening, metrics and graceful shutdown.

mod support;

use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::names;
use opsfleet_protocol::ports::{Backend, OutgoingMessage};
use opsfleet_protocol::Job;
use opsfleet_worker::ledger::Status;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_job_succeeds_once_and_its_redelivery_is_acknowledged_without_running() {
    let fleet = Fleet::new(NOOP).await;
    let job = fleet.job("quick", "e1", "i-1");
    fleet.send(&job, "first").await;
    let (stop, handle) = fleet.start(None).await;
    fleet.wait_final(std::slice::from_ref(&job), Duration::from_secs(10)).await;
    fleet.send(&job, "second").await;
    let queue = fleet.backend.embedded_queue(&names::jobs_queue("w", job.partition)).expect("queue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !queue.peek_bodies().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the redelivered job was not acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    handle.await.expect("worker");
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 1));
    let attempts = fleet.ledger.attempts(&job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "SUCCEEDED");
    assert_eq!(fleet.ledger.run(&job.run_id()).await.expect("run").succeeded, 1);
}

#[tokio::test]
async fn a_poison_job_fails_into_the_dlq_without_blocking_its_partition() {
    let fleet = Fleet::new(&format!("{NOOP}{}", &tasks(&[noop_task("poison", "fail_rate = 1.0"),]))).await;
    let poison = fleet.job("poison", "e1", "i-1");
    let partition = poison.partition;
    let good: Vec<Job> = (0..40)
        .map(|i| fleet.job("quick", "e1", &format!("i-{i}")))
        .filter(|j| j.partition == partition)
        .take(3)
        .collect();
    fleet.send(&poison, "p").await;
    for job in &good {
        fleet.send(job, &job.id).await;
    }
    let queue = fleet.backend.queue(&names::jobs_queue("w", partition)).await.expect("queue");
    queue
        .send_batch(&[OutgoingMessage {
            body: "garbage".into(),
            group_id: Some("g".into()),
            dedup_id: Some("g".into()),
            ..Default::default()
        }])
        .await
        .expect("send");
    let (stop, handle) = fleet.start(None).await;
    let mut all = good.clone();
    all.push(poison.clone());
    fleet.wait_final(&all, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    handle.await.expect("worker");
    assert_eq!(fleet.status(&poison).await, Status::Failed);
    for job in &good {
        assert_eq!(fleet.status(job).await, Status::Succeeded);
    }
    let dead = fleet.dead_letters(partition);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|(body, reason)| body.contains(&poison.id) && reason == "noop: fail_rate = 1"), "{dead:?}");
    assert!(dead.iter().any(|(body, reason)| body == "garbage" && reason.starts_with("not a job")), "{dead:?}");
    assert_eq!(fleet.ledger.run(&poison.run_id()).await.expect("run").failed, 1);
}

#[tokio::test]
async fn retryable_failures_retry_within_the_budget_and_fail_beyond_it() {
    let fleet = Fleet::new(&tasks(&[
        noop_task("flaky", "fail_attempts = 1").with("retries = 1"),
        noop_task("broken", "fail_attempts = 5").with("retries = 1"),
    ]))
    .await;
    let flaky = fleet.job("flaky", "e", "i-1");
    let broken = fleet.job("broken", "e", "i-2");
    fleet.send(&flaky, "f").await;
    fleet.send(&broken, "b").await;
    fleet.run_until_final(&[flaky.clone(), broken.clone()], None, Duration::from_secs(20)).await;
    let outcomes =
        |attempts: Vec<opsfleet_worker::ledger::Attempt>| attempts.into_iter().map(|a| a.outcome).collect::<Vec<_>>();
    assert_eq!(fleet.status(&flaky).await, Status::Succeeded);
    assert_eq!(outcomes(fleet.ledger.attempts(&flaky.id).await.expect("a")), ["RETRY", "SUCCEEDED"]);
    assert_eq!(fleet.status(&broken).await, Status::Failed);
    assert_eq!(outcomes(fleet.ledger.attempts(&broken.id).await.expect("a")), ["RETRY", "FAILED"]);
    let record = fleet.ledger.job(&broken.id).await.expect("ledger").expect("record");
    assert!(record.error.as_deref().is_some_and(|e| e.contains("over retries = 1")), "{record:?}");
}

#[tokio::test]
async fn a_limit_bounds_concurrent_holders() {
    let fleet = Fleet::new(&tasks(&[noop_task("limited", "sleep_ms = 150").with(r#"limit = "two""#)])).await;
    let jobs: Vec<Job> = (0..8).map(|i| fleet.job("limited", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, None, Duration::from_secs(30)).await;
    let mut intervals = Vec::new();
    for job in &jobs {
        for a in fleet.ledger.attempts(&job.id).await.expect("attempts") {
            intervals.push((a.started_ms, a.released_ms));
        }
    }
    assert_eq!(intervals.len(), 8);
    let peak = peak_overlap(&intervals);
    assert!(peak <= 2, "{peak} holders at once: {intervals:?}");
    assert_eq!(peak, 2, "the limit is used up to its maximum");
}

#[tokio::test]
async fn a_run_past_max_errors_cancels_its_remaining_jobs() {
    let fleet = Fleet::new(&tasks(&[noop_task("doomed", "fail_rate = 1.0").with("max_errors = 1")])).await;
    let jobs: Vec<Job> = (0..6).map(|i| fleet.job("doomed", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, Some(1), Duration::from_secs(20)).await;
    let run = fleet.ledger.run(&jobs[0].run_id()).await.expect("run");
    assert_eq!(run.failed, 2, "{run:?}");
    assert_eq!(run.cancelled, 4, "{run:?}");
    assert_eq!(run.cancelled_because.as_deref(), Some("run failed 2 jobs, over max_errors = 1"));
    let mut cancelled = 0;
    for job in &jobs {
        if fleet.status(job).await == Status::Cancelled {
            cancelled += 1;
            let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
            assert_eq!(record.error.as_deref(), Some("cancelled: run failed 2 jobs, over max_errors = 1"));
        }
    }
    assert_eq!(cancelled, 4);
}

#[tokio::test]
async fn max_errors_as_a_percentage_counts_the_share_of_the_runs_jobs() {
    let fleet = Fleet::new(&tasks(&[noop_task("doomed", "fail_rate = 1.0").with("max_errors = \"20%\"")])).await;
    let jobs: Vec<Job> =
        (0..10).map(|i| Job { run_size: Some(10), ..fleet.job("doomed", "e", &format!("i-{i}")) }).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    fleet.run_until_final(&jobs, Some(1), Duration::from_secs(20)).await;
    let run = fleet.ledger.run(&jobs[0].run_id()).await.expect("run");
    assert_eq!((run.failed, run.cancelled), (3, 7), "20 % of 10 jobs is 2 failures allowed: {run:?}");
    assert_eq!(run.cancelled_because.as_deref(), Some("run failed 3 jobs, over max_errors = 2"));
}

#[tokio::test]
async fn a_location_past_max_errors_per_location_is_cancelled_and_the_run_goes_on_elsewhere() {
    let task = noop_task("spread", "fail_in_regions = [\"us-east-1\"]").with("max_errors_per_location = 1");
    let fleet = Fleet::new(&tasks(&[task.with("max_concurrency_per_location = 1")])).await;
    let in_region = |i: usize, region: &str| {
        let mut job = fleet.job("spread", "e", &format!("i-{i}"));
        job.resource.region = region.to_owned();
        job.id = opsfleet_protocol::job::job_id("e", "spread", &job.resource.key());
        job
    };
    let failing: Vec<Job> = (0..5).map(|i| in_region(i, "us-east-1")).collect();
    let healthy: Vec<Job> = (5..9).map(|i| in_region(i, "eu-west-1")).collect();
    for job in failing.iter().chain(&healthy) {
        fleet.send(job, &job.id).await;
    }
    let all: Vec<Job> = failing.iter().chain(&healthy).cloned().collect();
    fleet.run_until_final(&all, Some(4), Duration::from_secs(20)).await;
    for job in &healthy {
        assert_eq!(fleet.status(job).await, Status::Succeeded, "the run went on in eu-west-1");
    }
    let mut cancelled = 0;
    for job in &failing {
        match fleet.status(job).await {
            Status::Failed => {}
            Status::Cancelled => {
                cancelled += 1;
                let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
                let error = record.error.unwrap_or_default();
                assert!(error.contains("in 123456789012/us-east-1, over max_errors_per_location = 1"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(cancelled >= 2, "the failing location's remaining jobs were cancelled ({cancelled})");
}

#[tokio::test]
async fn shutdown_lets_running_jobs_finish_and_leaves_the_rest_queued() {
    let fleet = Fleet::new(&tasks(&[noop_task("steady", "sleep_ms = 400")])).await;
    let jobs: Vec<Job> = (0..10).map(|i| fleet.job("steady", "e", &format!("i-{i}"))).collect();
    for job in &jobs {
        fleet.send(job, &job.id).await;
    }
    let (stop, handle) = fleet.start(Some(2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let summary =
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("within the grace").expect("worker");
    assert_eq!(summary.interrupted, 0);
    let mut done = 0;
    for job in &jobs {
        if let Some(r) = fleet.ledger.job(&job.id).await.expect("ledger") {
            assert_eq!(r.status, Status::Succeeded, "a started job finished");
            done += 1;
        }
    }
    assert_eq!(done, summary.handled, "{summary:?}");
    assert!((1..10).contains(&done), "{done} done");
    let mut queued = 0;
    for p in 0..2 {
        queued += fleet.backend.embedded_queue(&names::jobs_queue("w", p)).expect("q").peek_bodies().len();
    }
    assert_eq!(queued, 10 - done, "the rest stay queued, nothing lost");
    // A second worker finishes them.
    fleet.run_until_final(&jobs, None, Duration::from_secs(20)).await;
}

#[test]
fn metrics_count_finished_jobs_durations_in_flight_and_lock_results() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let fleet = Fleet::new(NOOP).await;
            let job = fleet.job("quick", "e1", "i-1");
            fleet.send(&job, "m").await;
            fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
        });
    });
    let text = handle.render();
    for line in [
        "opsfleet_jobs_finished_total{task=\"quick\",action=\"noop\",outcome=\"succeeded\"} 1",
        "opsfleet_lock_acquisitions_total{result=\"acquired\"} 1",
        "opsfleet_job_duration_seconds_count{action=\"noop\"} 1",
        "opsfleet_event_to_start_seconds_count{task=\"quick\"} 1",
        "opsfleet_jobs_in_flight 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn jobs_of_one_resource_in_one_batch_run_in_order() {
    // Each job takes a lock of its own, so only the FIFO group keeps them in order.
    let fleet = Fleet::new(&tasks(&[
        noop_task("first", "sleep_ms = 300").with(r#"lock = "{task}""#),
        noop_task("second", "").with(r#"lock = "{task}""#),
    ]))
    .await;
    let a = fleet.job("first", "e", "i-1");
    let b = fleet.job("second", "e", "i-1");
    let group = a.resource.key();
    fleet.send_in_group(&a, &group, "a").await;
    fleet.send_in_group(&b, &group, "b").await;
    fleet.run_until_final(&[a.clone(), b.clone()], None, Duration::from_secs(20)).await;
    let first = &fleet.ledger.attempts(&a.id).await.expect("attempts")[0];
    let second = &fleet.ledger.attempts(&b.id).await.expect("attempts")[0];
    assert!(second.started_ms >= first.released_ms, "second started before first finished: {first:?} {second:?}");
}

#[tokio::test]
async fn a_job_that_failed_for_good_runs_again_once_reopened() {
    let fleet = Fleet::new(&tasks(&[noop_task("once", "fail_attempts = 1").with("retries = 0")])).await;
    let job = fleet.job("once", "e", "i-1");
    fleet.send(&job, "first").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
    assert_eq!(fleet.status(&job).await, Status::Failed);
    assert!(!fleet.ledger.reopen("no-such-job").await.expect("reopen"), "only failed jobs reopen");
    assert!(fleet.ledger.reopen(&job.id).await.expect("reopen"));
    fleet.send(&job, "redriven").await;
    fleet.run_until_final(std::slice::from_ref(&job), None, Duration::from_secs(10)).await;
    let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
    assert_eq!((record.status, record.attempts), (Status::Succeeded, 2));
}
