//! The store's own migrations: idempotent, concurrent-safe, in their own
//! schema with their own history, refusing modified history.

mod common;

use idempotency_core::{Claim, ClaimKind, IdempotencyStore};
use idempotency_postgres::sqlx::{self, AssertSqlSafe};
use idempotency_postgres::{PostgresStore, SetupError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_keeps_its_own_history() {
    let Some(pool) = common::pool().await else {
        return;
    };
    let schema = common::fresh_schema();
    let store = PostgresStore::builder()
        .schema(&schema)
        .build(pool.clone())
        .unwrap();
    assert_eq!(store.migrate().await.unwrap(), 6);
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert_eq!(store.migrate().await.unwrap(), 0);
    let history: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, description FROM {schema}.migrations ORDER BY version"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            (1, "records".to_owned()),
            (2, "fences".to_owned()),
            (3, "watched".to_owned()),
            (4, "inbox".to_owned()),
            (5, "invalidations".to_owned()),
            (6, "epoch_ms".to_owned())
        ]
    );
    // Everything the store made lives in its schema.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        ["inbox_entries", "inbox_versions", "migrations", "records"]
    );
    let expiry_index: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = 'records_expires_at_idx')",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(expiry_index);
}

/// Eight stores on two pools migrate one fresh schema at once: the
/// migrations are applied once, nobody fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_from_several_processes() {
    let Some(p1) = common::pool().await else {
        return;
    };
    let p2 = common::pool().await.unwrap();
    let schema = common::fresh_schema();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = if i % 2 == 0 { p1.clone() } else { p2.clone() };
        let store = PostgresStore::builder()
            .schema(&schema)
            .build(pool)
            .unwrap();
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().expect("every concurrent migrate succeeds");
    }
    assert_eq!(applied, 6);
}

/// A schema created before fences came from a sequence (only migration 1
/// applied, records holding fences up to 41) continues above them: the
/// upgrade starts the sequence past every stored fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_starts_fences_above_the_stored_ones() {
    let Some(store) = common::store().await else {
        return;
    };
    let schema = store.schema().to_owned();
    let pool = store.pool().clone();
    // Back to the schema as migration 1 left it.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SEQUENCE {schema}.fences; DELETE FROM {schema}.migrations WHERE version = 2"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let key = common::key();
    let req = common::request(key, 3, std::time::Duration::from_secs(30));
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.records (key, fingerprint, state, fence, attempts, claim_kind, reason, retryable, created_at, finished_at, expires_at)
         VALUES ($1, $2, 'FAILED', 41, 1, 'NEW', 'flaky', true, now(), now(), now() + interval '1 hour')"
    )))
    .bind(&key.as_bytes()[..])
    .bind(&req.fingerprint.as_bytes()[..])
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(store.migrate().await.unwrap(), 1);
    let Claim::Acquired { lease, kind } = store.claim(&req).await.unwrap() else {
        panic!("a retryable failure is retried");
    };
    assert_eq!((kind, lease.attempt), (ClaimKind::Retry, 2));
    assert!(lease.fence > 41, "{}", lease.fence);
    let other = common::request(common::key(), 3, std::time::Duration::from_secs(30));
    let Claim::Acquired { lease: fresh, .. } = store.claim(&other).await.unwrap() else {
        panic!("a fresh key is acquired");
    };
    assert!(fresh.fence > lease.fence);
}

/// A history whose checksum does not match the embedded file stops migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_migration_is_refused() {
    let Some(pool) = common::pool().await else {
        return;
    };
    let schema = common::fresh_schema();
    let store = PostgresStore::builder()
        .schema(&schema)
        .build(pool.clone())
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {schema}.migrations SET checksum = '\\x00' WHERE version = 1"
    )))
    .execute(&pool)
    .await
    .unwrap();
    match store.migrate().await {
        Err(SetupError::MigrationModified { version: 1, .. }) => {}
        other => panic!("expected MigrationModified, got {other:?}"),
    }
}

/// The state column refuses values outside the lifecycle, and per-state
/// constraints refuse nonsense rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_refuse_nonsense_rows() {
    let Some(store) = common::store().await else {
        return;
    };
    let insert = |state: &'static str, token: Option<uuid::Uuid>| {
        let store = store.clone();
        async move {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {}.records (key, fingerprint, state, fence, attempts, claim_kind, token, lease_deadline, created_at, expires_at)
                 VALUES ($1, $2, $3, 1, 1, 'NEW', $4, now(), now(), now())",
                store.schema()
            )))
            .bind(&common::key().as_bytes()[..])
            .bind(&[0u8; 32][..])
            .bind(state)
            .bind(token)
            .execute(store.pool())
            .await
        }
    };
    assert!(insert("PENDING", Some(uuid::Uuid::new_v4())).await.is_ok());
    assert!(
        insert("DONE", Some(uuid::Uuid::new_v4())).await.is_err(),
        "unknown state"
    );
    assert!(
        insert("PENDING", None).await.is_err(),
        "pending without a token"
    );
    assert!(
        insert("COMPLETED", None).await.is_err(),
        "completed without an outcome"
    );
}

/// Migration 6's `epoch_ms` (float8 on a time truncated to the millisecond)
/// gives exactly what migration 1's gave (numeric `extract`), on random
/// instants over two centuries, before 1970 included, and the edges.
#[tokio::test]
async fn epoch_ms_is_the_exact_millisecond() {
    let Some(store) = common::store().await else {
        return;
    };
    let schema = store.schema();
    let differ: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM (
           SELECT t FROM (SELECT timestamptz '1900-01-01' + random() * interval '200 years' AS t
                            FROM generate_series(1, 100000)) r
           UNION ALL VALUES (timestamptz '1970-01-01 00:00:00Z'), (timestamptz '1969-12-31 23:59:59.999999Z'),
                            (timestamptz '2026-12-02 00:00:00.123Z'), (timestamptz '2026-12-02 00:00:00.999999+05:30'),
                            (timestamptz '0001-01-01 00:00:00Z'), (timestamptz '9999-12-31 23:59:59.999999Z')
         ) x(t)
         WHERE {schema}.epoch_ms(t) IS DISTINCT FROM floor(extract(epoch FROM t) * 1000)::bigint"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(differ, 0);
    let infinite: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {schema}.epoch_ms('infinity')"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(infinite, None);
}
