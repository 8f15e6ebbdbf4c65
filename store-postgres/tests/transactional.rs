//! Completion inside the caller's transaction: business rows and the record
//! commit together or not at all.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idempotency_core::{
    Claim, ClaimKind, ClockControl, IdempotencyStore, Lease, Outcome, RecordState, StorageKey,
    StoreError,
};
use idempotency_postgres::PostgresStore;
use idempotency_postgres::sqlx::{self, AssertSqlSafe};

/// The application's own table, next to the store's in the test schema.
async fn orders_table(store: &PostgresStore) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {}.orders (id bigserial PRIMARY KEY, key bytea NOT NULL, note text NOT NULL)",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn orders(store: &PostgresStore, key: &StorageKey) -> Vec<String> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT note FROM {}.orders WHERE key = $1 ORDER BY id",
        store.schema()
    )))
    .bind(&key.as_bytes()[..])
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// What a handler does: write the order and complete the record on one
/// transaction. Returns the open transaction so the caller decides whether
/// it commits or "crashes".
async fn handle(
    store: &PostgresStore,
    lease: &Lease,
    note: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.orders (key, note) VALUES ($1, $2)",
        store.schema()
    )))
    .bind(&lease.key.as_bytes()[..])
    .bind(note)
    .execute(&mut *tx)
    .await
    .unwrap();
    store
        .complete_in(&mut tx, lease, common::value(note))
        .await?;
    Ok(tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_record_commit_together() {
    let Some(store) = common::store().await else {
        return;
    };
    orders_table(&store).await;
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(&store, &req).await;
    let tx = handle(&store, &lease, "order-1").await.unwrap();
    // Before commit, others see neither the order nor the completion, and a
    // duplicate is answered in flight at once, not after the transaction
    // that holds the record's row (the test itself holds it, so a claim
    // that waited would wait forever).
    assert!(orders(&store, &req.key).await.is_empty());
    let duplicate = tokio::time::timeout(Duration::from_secs(5), store.claim(&req))
        .await
        .expect("a duplicate is answered while the completing transaction is open");
    assert!(matches!(duplicate.unwrap(), Claim::InFlight { .. }));
    tx.commit().await.unwrap();
    assert_eq!(orders(&store, &req.key).await, ["order-1"]);
    match store.claim(&req).await.unwrap() {
        Claim::Completed(c) => {
            assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"order-1")));
        }
        other => panic!("{other:?}"),
    }
}

/// A handler whose transaction is dropped without commit (a crash) leaves no
/// rows and a PENDING record; after the lease a retry takes over and
/// completes exactly once; the crashed lease can never complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_is_taken_over_and_completed_once() {
    let Some(store) = common::store().await else {
        return;
    };
    orders_table(&store).await;
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (crashed, _) = common::acquire(&store, &req).await;
    let tx = handle(&store, &crashed, "attempt-1").await.unwrap();
    drop(tx); // the process dies before COMMIT

    assert!(
        orders(&store, &req.key).await.is_empty(),
        "no business rows"
    );
    let rec = store.get(&req.key).await.unwrap().expect("record");
    match rec.state {
        RecordState::Pending(p) => assert_eq!(p.token, crashed.token),
        other => panic!("expected the crashed lease still pending, got {other:?}"),
    }
    // Within the lease the duplicate is told to come back later.
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::InFlight { .. }
    ));

    store.advance(Duration::from_secs(11));
    let (retry, kind) = common::acquire(&store, &req).await;
    assert_eq!((kind, retry.attempt), (ClaimKind::Takeover, 2));
    assert!(retry.fence > crashed.fence);
    handle(&store, &retry, "attempt-2")
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert_eq!(orders(&store, &req.key).await, ["attempt-2"]);

    // The crashed worker comes back: its completion is refused and its
    // transaction (with its order) rolls back.
    let late = handle(&store, &crashed, "attempt-1-late").await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert_eq!(orders(&store, &req.key).await, ["attempt-2"]);
    match store.claim(&req).await.unwrap() {
        Claim::Completed(c) => {
            assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"attempt-2")));
        }
        other => panic!("{other:?}"),
    }
}

/// An explicit rollback behaves like the crash: nothing of the attempt stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_keeps_nothing() {
    let Some(store) = common::store().await else {
        return;
    };
    orders_table(&store).await;
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(&store, &req).await;
    handle(&store, &lease, "rolled-back")
        .await
        .unwrap()
        .rollback()
        .await
        .unwrap();
    assert!(orders(&store, &req.key).await.is_empty());
    // The lease is still the owner: it can complete on a later transaction.
    handle(&store, &lease, "second-try")
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert_eq!(orders(&store, &req.key).await, ["second-try"]);
}

/// A takeover racing an uncommitted `complete_in` waits for that
/// transaction: if it commits, the takeover becomes a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_waits_for_an_uncommitted_completion() {
    let Some(store) = common::store().await else {
        return;
    };
    orders_table(&store).await;
    let other = common::other_process(&store).await;
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(&store, &req).await;
    let tx = handle(&store, &lease, "slow").await.unwrap();
    // The lease runs out while the transaction is still open.
    other.advance(Duration::from_secs(11));
    let claim = tokio::spawn({
        let other = other.clone();
        let req = req.clone();
        async move { other.claim(&req).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !claim.is_finished(),
        "the takeover must wait for the row lock"
    );
    tx.commit().await.unwrap();
    match claim.await.unwrap().unwrap() {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"slow"))),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(orders(&store, &req.key).await, ["slow"]);
}

/// Many workers on two pools hammer the same keys with the transactional
/// pattern; each key's first attempt crashes before commit. Every key ends
/// with exactly one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_order_per_key_with_crashes() {
    let Some(a) = common::store().await else {
        return;
    };
    orders_table(&a).await;
    let b = common::other_process(&a).await;
    let keys: Vec<StorageKey> = (0..10).map(|_| common::key()).collect();
    let crashes = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        for w in 0..8 {
            let store = if (k + w) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let req = common::request(*key, 1, Duration::from_millis(300));
            let crashes = crashes.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..400 {
                    match store.claim(&req).await.expect("claim") {
                        Claim::Acquired { lease, .. } => {
                            let tx = handle(&store, &lease, &format!("attempt-{}", lease.attempt))
                                .await
                                .expect("owner completes");
                            if lease.attempt == 1 {
                                crashes.fetch_add(1, Ordering::SeqCst);
                                drop(tx);
                            } else {
                                tx.commit().await.unwrap();
                                return;
                            }
                        }
                        Claim::InFlight { .. } => {
                            store
                                .wait_for_change(&req.key, Duration::from_secs(2))
                                .await
                                .unwrap();
                        }
                        Claim::Completed(_) => return,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                panic!("key never completed");
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(crashes.load(Ordering::SeqCst), keys.len() as u32);
    let mut per_key = HashMap::new();
    for key in &keys {
        per_key.insert(*key, orders(&a, key).await);
    }
    for (key, notes) in per_key {
        assert_eq!(notes, ["attempt-2"], "key {key}");
    }
}
