//! Waiting is not failing: jobs behind a held lock or a full limit wait for hours without
//! spending receives, at a cost per minute counted here, and start within moments of what
//! they wait for freeing.

mod support;

use opsfleet_loadtest::counting::{CountingBackend, Counts};
use opsfleet_protocol::config::fixture::{noop_task, tasks};
use opsfleet_protocol::ports::Backend;
use opsfleet_protocol::Job;
use opsfleet_worker::ledger::Status;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// The limit and the tasks every scenario here runs.
fn tasks_config() -> String {
    let limit = r#"
[limits.one]
max = 1

"#;
    format!(
        "{limit}{}",
        tasks(&[
            // Two hours pending: past the default deadline of an hour.
            noop_task("hold-limit", "pending_checks = 12, check_after_ms = 600000")
                .with(r#"limit = "one""#)
                .with("deadline_mins = 180"),
            noop_task("hold-lock", "pending_checks = 12, check_after_ms = 600000")
                .with(r#"lock = "shared""#)
                .with("deadline_mins = 180"),
            noop_task("after-limit", "").with(r#"limit = "one""#),
            noop_task("after-lock", "").with(r#"lock = "shared""#),
        ])
    )
}

/// What one scenario cost while the holders were pending.
struct Window {
    counts: Counts,
    minutes: f64,
}

/// Two holders keep a limit of one and a shared lock for two hours through pending checks;
/// `waiters` jobs of each kind wait behind them. Returns the window's cost and the fleet.
async fn scenario(waiters: usize) -> (Window, Fleet, Vec<Job>, Vec<Job>) {
    // Three receives would dead-letter a job that went back to its queue while waiting.
    let fleet =
        Fleet::with(&format!("{}{}", BASE.replace("[worker]", "[worker]\nmax_receive_count = 3"), tasks_config()))
            .await;
    let counting = CountingBackend::new(fleet.backend.clone());
    let holders = vec![fleet.job("hold-limit", "e", "i-1"), fleet.job("hold-lock", "e", "i-2")];
    for job in &holders {
        fleet.send(job, &job.id).await;
    }
    let backend: Arc<dyn Backend> = Arc::new(counting.clone());
    let (stop, handle) = fleet.start_on(backend, None, "w1").await;
    wait_status(&fleet, &holders, Status::Pending).await;
    let mut waiting = Vec::new();
    for i in 0..waiters {
        waiting.push(fleet.job("after-limit", "e", &format!("i-1{i}")));
        waiting.push(fleet.job("after-lock", "e", &format!("i-2{i}")));
    }
    for job in &waiting {
        fleet.send(job, &job.id).await;
    }
    // The window: 100 minutes in the middle of the holders' two hours.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (before, from) = (counting.counts(), tokio::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(100 * 60)).await;
    let window = Window { counts: counting.counts().since(&before), minutes: from.elapsed().as_secs_f64() / 60.0 };
    wait_status(&fleet, &holders, Status::Succeeded).await;
    fleet.wait_final(&waiting, Duration::from_secs(600)).await;
    stop.cancel();
    handle.await.expect("worker");
    (window, fleet, holders, waiting)
}

async fn wait_status(fleet: &Fleet, jobs: &[Job], status: Status) {
    for _ in 0..20_000 {
        let mut all = true;
        for job in jobs {
            all &= fleet.ledger.job(&job.id).await.expect("ledger").is_some_and(|r| r.status == status);
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("jobs never reached {status:?}");
}

fn attr(fleet_job: &opsfleet_worker::ledger::JobRecord, name: &str) -> i64 {
    fleet_job.attrs.get(name).and_then(|v| v.as_i64()).unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(start_paused = true)]
async fn jobs_wait_two_hours_behind_a_lock_and_a_limit_without_spending_receives() {
    const WAITERS: usize = 5;
    let (alone, ..) = scenario(0).await;
    let (busy, fleet, holders, waiting) = scenario(WAITERS).await;
    let started = fleet.ledger.job(&holders[0].id).await.expect("ledger").expect("record");
    let held_ms = attr(&started, "finished_ms") - attr(&started, "started_ms");
    assert!(held_ms >= 2 * 3600 * 1000, "the holders kept their leases for two hours: {held_ms} ms");

    // Nothing was dead-lettered, every waiter ran once, and it never went back to its queue.
    for p in 0..2 {
        assert!(fleet.dead_letters(p).is_empty(), "partition {p}: {:?}", fleet.dead_letters(p));
    }
    for job in &waiting {
        let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
        assert_eq!((record.status, record.attempts), (Status::Succeeded, 1), "{}: {record:?}", job.task);
    }

    // The first waiter of each kind started within moments of its holder finishing.
    for (holder, kind) in holders.iter().zip(["after-limit", "after-lock"]) {
        let done = attr(&fleet.ledger.job(&holder.id).await.expect("ledger").expect("record"), "finished_ms");
        let mut first = i64::MAX;
        for job in waiting.iter().filter(|j| j.task == kind) {
            let record = fleet.ledger.job(&job.id).await.expect("ledger").expect("record");
            first = first.min(attr(&record, "started_ms"));
        }
        let gap = first - done;
        println!("{kind}: the first waiter started {gap} ms after its holder finished");
        assert!((0..=3_000).contains(&gap), "{kind}: started {gap} ms after the holder finished");
    }

    // The cost of waiting: what the waiters added per minute, per waiting job.
    let jobs = (2 * WAITERS) as f64;
    let per = |f: fn(&Counts) -> u64| {
        (f(&busy.counts) as f64 / busy.minutes - f(&alone.counts) as f64 / alone.minutes) / jobs
    };
    // SQS: the visibility heartbeat of held messages (the tests long-poll every 20 ms, so
    // receives measure the test, not the wait).
    let visibility = |c: &Counts| c.by_operation.get("ChangeMessageVisibilityBatch").copied().unwrap_or(0);
    let (writes, eventual, strong, sqs) =
        (per(Counts::writes), per(Counts::eventual_reads), per(Counts::strong_reads), per(visibility));
    println!("without waiters: {:?}\nwith {} waiters: {:?}", alone.counts, 2 * WAITERS, busy.counts);
    println!(
        "per waiting job per minute: {writes:.3} DynamoDB writes, {eventual:.1} eventually consistent reads, \
         {strong:.3} strongly consistent reads, {sqs:.2} SQS visibility batches (visibility 10 s)"
    );
    assert!(writes < 0.05, "waiting costs {writes:.3} writes per job-minute: {:?}", busy.counts);
    assert!(strong < 0.05, "waiting costs {strong:.3} strong reads per job-minute: {:?}", busy.counts);
    assert!(eventual <= 31.0, "waiting polls at most every 2 s: {eventual:.1} reads per job-minute");
}
