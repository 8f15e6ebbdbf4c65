//! `ClaimCommit::Asynchronous` against a real crash of a private PostgreSQL
//! server: a claim that returned before its WAL left the server's memory is
//! forgotten by the crash (a duplicate then acquires the key again), and a
//! durable claim made just before it is not.

use std::time::Duration;

use idempotency_core::conformance::support::{acquire, key, request};
use idempotency_core::{ClaimKind, IdempotencyStore, RecordState};
use idempotency_postgres::sqlx::postgres::PgPoolOptions;
use idempotency_postgres::{ClaimCommit, PostgresStore};

use super::pg::PrivatePostgres;

/// The WAL writer waits 10 s between writes of a partial page, so nothing
/// but a durable commit writes the asynchronous claim's WAL before the
/// crash; autovacuum would commit on its own, so it is off. Every commit of
/// the server is durable (`synchronous_commit=on`, over the suite's `off`).
const SETTINGS: &str = "-c synchronous_commit=on -c wal_writer_delay=10s -c autovacuum=off";

async fn store(url: &str, schema: &str, commit: ClaimCommit) -> PostgresStore {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect to the private server");
    PostgresStore::builder()
        .schema(schema)
        .claim_commit(commit)
        .build(pool)
        .expect("valid schema")
}

pub async fn forgotten_by_a_crash() {
    let pg = PrivatePostgres::start_with(SETTINGS).await;
    let durable = store(&pg.url(), "durable_claims", ClaimCommit::Durable).await;
    let deferred = store(&pg.url(), "deferred_claims", ClaimCommit::Asynchronous).await;
    durable.migrate().await.expect("migrate");
    deferred.migrate().await.expect("migrate");

    let k = key("crash");
    let req = request(k, 1, Duration::from_secs(60));
    // The durable claim first: its commit writes all WAL before it, so the
    // asynchronous claim after it is the only unwritten change.
    acquire(&durable, &req).await;
    let (forgotten, _) = acquire(&deferred, &req).await;
    // Both are visible at once, to any session.
    for store in [&durable, &deferred] {
        let rec = store.get(&k).await.expect("get").expect("claimed");
        assert!(matches!(rec.state, RecordState::Pending(_)), "{rec:?}");
    }
    durable.pool().close().await;
    deferred.pool().close().await;

    pg.crash_and_start().await;

    let durable = store(&pg.url(), "durable_claims", ClaimCommit::Durable).await;
    let deferred = store(&pg.url(), "deferred_claims", ClaimCommit::Asynchronous).await;
    let kept = durable.get(&k).await.expect("get");
    assert!(
        matches!(
            kept.as_ref().map(|r| &r.state),
            Some(RecordState::Pending(_))
        ),
        "a durable claim survives the crash: {kept:?}"
    );
    let lost = deferred.get(&k).await.expect("get");
    assert!(
        lost.is_none(),
        "the asynchronous claim was not yet written when the server crashed: {lost:?}"
    );
    // A duplicate after the restart acquires the key again: a new first
    // attempt, under a new lease.
    let (again, kind) = acquire(&deferred, &req).await;
    assert_eq!(kind, ClaimKind::New);
    assert_eq!(again.attempt, 1);
    assert_ne!(again.token, forgotten.token);
    // The fence sequence's own advance may be forgotten with the claim:
    // what the docs warn of for fences handed downstream.
    println!(
        "fence of the forgotten claim {}, of the claim after the crash {}",
        forgotten.fence, again.fence
    );
}
