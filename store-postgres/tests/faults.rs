//! Faults: an unreachable database, a connection killed mid-way, statement
//! timeouts, and stored outcomes that cannot be decoded.

mod common;

use std::time::Duration;

use idempotency_core::{
    Claim, ClaimKind, ClockControl, IdempotencyStore, PurgeExpired, RecordState, Resolution,
    StoreError,
};
use idempotency_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use idempotency_postgres::sqlx::{self, AssertSqlSafe};
use idempotency_postgres::{PostgresStore, SetupError};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.is_transient());
            assert!(
                std::error::Error::source(&e).is_some(),
                "{what}: source kept"
            );
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// Every operation against a closed port is `Unavailable`, never a panic.
#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let store = PostgresStore::builder()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!(
            "postgres://postgres@127.0.0.1:{}/test",
            closed_port()
        ))
        .unwrap();
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    assert_unavailable(store.claim(&req).await, "claim");
    assert_unavailable(store.get(&req.key).await, "get");
    assert_unavailable(
        store
            .mark_corrupted(&req.key, idempotency_core::Observed::completed(1), "x")
            .await,
        "mark_corrupted",
    );
    assert_unavailable(store.resolve(&req.key, Resolution::Delete).await, "resolve");
    assert_unavailable(store.purge_expired(10).await, "purge");
    assert_unavailable(
        store
            .wait_for_change(&req.key, Duration::from_millis(100))
            .await,
        "wait_for_change",
    );
    match store.migrate().await {
        Err(SetupError::Store(StoreError::Unavailable { .. })) => {}
        other => panic!("migrate: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_urls_and_schemas_are_setup_errors() {
    assert!(matches!(
        PostgresStore::builder().connect_lazy("postgres://127.0.0.1:notaport/x"),
        Err(SetupError::InvalidUrl { .. })
    ));
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://127.0.0.1/x")
        .unwrap();
    assert!(matches!(
        PostgresStore::builder()
            .schema("Robert'); DROP TABLE x;--")
            .build(pool),
        Err(SetupError::InvalidSchema { .. })
    ));
}

async fn terminate(admin: &sqlx::PgPool, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed);
    // Let the server's goodbye reach the socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The server kills the pool's idle connection: the next operation is
/// `Unavailable`, nothing is half-written, and the store recovers on a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_is_unavailable_then_recovers() {
    let Some(admin) = common::pool().await else {
        return;
    };
    let Some(base) = common::store().await else {
        return;
    };
    let one = common::pool_with(
        PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false),
    )
    .await
    .unwrap();
    let store = PostgresStore::builder()
        .schema(base.schema())
        .build(one.clone())
        .unwrap();
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(&store, &req).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&one)
        .await
        .unwrap();
    // The connection is back in the pool (checked on release) before it dies.
    for _ in 0..100 {
        if one.num_idle() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(one.num_idle(), 1);
    terminate(&admin, pid).await;
    assert_unavailable(store.complete(&lease, common::value("v")).await, "complete");
    // Nothing half-written: the record is still the pending lease.
    match base.get(&req.key).await.unwrap().unwrap().state {
        RecordState::Pending(p) => assert_eq!(p.token, lease.token),
        other => panic!("{other:?}"),
    }
    // A new connection: the same lease completes.
    store.complete(&lease, common::value("v")).await.unwrap();
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::Completed(_)
    ));
}

/// The connection of a caller's transaction dies before `complete_in`:
/// `Unavailable`, and the record stays pending for a takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_transaction_connection_is_unavailable() {
    let Some(admin) = common::pool().await else {
        return;
    };
    let Some(store) = common::store().await else {
        return;
    };
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(&store, &req).await;
    let mut tx = store.pool().begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    terminate(&admin, pid).await;
    assert_unavailable(
        store.complete_in(&mut tx, &lease, common::value("v")).await,
        "complete_in",
    );
    drop(tx);
    match store.get(&req.key).await.unwrap().unwrap().state {
        RecordState::Pending(p) => assert_eq!(p.token, lease.token),
        other => panic!("{other:?}"),
    }
}

/// Holds the row lock of a takeable record so a claim must wait for it.
async fn lock_expired_record(
    base: &PostgresStore,
) -> (
    idempotency_core::ClaimRequest,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let req = common::request(common::key(), 1, Duration::from_secs(1));
    common::acquire(base, &req).await;
    let mut blocker = base.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {}.records WHERE key = $1 FOR UPDATE",
        base.schema()
    )))
    .bind(&req.key.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    (req, blocker)
}

