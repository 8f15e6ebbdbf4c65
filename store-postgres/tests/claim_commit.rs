//! `ClaimCommit`: the claim statement's own transaction commits
//! asynchronously with `ClaimCommit::Asynchronous`, nothing else does, and
//! the setting never outlives that transaction on the pooled connection.
//! With the completion in the effect's transaction, a claim a server crash
//! forgot is still executed once.

mod common;

use std::time::Duration;

use idempotency_core::{Claim, IdempotencyStore, StoreError};
use idempotency_postgres::sqlx::postgres::PgPoolOptions;
use idempotency_postgres::sqlx::{self, AssertSqlSafe};
use idempotency_postgres::{ClaimCommit, PostgresStore};

/// A migrated store on a pool of **one** connection (so a setting left on
/// the session would show on the next statement), in a fresh schema whose
/// records table notes `synchronous_commit` as each write sees it.
async fn observed_store(commit: ClaimCommit) -> Option<PostgresStore> {
    let pool = common::pool_with(PgPoolOptions::new().max_connections(1)).await?;
    let store = PostgresStore::builder()
        .schema(common::fresh_schema())
        .claim_commit(commit)
        .build(pool)
        .expect("valid schema");
    store.migrate().await.expect("migrate");
    let s = store.schema();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {s}.commit_modes (seq bigserial PRIMARY KEY, op text NOT NULL, mode text NOT NULL);
         CREATE FUNCTION {s}.note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO {s}.commit_modes (op, mode)
             VALUES (TG_OP || ' ' || NEW.state, current_setting('synchronous_commit'));
             RETURN NEW;
         END $$;
         CREATE TRIGGER note_commit_mode AFTER INSERT OR UPDATE ON {s}.records
             FOR EACH ROW EXECUTE FUNCTION {s}.note_commit_mode();"
    )))
    .execute(store.pool())
    .await
    .expect("observer installed");
    Some(store)
}

async fn modes(store: &PostgresStore) -> Vec<(String, String)> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT op, mode FROM {}.commit_modes ORDER BY seq",
        store.schema()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap()
}

async fn session_mode(store: &PostgresStore) -> String {
    sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// New claim, completion, takeover of an expired lease, failure: the writes
/// of one key's life, in order.
async fn one_life(store: &PostgresStore) {
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (lease, _) = common::acquire(store, &req).await;
    store.complete(&lease, common::value("done")).await.unwrap();

    let short = common::request(common::key(), 2, Duration::from_millis(200));
    common::acquire(store, &short).await;
    idempotency_core::ClockControl::advance(store, Duration::from_secs(1));
    let (taken, _) = common::acquire(store, &short).await;
    store
        .fail(&taken, idempotency_core::Failure::terminal("no"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_claim_commits_without_the_flush_and_nothing_else_does() {
    let Some(store) = observed_store(ClaimCommit::Asynchronous).await else {
        return;
    };
    let server = session_mode(&store).await;
    assert_ne!(
        server, "off",
        "the test needs a server that commits durably"
    );
    one_life(&store).await;
    let ops = |mode: &str| {
        [
            ("INSERT PENDING", "off"),
            ("UPDATE COMPLETED", mode),
            ("INSERT PENDING", "off"),
            ("UPDATE PENDING", "off"),
            ("UPDATE FAILED", mode),
        ]
        .map(|(op, m)| (op.to_owned(), m.to_owned()))
        .to_vec()
    };
    assert_eq!(modes(&store).await, ops(&server));
    // The one pooled connection ran every statement: the setting ended with
    // each claim's transaction.
    assert_eq!(session_mode(&store).await, server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_claim_keeps_the_servers_setting() {
    let Some(store) = observed_store(ClaimCommit::Durable).await else {
        return;
    };
    let server = session_mode(&store).await;
    one_life(&store).await;
    let seen = modes(&store).await;
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|(_, mode)| *mode == server), "{seen:?}");
}

/// An execution's effect: its row, in a transaction left open.
async fn write_effect(
    store: &PostgresStore,
    key: &idempotency_core::StorageKey,
    note: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.effects (key, note) VALUES ($1, $2)",
        store.schema()
    )))
    .bind(&key.as_bytes()[..])
    .bind(note)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// What a crash of the server within the flush window does to an
/// asynchronous claim (the record is gone: modelled here by deleting it,
/// as recovery would leave the table), with the completion in the effect's
/// transaction: a duplicate claims the key again while the first execution
/// still runs, and only one of the two executions can commit its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_claim_is_still_executed_once_with_the_completion_in_the_effects_transaction() {
    // A pool of several connections: the two executions' transactions overlap.
    let Some(pool) = common::pool().await else {
        return;
    };
    let store = PostgresStore::builder()
        .schema(common::fresh_schema())
        .claim_commit(ClaimCommit::Asynchronous)
        .build(pool)
        .expect("valid schema");
    store.migrate().await.expect("migrate");
    let s = store.schema().to_owned();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {s}.effects (key bytea NOT NULL, note text NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let req = common::request(common::key(), 1, Duration::from_secs(10));
    let (first, _) = common::acquire(&store, &req).await;
    // The first execution writes its effect, not yet committed.
    let mut first_tx = write_effect(&store, &req.key, "first").await;
    // The claim is forgotten; a duplicate acquires the key again.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {s}.records WHERE key = $1"
    )))
    .bind(&req.key.as_bytes()[..])
    .execute(store.pool())
    .await
    .unwrap();
    let (second, _) = common::acquire(&store, &req).await;
    assert_ne!(first.token, second.token);
    let mut second_tx = write_effect(&store, &req.key, "second").await;
    store
        .complete_in(&mut second_tx, &second, common::value("second"))
        .await
        .unwrap();
    second_tx.commit().await.unwrap();
    // The first execution's completion finds the lease gone: its
    // transaction, effect included, rolls back.
    let lost = store
        .complete_in(&mut first_tx, &first, common::value("first"))
        .await;
    assert!(matches!(lost, Err(StoreError::LeaseLost)), "{lost:?}");
    drop(first_tx);
    let notes: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT note FROM {s}.effects WHERE key = $1"
    )))
    .bind(&req.key.as_bytes()[..])
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(notes, ["second"]);
    match store.claim(&req).await.unwrap() {
        Claim::Completed(done) => assert_eq!(done.outcome, common::value("second").outcome),
        other => panic!("expected the second execution's replay, got {other:?}"),
    }
}
