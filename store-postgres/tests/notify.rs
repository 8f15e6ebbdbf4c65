//! Cross-process waiting: `LISTEN/NOTIFY` wakes a waiter in one pool when
//! another pool finishes the record.

mod common;

use std::time::Duration;

use bytes::Bytes;
use idempotency_core::{Claim, ClaimKind, IdempotencyStore, Outcome, claim_with_wait};
use idempotency_postgres::sqlx;
use tokio::time::Instant;

/// A 60 s lease and a 30 s wait: only a notification can end the wait early.
const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);
/// Far below both: a waiter that returns within this was woken.
const WOKEN_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completion_in_one_pool_wakes_a_waiter_in_another() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    let req = common::request(common::key(), 1, LEASE);
    let (lease, _) = common::acquire(&a, &req).await;
    let waiter = tokio::spawn({
        let b = b.clone();
        let req = req.clone();
        async move {
            let start = Instant::now();
            let claim = claim_with_wait(&b, &req, Some(WAIT)).await;
            (claim, start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.complete(&lease, common::value("done")).await.unwrap();
    let (claim, waited) = waiter.await.unwrap();
    match claim.unwrap() {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"done"))),
        other => panic!("{other:?}"),
    }
    assert!(
        waited < WOKEN_WITHIN,
        "woken by the notification, not the timeout: {waited:?}"
    );
    assert_eq!(b.waiting_keys(), 0, "waiters unregister");
}

/// A completion inside a transaction wakes waiters when it commits, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactional_completion_wakes_on_commit() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    let req = common::request(common::key(), 1, LEASE);
    let (lease, _) = common::acquire(&a, &req).await;
    let waiter = tokio::spawn({
        let b = b.clone();
        let req = req.clone();
        async move { claim_with_wait(&b, &req, Some(WAIT)).await }
    });
    let mut tx = a.pool().begin().await.unwrap();
    a.complete_in(&mut tx, &lease, common::value("tx"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "nothing is visible before commit");
    let committed = Instant::now();
    tx.commit().await.unwrap();
    let claim = waiter.await.unwrap().unwrap();
    assert!(matches!(claim, Claim::Completed(_)), "{claim:?}");
    assert!(committed.elapsed() < WOKEN_WITHIN);
}

/// Release and failure wake waiters too; a released key is acquired by the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_and_failure_wake_waiters() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    for release in [true, false] {
        let req = common::request(common::key(), 1, LEASE);
        let (lease, _) = common::acquire(&a, &req).await;
        let waiter = tokio::spawn({
            let b = b.clone();
            let req = req.clone();
            async move { claim_with_wait(&b, &req, Some(WAIT)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        if release {
            a.release(&lease).await.unwrap();
        } else {
            a.fail(&lease, idempotency_core::Failure::retryable("503"))
                .await
                .unwrap();
        }
        match waiter.await.unwrap().unwrap() {
            Claim::Acquired { kind, .. } => {
                assert_eq!(
                    kind,
                    if release {
                        ClaimKind::New
                    } else {
                        ClaimKind::Retry
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < WOKEN_WITHIN);
    }
}

/// The listener's connection is killed: it reconnects and later completions
/// still wake waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_reconnects_after_its_connection_is_killed() {
    let Some(admin) = common::pool().await else {
        return;
    };
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    // Start b's listener with a first wait.
    b.wait_for_change(&common::key(), Duration::from_millis(10))
        .await
        .unwrap();
    let listen = format!("LISTEN \"{}\"%", b.channel());
    let listeners = || async {
        sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_activity WHERE query LIKE $1")
            .bind(&listen)
            .fetch_all(&admin)
            .await
            .unwrap()
    };
    let old = listeners().await;
    assert_eq!(old.len(), 1, "one listener connection per store");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old[0])
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(killed);
    let req = common::request(common::key(), 1, LEASE);
    let (lease, _) = common::acquire(&a, &req).await;
    let waiter = tokio::spawn({
        let b = b.clone();
        let req = req.clone();
        async move { claim_with_wait(&b, &req, Some(WAIT)).await }
    });
    // Wait until the listener is back (a new backend) before completing.
    let mut back = false;
    for _ in 0..400 {
        let now = listeners().await;
        if now.len() == 1 && now[0] != old[0] {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(back, "the listener reconnected");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    a.complete(&lease, common::value("after reconnect"))
        .await
        .unwrap();
    assert!(matches!(
        waiter.await.unwrap().unwrap(),
        Claim::Completed(_)
    ));
    assert!(start.elapsed() < WOKEN_WITHIN);
}

/// A waiter dropped mid-wait unregisters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_unregister() {
    let Some(a) = common::store().await else {
        return;
    };
    let req = common::request(common::key(), 1, LEASE);
    common::acquire(&a, &req).await;
    let wait = a.wait_for_change(&req.key, WAIT);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), wait)
            .await
            .is_err()
    );
    assert_eq!(a.waiting_keys(), 0);
}
