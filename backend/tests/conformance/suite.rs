//! The conformance suite: the queue and store semantics opsfleet relies on, run against the
//! embedded backend and against SQS/DynamoDB (the emulator in tests), so the two cannot drift.
//! Each check creates its own uniquely named queues and table from `prefix`.
//!
//! Where the emulator departs from AWS, the suite asserts neither: moto compares numbers with
//! strings in conditions (DynamoDB says false) and takes more than ten message attributes
//! (SQS refuses; the embedded queue refuses too).

use opsfleet_protocol::ports::{
    AttrValue, Attrs, Backend, Cond, IndexQuery, Item, Key, OutgoingMessage, Queue, QueueSpec, StoreError, Update,
    INDEXES,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

async fn queue(
    backend: &dyn Backend,
    name: &str,
    visibility: u64,
    dead_letter: Option<(String, u32)>,
) -> Arc<dyn Queue> {
    let spec =
        QueueSpec { name: name.to_owned(), visibility: Duration::from_secs(visibility), retention: DAY, dead_letter };
    backend.ensure_queue(&spec).await.expect("create queue");
    backend.ensure_queue(&spec).await.expect("creating again is idempotent");
    backend.queue(name).await.expect("open queue")
}

fn message(body: &str) -> OutgoingMessage {
    OutgoingMessage { body: body.to_owned(), ..Default::default() }
}

fn fifo(body: &str, group: &str, dedup: &str) -> OutgoingMessage {
    OutgoingMessage {
        body: body.to_owned(),
        group_id: Some(group.into()),
        dedup_id: Some(dedup.into()),
        ..Default::default()
    }
}

/// Send, receive with attributes, visibility expiry and receive counts, change of visibility,
/// delete, and a missing queue.
pub async fn queue_basics(backend: &dyn Backend, prefix: &str) {
    let q = queue(backend, &format!("{prefix}-basic"), 30, None).await;
    let mut m = message("hello");
    m.attributes = BTreeMap::from([("opsfleet-reason".to_owned(), "because".to_owned())]);
    assert!(q.send_batch(&[m, message("world")]).await.expect("send").is_empty());
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(q.receive(10, Duration::from_secs(1), Some(Duration::from_secs(1))).await.expect("receive"));
        if got.len() == 2 {
            break;
        }
    }
    let mut bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["hello", "world"]);
    let hello = got.iter().find(|m| m.body == "hello").expect("hello");
    assert_eq!(hello.attributes.get("opsfleet-reason").map(String::as_str), Some("because"));
    assert_eq!(hello.receive_count, 1);
    assert!(hello.sent_ms > 0);
    // Nothing is visible while both are in flight.
    assert!(q.receive(10, Duration::ZERO, None).await.expect("receive").is_empty());
    // After the 1 s visibility both come back, with receive count 2.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = q.receive(10, Duration::from_secs(2), Some(Duration::from_secs(30))).await.expect("receive");
    assert!(!again.is_empty());
    assert!(again.iter().all(|m| m.receive_count == 2), "{again:?}");
    // Visibility 0 returns a message at once.
    q.change_visibility(&again[0].receipt, Duration::ZERO).await.expect("change visibility");
    let back = q.receive(1, Duration::from_secs(2), Some(Duration::from_secs(30))).await.expect("receive");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, again[0].body);
    assert_eq!(back[0].receive_count, 3);
    let mut receipts: Vec<String> = again.iter().skip(1).map(|m| m.receipt.clone()).collect();
    receipts.push(back[0].receipt.clone());
    // A batch visibility change: a good receipt is extended, a made-up one is the sender's
    // fault and fails alone.
    let changed = q
        .change_visibility_batch(&[
            (back[0].receipt.clone(), Duration::from_secs(60)),
            ("nonsense".into(), Duration::ZERO),
        ])
        .await
        .expect("change visibility batch");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].index, 1);
    assert!(changed[0].sender_fault, "{changed:?}");
    assert!(q.delete_batch(&receipts).await.expect("delete").is_empty());
    let depth = q.depth().await.expect("depth");
    assert_eq!(depth.visible + depth.in_flight, (2 - receipts.len()) as u64);
    assert!(matches!(
        backend.queue(&format!("{prefix}-missing")).await.err(),
        Some(opsfleet_protocol::ports::QueueError::NotFound { .. })
    ));
}

