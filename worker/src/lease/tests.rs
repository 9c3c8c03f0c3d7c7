use super::*;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::ports::Backend;

async fn leases() -> (Leases, Leases) {
    let backend = EmbeddedBackend::new();
    backend.ensure_table("t").await.expect("table");
    let store = backend.store("t").await.expect("store");
    // Two processes sharing one table.
    (Leases::new(Arc::clone(&store)), Leases::new(store))
}

const LEASE: Duration = Duration::from_secs(10);

async fn acquire(l: &Leases, owner: &str, watch: &mut Watch) -> Acquire {
    l.acquire("lock#r", owner, "job", LEASE, watch).await.expect("acquire")
}

#[tokio::test(start_paused = true)]
async fn a_held_lock_is_taken_over_only_after_its_version_stood_still_a_whole_lease_of_the_takers_clock() {
    let (a, b) = leases().await;
    let Acquire::Acquired(first) = acquire(&a, "w1", &mut Watch::default()).await else { panic!("free lock") };
    assert_eq!(first.fence, 1);
    let mut watch = Watch::default();
    match acquire(&b, "w2", &mut watch).await {
        Acquire::Held(holder) => assert_eq!((holder.owner.as_str(), holder.lease), ("w1", LEASE)),
        other => panic!("expected held, got {other:?}"),
    }
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Held(_)));
    tokio::time::advance(Duration::from_millis(2)).await;
    let Acquire::Acquired(second) = acquire(&b, "w2", &mut watch).await else { panic!("lapsed lease") };
    assert_eq!(second.fence, 2, "the fence increments on takeover");
    // The old holder can neither extend nor release any more.
    assert!(!a.heartbeat(&first, LEASE, false).await.expect("heartbeat"));
    assert!(!a.release(&first).await.expect("release"));
    assert!(b.heartbeat(&second, LEASE, false).await.expect("heartbeat"));
}

#[tokio::test(start_paused = true)]
async fn a_taker_that_first_sees_a_lease_late_still_waits_a_whole_lease() {
    let (a, b) = leases().await;
    let Acquire::Acquired(_) = acquire(&a, "w1", &mut Watch::default()).await else { panic!() };
    // The holder died long ago, as far as anyone's clock can tell: a taker that looks now
    // still counts a whole lease from its own first sighting.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let mut watch = Watch::default();
    assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Held(_)));
    tokio::time::advance(LEASE - Duration::from_millis(1)).await;
    assert!(!b.looks_free(&Wanted::Lock("lock#r".into()), &mut watch).await.expect("peek"));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(b.looks_free(&Wanted::Lock("lock#r".into()), &mut watch).await.expect("peek"));
    assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Acquired(_)));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_lease_however_long_and_release_keeps_the_fence() {
    let (a, b) = leases().await;
    let Acquire::Acquired(held) = acquire(&a, "w1", &mut Watch::default()).await else { panic!() };
    let mut watch = Watch::default();
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(a.heartbeat(&held, LEASE, false).await.expect("heartbeat"));
        assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Held(_)), "a live holder keeps its lease");
    }
    assert!(a.release(&held).await.expect("release"));
    let Acquire::Acquired(next) = acquire(&b, "w2", &mut watch).await else { panic!("released") };
    assert_eq!(next.fence, 2);
    assert!(b.release(&next).await.expect("release"));
    assert_eq!(b.fence("lock#r").await.expect("fence"), 2, "release keeps the fence");
}

#[tokio::test(start_paused = true)]
async fn a_second_acquisition_for_the_same_job_waits_for_the_first() {
    let (a, _) = leases().await;
    let Acquire::Acquired(first) = acquire(&a, "w1/job/1", &mut Watch::default()).await else { panic!() };
    match acquire(&a, "w1/job/2", &mut Watch::default()).await {
        Acquire::Held(holder) => assert_eq!(holder.job.as_deref(), Some("job")),
        other => panic!("a second delivery took the lease of the first: {other:?}"),
    }
    assert!(a.release(&first).await.expect("release"), "the first acquisition still holds it");
}

#[tokio::test(start_paused = true)]
async fn a_pending_lease_says_so_and_outlasts_its_stated_lease() {
    let (a, b) = leases().await;
    let Acquire::Acquired(held) = acquire(&a, "w1", &mut Watch::default()).await else { panic!() };
    assert!(a.heartbeat(&held, Duration::from_secs(3600), true).await.expect("hold"));
    let mut watch = Watch::default();
    let Acquire::Held(holder) = acquire(&b, "w2", &mut watch).await else { panic!("held") };
    assert!(holder.pending);
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Held(_)));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(acquire(&b, "w2", &mut watch).await, Acquire::Acquired(_)));
}

