//! Concurrent claims from two "processes" (separate pools) on one database.

mod common;

use std::time::Duration;

use idempotency_core::{Claim, ClaimKind, ClockControl, IdempotencyStore};

/// 64 concurrent claims of one key, split across two pools: exactly one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_across_two_pools() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    for _ in 0..5 {
        let req = common::request(common::key(), 1, Duration::from_secs(30));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let req = req.clone();
            tasks.push(tokio::spawn(async move { store.claim(&req).await }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap().expect("claim") {
                Claim::Acquired { lease, kind } => {
                    assert_eq!((kind, lease.attempt), (ClaimKind::New, 1));
                    winners += 1;
                }
                Claim::InFlight {
                    attempt,
                    retry_after,
                } => {
                    assert_eq!(attempt, 1);
                    assert!(retry_after <= Duration::from_secs(30));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners, 1);
    }
}

/// An expired lease taken over by 32 concurrent claimers on two pools: one
/// takeover (a greater fence), and the old owner is fenced off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_takeover_across_two_pools() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (old, _) = common::acquire(&a, &req).await;
    a.advance(Duration::from_secs(11));
    b.advance(Duration::from_secs(11));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let req = req.clone();
        tasks.push(tokio::spawn(async move { store.claim(&req).await }));
    }
    let mut takeovers = Vec::new();
    for t in tasks {
        match t.await.unwrap().expect("claim") {
            Claim::Acquired { lease, kind } => takeovers.push((lease, kind)),
            Claim::InFlight { attempt, .. } => assert_eq!(attempt, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(takeovers.len(), 1);
    let (lease, kind) = &takeovers[0];
    assert_eq!((*kind, lease.attempt), (ClaimKind::Takeover, 2));
    assert!(
        lease.fence > old.fence,
        "the takeover fences the old owner off"
    );
    assert!(matches!(
        a.complete(&old, common::value("stale")).await,
        Err(idempotency_core::StoreError::LeaseLost)
    ));
    b.complete(lease, common::value("fresh")).await.unwrap();
    assert!(matches!(a.claim(&req).await.unwrap(), Claim::Completed(_)));
}

/// A replay is one read-only statement: it neither writes nor locks the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_do_not_write_or_lock() {
    use idempotency_postgres::sqlx;
    let Some(store) = common::store().await else {
        return;
    };
    let req = common::request(common::key(), 1, Duration::from_secs(30));
    common::claim_and_complete(&store, &req, common::value("v")).await;
    let xmin = |store: idempotency_postgres::PostgresStore| async move {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "SELECT xmin::text FROM {}.records WHERE key = $1",
            store.schema()
        )))
        .bind(&req.key.as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    let before = xmin(store.clone()).await;
    // Another transaction holds the row lock: a replay must not wait for it.
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {}.records WHERE key = $1 FOR UPDATE",
        store.schema()
    )))
    .bind(&req.key.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    for _ in 0..10 {
        let claim = tokio::time::timeout(Duration::from_secs(5), store.claim(&req))
            .await
            .expect("a replay never waits on a row lock")
            .unwrap();
        assert!(matches!(claim, Claim::Completed(_)));
    }
    blocker.rollback().await.unwrap();
    assert_eq!(xmin(store.clone()).await, before, "a replay wrote the row");
}
