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

/// Only a record somebody waits on is notified: a completion nobody waits
/// for commits without `NOTIFY` (which would serialise its commit with every
/// other notifying commit), and one with a waiter notifies and wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_watched_record_is_notified() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(a.pool())
        .await
        .unwrap();
    listener.listen(a.channel()).await.unwrap();

    // Nobody waits: completed without a notification.
    let quiet = common::request(common::key(), 1, LEASE);
    let (lease, _) = common::acquire(&a, &quiet).await;
    a.complete(&lease, common::value("quiet")).await.unwrap();

    // A waiter in another pool marks the record; its completion notifies.
    let watched = common::request(common::key(), 1, LEASE);
    let (lease, _) = common::acquire(&a, &watched).await;
    let waiter = tokio::spawn({
        let b = b.clone();
        let req = watched.clone();
        async move { claim_with_wait(&b, &req, Some(WAIT)).await }
    });
    let marked = format!(
        "SELECT watched FROM \"{}\".records WHERE key = $1",
        a.schema()
    );
    let deadline = Instant::now() + WOKEN_WITHIN;
    loop {
        let is: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(marked.clone()))
            .bind(&watched.key.as_bytes()[..])
            .fetch_one(a.pool())
            .await
            .unwrap();
        if is {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never marked the record"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.complete(&lease, common::value("watched")).await.unwrap();
    match tokio::time::timeout(WOKEN_WITHIN, waiter).await {
        Ok(Ok(Ok(Claim::Completed(_)))) => {}
        other => panic!("the waiter was not woken with the outcome: {other:?}"),
    }
    // Notifications arrive in commit order: had the quiet completion
    // notified, its key would come first.
    let first = tokio::time::timeout(WOKEN_WITHIN, listener.recv())
        .await
        .expect("the watched completion notified")
        .unwrap();
    assert_eq!(first.payload(), watched.key.to_hex());
    // The record nobody waited on was never marked.
    let again: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(marked))
        .bind(&quiet.key.as_bytes()[..])
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert!(!again, "nobody waited on the quiet record");
}

/// Waiters marking a record race its completion, over and over: the first
/// waiter of a process marks it, the second relies on that mark, a waiter
/// of a third pool marks it too, and the completion lands before, during or
/// after the marks. No waiter is ever left for its 30 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_racing_the_completion_are_never_stranded() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    let c = common::other_process(&a).await;
    for round in 0u64..60 {
        let req = common::request(common::key(), 1, LEASE);
        let (lease, _) = common::acquire(&a, &req).await;
        let waiters: Vec<_> = [&b, &b, &c]
            .into_iter()
            .map(|store| {
                let store = store.clone();
                let req = req.clone();
                tokio::spawn(async move { claim_with_wait(&store, &req, Some(WAIT)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(round % 5 * 700)).await;
        a.complete(&lease, common::value("done")).await.unwrap();
        for w in waiters {
            match tokio::time::timeout(WOKEN_WITHIN, w).await {
                Ok(Ok(Ok(Claim::Completed(_)))) => {}
                other => panic!("round {round}: a waiter was stranded: {other:?}"),
            }
        }
    }
    assert_eq!(b.waiting_keys(), 0);
    assert_eq!(c.waiting_keys(), 0);
}