#[tokio::test(start_paused = true)]
async fn slots_admit_at_most_max_holders_per_pool() {
    let (a, b) = leases().await;
    let pool = pool_key("copy", "us-east-1");
    let mut held = Vec::new();
    for i in 0..3 {
        let slot = a
            .acquire_slot(
                &Pool { key: &pool, max: 3, expires_at: None },
                &format!("w{i}"),
                "j",
                LEASE,
                &mut Watch::default(),
            )
            .await;
        held.push(slot.expect("slot").expect("a free slot"));
    }
    let mut watch = Watch::default();
    let full = b
        .acquire_slot(&Pool { key: &pool, max: 3, expires_at: None }, "w9", "j", LEASE, &mut watch)
        .await
        .expect("slot");
    assert_eq!(full, None, "all three are held");
    let other = pool_key("copy", "eu-west-1");
    assert!(b
        .acquire_slot(&Pool { key: &other, max: 3, expires_at: None }, "w9", "j", LEASE, &mut Watch::default())
        .await
        .expect("slot")
        .is_some());
    assert!(a.release(&held[1]).await.expect("release"));
    assert!(b.looks_free(&Wanted::Slot { pool: pool.clone(), max: 3 }, &mut watch).await.expect("peek"));
    let again = b
        .acquire_slot(&Pool { key: &pool, max: 3, expires_at: None }, "w9", "j", LEASE, &mut watch)
        .await
        .expect("slot")
        .expect("freed slot");
    assert_eq!(again.sk, held[1].sk);
    // The other two holders stop heartbeating: a whole lease later they are taken over.
    let mut watch = Watch::default();
    assert_eq!(
        b.acquire_slot(&Pool { key: &pool, max: 3, expires_at: None }, "w10", "j", LEASE, &mut watch)
            .await
            .expect("slot"),
        None
    );
    tokio::time::advance(LEASE).await;
    assert!(b.heartbeat(&again, LEASE, false).await.expect("heartbeat"));
    let taken = b
        .acquire_slot(&Pool { key: &pool, max: 3, expires_at: None }, "w10", "j", LEASE, &mut watch)
        .await
        .expect("slot");
    assert!(taken.is_some_and(|s| s.sk != again.sk), "a lapsed slot is taken, never the live one");
}

#[tokio::test(start_paused = true)]
async fn a_release_wakes_this_processs_waiters() {
    let (a, _) = leases().await;
    let Acquire::Acquired(held) = acquire(&a, "w1", &mut Watch::default()).await else { panic!() };
    let waker = a.waker("lock#r");
    let notified = waker.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    assert!(a.release(&held).await.expect("release"));
    tokio::time::timeout(Duration::from_millis(1), notified).await.expect("woken by the release");
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_the_sdk_retried_after_its_first_try_went_through_is_its_own() {
    let (a, _) = leases().await;
    let Acquire::Acquired(first) = acquire(&a, "w1/job/1", &mut Watch::default()).await else { panic!() };
    // The same write again, with the same owner: it finds its own acquisition.
    let Acquire::Acquired(again) = acquire(&a, "w1/job/1", &mut Watch::default()).await else {
        panic!("a retried acquisition waited for itself")
    };
    assert_eq!(again, first);
}

#[tokio::test(start_paused = true)]
async fn slots_of_a_run_carry_the_ttl_they_are_given_and_locks_none() {
    let backend = EmbeddedBackend::new();
    backend.ensure_table("t").await.expect("table");
    let store = backend.store("t").await.expect("store");
    let l = Leases::new(Arc::clone(&store));
    let pool = pool_key("run", "r1");
    let slot = l
        .acquire_slot(
            &Pool { key: &pool, max: 2, expires_at: Some(1_900_000_000) },
            "w",
            "j",
            LEASE,
            &mut Watch::default(),
        )
        .await;
    let slot = slot.expect("slot").expect("free");
    let item = store.get(&Key::new(&slot.key, &slot.sk)).await.expect("get").expect("item");
    assert_eq!(item.int("expires_at"), Some(1_900_000_000));
    let Acquire::Acquired(lock) = acquire(&l, "w", &mut Watch::default()).await else { panic!() };
    let item = store.get(&Key::new(&lock.key, &lock.sk)).await.expect("get").expect("item");
    assert_eq!(item.int("expires_at"), None, "a lock's fence must never be reset by a TTL");
}