/// A message received more than `maxReceiveCount` times moves to the dead-letter queue with
/// its body and attributes.
pub async fn queue_redrive(backend: &dyn Backend, prefix: &str) {
    let dlq_name = format!("{prefix}-redrive-dlq");
    let dlq = queue(backend, &dlq_name, 30, None).await;
    let q = queue(backend, &format!("{prefix}-redrive"), 30, Some((dlq_name, 2))).await;
    let mut m = message("poison");
    m.attributes.insert("opsfleet-reason".into(), "test".into());
    assert!(q.send_batch(&[m]).await.expect("send").is_empty());
    for attempt in 1..=2 {
        let got = q.receive(1, Duration::from_secs(2), Some(Duration::from_secs(1))).await.expect("receive");
        assert_eq!(got.len(), 1, "receive {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(q.receive(1, Duration::from_secs(1), None).await.expect("receive").is_empty());
    let dead = dlq.receive(1, Duration::from_secs(2), None).await.expect("receive dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    assert_eq!(dead[0].attributes.get("opsfleet-reason").map(String::as_str), Some("test"));
}

/// FIFO: a group with a message in flight delivers nothing more; other groups still flow;
/// a deduplication id is honoured; a group id is required.
pub async fn queue_fifo(backend: &dyn Backend, prefix: &str) {
    let q = queue(backend, &format!("{prefix}-groups.fifo"), 30, None).await;
    let sent = q
        .send_batch(&[
            fifo("a1", "A", "d-a1"),
            fifo("a2", "A", "d-a2"),
            fifo("b1", "B", "d-b1"),
            fifo("a1-again", "A", "d-a1"),
        ])
        .await
        .expect("send");
    assert!(sent.is_empty(), "{sent:?}");
    let first = q.receive(1, Duration::from_secs(1), None).await.expect("receive");
    assert_eq!(first.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!(first[0].group_id.as_deref(), Some("A"));
    let second = q.receive(10, Duration::from_secs(1), None).await.expect("receive");
    assert_eq!(
        second.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["b1"],
        "group A is blocked while a1 is in flight"
    );
    assert!(q.delete_batch(&[first[0].receipt.clone()]).await.expect("delete").is_empty());
    let third = q.receive(10, Duration::from_secs(1), None).await.expect("receive");
    assert_eq!(third.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["a2"], "a1-again was deduplicated");
    let refused = q.send_batch(&[OutgoingMessage { body: "x".into(), ..Default::default() }]).await;
    match refused {
        Ok(failures) => assert_eq!(failures.len(), 1, "a FIFO message without a group is refused"),
        Err(e) => assert!(e.to_string().contains("MessageGroupId"), "{e}"),
    }
}

/// FIFO: what one receive brings of a group comes in order, however many it brings (SQS brings
/// as many as it can, the embedded queue too, fauxqs one), and across receives the group's
/// order holds.
pub async fn queue_fifo_in_order(backend: &dyn Backend, prefix: &str) {
    let q = queue(backend, &format!("{prefix}-order.fifo"), 30, None).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(fifo(&format!("a{i}"), "A", &format!("d-a{i}")));
    }
    sent.push(fifo("b0", "B", "d-b0"));
    assert!(q.send_batch(&sent[..7]).await.expect("send").is_empty());
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..20 {
        let got = q.receive(10, Duration::from_secs(1), None).await.expect("receive");
        seen.extend(got.iter().map(|m| m.body.clone()));
        let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
        if !receipts.is_empty() {
            assert!(q.delete_batch(&receipts).await.expect("delete").is_empty());
        }
        if seen.len() == 7 {
            break;
        }
    }
    let a: Vec<&str> = seen.iter().map(String::as_str).filter(|b| b.starts_with('a')).collect();
    assert_eq!(a, ["a0", "a1", "a2", "a3", "a4", "a5"], "group A in order: {seen:?}");
    assert!(seen.iter().any(|b| b == "b0"), "{seen:?}");
}

/// Per-message delay on a standard queue.
pub async fn queue_delay(backend: &dyn Backend, prefix: &str) {
    let q = queue(backend, &format!("{prefix}-delay"), 30, None).await;
    let mut m = message("later");
    m.delay = Some(Duration::from_secs(2));
    assert!(q.send_batch(&[m]).await.expect("send").is_empty());
    assert!(q.receive(1, Duration::ZERO, None).await.expect("receive").is_empty());
    assert_eq!(q.depth().await.expect("depth").delayed, 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let got = q.receive(1, Duration::from_secs(2), None).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "later");
}

/// Conditional put, update and delete, numeric adds, comparisons and prefix queries.
pub async fn store_semantics(backend: &dyn Backend, prefix: &str) {
    let table = format!("{prefix}-table");
    backend.ensure_table(&table).await.expect("create table");
    backend.ensure_table(&table).await.expect("creating again is idempotent");
    let store = backend.store(&table).await.expect("open table");
    let key = Key::new("lock#r1", "lock");
    let item = Item { key: key.clone(), attrs: [("owner".to_owned(), AttrValue::from("w1"))].into() };
    store.put(item.clone(), Cond::NotExists).await.expect("first put");
    assert!(matches!(store.put(item, Cond::NotExists).await, Err(StoreError::ConditionFailed { .. })));
    let updated = store
        .update(&key, Update::default().set("lease_until", 100i64).add("fence", 1), Cond::eq("owner", "w1"))
        .await
        .expect("update");
    assert_eq!(updated.int("fence"), Some(1));
    assert_eq!(updated.str("owner"), Some("w1"));
    let updated = store
        .update(
            &key,
            Update::default().set("owner", "w2").add("fence", 1),
            Cond::Or(vec![Cond::Lacks("owner".into()), Cond::lt("lease_until", 101i64)]),
        )
        .await
        .expect("take over an expired lease");
    assert_eq!(updated.int("fence"), Some(2));
    let refused = store.update(&key, Update::default().set("owner", "w3"), Cond::lt("lease_until", 100i64)).await;
    // A refused write says what the item was, so the writer needs no second read.
    match refused {
        Err(StoreError::ConditionFailed { current: Some(item), .. }) => {
            assert_eq!((item.str("owner"), item.int("fence")), (Some("w2"), Some(2)), "{item:?}")
        }
        other => panic!("a refused write returns the item: {other:?}"),
    }
    assert_eq!(store.peek(&key).await.expect("peek").and_then(|i| i.int("fence")), Some(2));
    // "Missing or different": holds on a missing attribute and on another value only.
    let token = |t: &str| Update::default().set("token", t);
    store.update(&key, token("a"), Cond::missing_or_not("token", "a")).await.expect("missing");
    store.update(&key, token("b"), Cond::missing_or_not("token", "b")).await.expect("different");
    let same = store.update(&key, token("b"), Cond::missing_or_not("token", "b")).await;
    assert!(matches!(same, Err(StoreError::ConditionFailed { .. })), "{same:?}");
    let updated = store
        .update(
            &key,
            Update::default().remove("owner"),
            Cond::And(vec![Cond::eq("owner", "w2"), Cond::eq("fence", 2i64)]),
        )
        .await
        .expect("release");
    assert_eq!(updated.str("owner"), None);
    assert_eq!(store.get(&key).await.expect("get").expect("still there").int("fence"), Some(2));
    // Conditions nest as the ledger builds them: one-element groups, `Always` inside a group.
    let nested = Cond::And(vec![
        Cond::And(vec![Cond::eq("fence", 2i64)]),
        Cond::Or(vec![Cond::And(vec![Cond::Or(vec![Cond::Lacks("checks".into()), Cond::eq("checks", 0i64)])])]),
        Cond::Or(vec![Cond::Always]),
    ]);
    let updated = store.update(&key, Update::default().set("checks", 1i64), nested.clone()).await.expect("nested");
    assert_eq!(updated.int("checks"), Some(1));
    let refused = store.update(&key, Update::default().set("checks", 2i64), nested).await;
    assert!(matches!(refused, Err(StoreError::ConditionFailed { .. })), "{refused:?}");
    let created = store
        .update(&Key::new("run#1", "run"), Update::default().add("failed", 1), Cond::Always)
        .await
        .expect("upsert");
    assert_eq!(created.int("failed"), Some(1));
    for sk in ["attempt#002", "attempt#001", "job", "zeta"] {
        let item = Item { key: Key::new("job#7", sk), attrs: [("flag".to_owned(), AttrValue::Bool(true))].into() };
        store.put(item, Cond::Always).await.expect("put");
    }
    let attempts = store.query_prefix("job#7", "attempt#").await.expect("query");
    assert_eq!(attempts.iter().map(|i| i.key.sk.as_str()).collect::<Vec<_>>(), ["attempt#001", "attempt#002"]);
    assert_eq!(attempts[0].attrs.get("flag"), Some(&AttrValue::Bool(true)));
    assert_eq!(store.query_prefix("job#7", "").await.expect("query").len(), 4);
    assert_eq!(store.peek_prefix("job#7", "attempt#").await.expect("peek query").len(), 2);
    assert!(matches!(store.delete(&key, Cond::eq("owner", "nobody")).await, Err(StoreError::ConditionFailed { .. })));
    store.delete(&key, Cond::Exists).await.expect("delete");
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(matches!(backend.store(&format!("{prefix}-missing")).await.err(), Some(StoreError::NotFound { .. })));
}

/// The secondary indexes: keys of the items whose attribute matches, newest first, cut by
/// `since` and `limit`; items lacking the attribute (a sparse index) are not in it, and an
/// item whose attribute goes away leaves it.
pub async fn store_indexes(backend: &dyn Backend, prefix: &str) {
    let table = format!("{prefix}-indexed");
    backend.ensure_table(&table).await.expect("create table");
    let store = backend.store(&table).await.expect("open table");
    let [by_resource, by_task, by_status, _] = INDEXES;
    let job = |n: i64, resource: &str, task: &str, open: Option<&str>| {
        let mut attrs: Attrs = [
            (by_resource.key.to_owned(), AttrValue::from(resource)),
            (by_task.key.to_owned(), AttrValue::from(task)),
            (by_resource.order.to_owned(), AttrValue::from(1_000 + n)),
        ]
        .into();
        if let Some(status) = open {
            attrs.insert(by_status.key.to_owned(), status.into());
        }
        Item { key: Key::new(format!("job#{n}"), "job"), attrs }
    };
    for item in [
        job(1, "i-1", "backup", Some("FAILED")),
        job(2, "i-2", "backup", None),
        job(3, "i-1", "reboot", Some("IN_PROGRESS")),
        job(4, "i-1", "backup", None),
        job(5, "vol-9", "backup", Some("FAILED")),
    ] {
        store.put(item, Cond::Always).await.expect("put");
    }
    // Not a job: it has the order attribute but none of the keys.
    let attempt = Item {
        key: Key::new("job#1", "attempt#0001"),
        attrs: [(by_resource.order.to_owned(), 5_000i64.into())].into(),
    };
    store.put(attempt, Cond::Always).await.expect("put");
    let query = |index, value: &str, since, limit| IndexQuery { index, value: value.to_owned(), since, limit };
    let pks = |keys: Vec<Key>| keys.into_iter().map(|k| k.pk).collect::<Vec<_>>();
    // Indexes are eventually consistent: wait (a little) for the last write to show.
    let mut found = Vec::new();
    for _ in 0..50 {
        found = pks(store.query_index(&query(by_resource, "i-1", None, 10)).await.expect("query"));
        if found.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, ["job#4", "job#3", "job#1"], "newest first");
    assert_eq!(
        pks(store.query_index(&query(by_resource, "i-1", Some(1_003), 10)).await.expect("q")),
        ["job#4", "job#3"]
    );
    assert_eq!(pks(store.query_index(&query(by_resource, "i-1", None, 1)).await.expect("q")), ["job#4"]);
    assert_eq!(pks(store.query_index(&query(by_task, "backup", None, 10)).await.expect("q")).len(), 4);
    assert_eq!(pks(store.query_index(&query(by_status, "FAILED", None, 10)).await.expect("q")), ["job#5", "job#1"]);
    assert!(store.query_index(&query(by_resource, "i-404", None, 10)).await.expect("q").is_empty());
    // The job leaves the sparse index when its attribute goes.
    store.update(&Key::new("job#5", "job"), Update::default().remove(by_status.key), Cond::Exists).await.expect("u");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = pks(store.query_index(&query(by_status, "FAILED", None, 10)).await.expect("query"));
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, ["job#1"]);
}
