use super::*;
use opsfleet_backend::EmbeddedBackend;
use opsfleet_protocol::ports::Backend;

async fn leases() -> Leases {
    let backend = EmbeddedBackend::new();
    backend.ensure_table("t").await.expect("table");
    Leases::new(backend.store("t").await.expect("store"), Clock::starting_at(1_000_000))
}

const LEASE: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn a_held_lock_is_refused_until_its_lease_lapses() {
    let l = leases().await;
    let Acquire::Acquired(a) = l.acquire("lock#r", "w1", LEASE).await.expect("acquire") else { panic!("free lock") };
    assert_eq!(a.fence, 1);
    match l.acquire("lock#r", "w2", LEASE).await.expect("acquire") {
        Acquire::Held { by, until } => assert_eq!((by.as_str(), until), ("w1", 1_010_000)),
        other => panic!("expected held, got {other:?}"),
    }
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(matches!(l.acquire("lock#r", "w2", LEASE).await.expect("acquire"), Acquire::Held { .. }));
    tokio::time::advance(Duration::from_millis(2)).await;
    let Acquire::Acquired(b) = l.acquire("lock#r", "w2", LEASE).await.expect("acquire") else { panic!("lapsed lease") };
    assert_eq!(b.fence, 2, "the fence increments on takeover");
    // The old holder can neither extend nor release any more.
    assert!(!l.heartbeat(&a, LEASE).await.expect("heartbeat"));
    assert!(!l.release(&a).await.expect("release"));
    assert!(l.heartbeat(&b, LEASE).await.expect("heartbeat"));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_lease_and_release_frees_it_without_resetting_the_fence() {
    let l = leases().await;
    let Acquire::Acquired(a) = l.acquire("lock#r", "w1", LEASE).await.expect("acquire") else { panic!() };
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.heartbeat(&a, LEASE).await.expect("heartbeat"));
        assert!(matches!(l.acquire("lock#r", "w2", LEASE).await.expect("acquire"), Acquire::Held { .. }));
    }
    assert!(l.release(&a).await.expect("release"));
    let Acquire::Acquired(b) = l.acquire("lock#r", "w2", LEASE).await.expect("acquire") else { panic!("released") };
    assert_eq!(b.fence, 2);
    assert!(l.release(&b).await.expect("release"));
    assert_eq!(l.fence("lock#r").await.expect("fence"), 2, "release keeps the fence");
}

#[tokio::test(start_paused = true)]
async fn the_same_owner_reacquires_with_a_new_fence() {
    let l = leases().await;
    let Acquire::Acquired(a) = l.acquire("lock#r", "w1/job", LEASE).await.expect("acquire") else { panic!() };
    let Acquire::Acquired(b) = l.acquire("lock#r", "w1/job", LEASE).await.expect("acquire") else { panic!("mine") };
    assert_eq!(b.fence, a.fence + 1);
    assert!(!l.release(&a).await.expect("release"), "the older acquisition is stale");
}

#[tokio::test(start_paused = true)]
async fn slots_admit_at_most_max_holders_per_pool() {
    let l = leases().await;
    let mut held = Vec::new();
    for i in 0..3 {
        let slot = l.acquire_slot("copy", "us-east-1", 3, &format!("w{i}"), LEASE).await.expect("slot");
        held.push(slot.expect("a free slot"));
    }
    assert_eq!(l.acquire_slot("copy", "us-east-1", 3, "w9", LEASE).await.expect("slot"), None, "all three are held");
    assert!(l.acquire_slot("copy", "eu-west-1", 3, "w9", LEASE).await.expect("slot").is_some(), "pools are separate");
    assert!(l.release(&held[1]).await.expect("release"));
    let again = l.acquire_slot("copy", "us-east-1", 3, "w9", LEASE).await.expect("slot").expect("freed slot");
    assert_eq!(again.key, held[1].key);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(
        l.acquire_slot("copy", "us-east-1", 3, "w10", LEASE).await.expect("slot").is_some(),
        "lapsed slots are free"
    );
}