/// PostgreSQL's `statement_timeout` cancels a claim stuck on a lock: `Timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_statement_timeout_is_timeout() {
    let Some(base) = common::store().await else {
        return;
    };
    let options: PgConnectOptions = common::database_url().parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options.options([("statement_timeout", "200ms")]));
    let store = PostgresStore::builder()
        .schema(base.schema())
        .statement_timeout(None)
        .build(pool)
        .unwrap();
    let (req, blocker) = lock_expired_record(&base).await;
    store.advance(Duration::from_secs(5));
    match store.claim(&req).await {
        Err(e @ StoreError::Timeout { .. }) => {
            let source = std::error::Error::source(&e).expect("source kept");
            assert!(source.to_string().contains("statement timeout"), "{source}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    blocker.rollback().await.unwrap();
    // The lock is gone: the same claim now takes the record over.
    match store.claim(&req).await.unwrap() {
        Claim::Acquired { kind, .. } => assert_eq!(kind, ClaimKind::Takeover),
        other => panic!("{other:?}"),
    }
}

/// One timeout, two halves: the caller's deadline (`Policy::store_timeout`,
/// here `with_timeout`) ends the call on the client, and the store keeps no
/// second timer; PostgreSQL's `statement_timeout` on the store's pool ends
/// the abandoned statement on the server, so it cannot land later, behind
/// the lock, as a takeover nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_ends_on_the_server_too() {
    let Some(base) = common::store().await else {
        return;
    };
    let store = PostgresStore::builder()
        .schema(base.schema())
        .statement_timeout(Duration::from_secs(1))
        .max_connections(2)
        .connect_lazy(&common::database_url())
        .unwrap();
    let (req, mut blocker) = lock_expired_record(&base).await;
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    let before = base.get(&req.key).await.unwrap().expect("record");
    store.advance(Duration::from_secs(5));

    let started = std::time::Instant::now();
    let deadline = Duration::from_millis(300);
    match idempotency_core::with_timeout(deadline, store.claim(&req)).await {
        Err(StoreError::Timeout { .. }) => {}
        other => panic!("expected the caller's Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the caller's deadline ended it"
    );

    // The statement was still queued behind the lock when its caller gave
    // up, and PostgreSQL ends it at its statement_timeout.
    let waiting = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(blocker_pid)
        .fetch_one(base.pool())
        .await
        .unwrap();
        n
    };
    assert_eq!(waiting().await, 1, "the abandoned claim waits on the lock");
    let mut ended = false;
    for _ in 0..150 {
        if waiting().await == 0 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ended, "the server did not end the abandoned statement");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended by statement_timeout"
    );

    // The lock goes away; nothing the abandoned claim would have written lands.
    blocker.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = base.get(&req.key).await.unwrap().expect("record");
    assert_eq!(after, before, "no ghost takeover");
    // The pool is usable afterwards.
    assert!(store.get(&common::key()).await.unwrap().is_none());
}

async fn write_garbage(store: &PostgresStore, key: &idempotency_core::StorageKey, bytes: &[u8]) {
    let n = sqlx::query(AssertSqlSafe(format!(
        "UPDATE {}.records SET outcome = $2 WHERE key = $1",
        store.schema()
    )))
    .bind(&key.as_bytes()[..])
    .bind(bytes)
    .execute(store.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
}

async fn stored_state(
    store: &PostgresStore,
    key: &idempotency_core::StorageKey,
) -> (String, Option<Vec<u8>>) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT state, outcome FROM {}.records WHERE key = $1",
        store.schema()
    )))
    .bind(&key.as_bytes()[..])
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// Garbage bytes in a completed record: the claim answers `Corrupted`, the
/// row is marked CORRUPTED (bytes kept), and it blocks until resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_outcome_on_claim_is_corrupted() {
    let Some(store) = common::store().await else {
        return;
    };
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    common::claim_and_complete(&store, &req, common::value("fine")).await;
    write_garbage(&store, &req.key, b"\xde\xad\xbe\xef").await;

    match store.claim(&req).await.unwrap() {
        Claim::Corrupted { detail } => assert!(detail.contains("cannot be decoded"), "{detail}"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    let (state, outcome) = stored_state(&store, &req.key).await;
    assert_eq!(state, "CORRUPTED");
    assert_eq!(
        outcome.as_deref(),
        Some(&b"\xde\xad\xbe\xef"[..]),
        "bytes kept for inspection"
    );
    // Any fingerprint, any later time: still corrupted, never expired or reaped.
    store.advance(Duration::from_secs(7 * 24 * 3600));
    assert!(matches!(
        store
            .claim(&common::request(req.key, 2, Duration::from_secs(10)))
            .await
            .unwrap(),
        Claim::Corrupted { .. }
    ));
    store.purge_expired(1000).await.unwrap();
    let before = store.resolve(&req.key, Resolution::Delete).await.unwrap();
    assert!(matches!(before.state, RecordState::Corrupted(_)));
    let (_, kind) = common::acquire(&store, &req).await;
    assert_eq!(kind, ClaimKind::New);
}

/// The same through `get`: the record reads as corrupted and is marked so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_outcome_on_get_is_corrupted() {
    let Some(store) = common::store().await else {
        return;
    };
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    common::claim_and_complete(&store, &req, common::value("fine")).await;
    // A valid prefix with a truncated body.
    let mut bytes = idempotency_core::Outcome::Value(bytes::Bytes::from_static(b"hello")).encode();
    bytes.truncate(bytes.len() - 2);
    write_garbage(&store, &req.key, &bytes).await;

    let rec = store.get(&req.key).await.unwrap().expect("record");
    match &rec.state {
        RecordState::Corrupted(c) => assert!(c.detail.contains("truncated"), "{}", c.detail),
        other => panic!("{other:?}"),
    }
    assert_eq!(rec.expires_at, idempotency_core::Timestamp::MAX);
    assert_eq!(stored_state(&store, &req.key).await.0, "CORRUPTED");
    assert!(matches!(
        store.claim(&req).await.unwrap(),
        Claim::Corrupted { .. }
    ));
}
