//! Shared helpers: a real PostgreSQL at `DATABASE_URL`, one fresh schema per store.
#![allow(dead_code, unreachable_pub, unused_imports)]

use idempotency_core::peek::ReadFirst;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency_core::StorageKey;
use idempotency_postgres::sqlx::postgres::PgPoolOptions;
use idempotency_postgres::sqlx::{self, PgPool};
use idempotency_postgres::{PostgresStore, PostgresStoreBuilder};

/// Test schemas are named `idem_t_<unix seconds>_<random>`; ones older than
/// this are left over from earlier runs and are dropped.
const STALE_AFTER_SECS: u64 = 3600;

pub use idempotency_core::conformance::support::{
    acquire, claim_and_complete, database_url, in_ci, value,
};

/// A pool to the test database, or `None` (after printing why) when it is
/// unreachable outside CI.
///
/// # Panics
///
/// Under CI when the database is unreachable.
pub async fn pool() -> Option<PgPool> {
    pool_with(PgPoolOptions::new().max_connections(8)).await
}

pub async fn pool_with(options: PgPoolOptions) -> Option<PgPool> {
    let url = database_url();
    let pool = options
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&url)
        .expect("DATABASE_URL parses");
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => Some(pool),
        Err(e) if in_ci() => panic!("PostgreSQL at {url} unreachable under CI: {e}"),
        Err(_) => {
            println!("skipping: postgres unreachable");
            None
        }
    }
}

/// A fresh schema name for one store.
pub fn fresh_schema() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("idem_t_{secs}_{}", &rand[..12])
}

/// A migrated store in a schema of its own (its own clock, its own reaper
/// scope), so tests that move the clock and purge never touch each other.
pub async fn store() -> Option<PostgresStore> {
    let pool = pool().await?;
    Some(store_on(pool, &fresh_schema()).await)
}

pub async fn store_on(pool: PgPool, schema: &str) -> PostgresStore {
    store_reading(pool, schema, ReadFirst::default()).await
}

/// [`store_on`], reading before claiming as `read_first` says.
pub async fn store_reading(pool: PgPool, schema: &str, read_first: ReadFirst) -> PostgresStore {
    drop_stale_schemas(&pool).await;
    let store = PostgresStore::builder()
        .schema(schema)
        .read_first(read_first)
        .build(pool)
        .expect("valid schema");
    store.migrate().await.expect("migrate");
    store
}

/// A migrated store in a fresh schema, built as `configure` says.
pub async fn store_built(
    configure: impl FnOnce(PostgresStoreBuilder) -> PostgresStoreBuilder,
) -> Option<PostgresStore> {
    let pool = pool().await?;
    let store = configure(PostgresStore::builder().schema(fresh_schema()))
        .build(pool)
        .expect("valid schema");
    store.migrate().await.expect("migrate");
    Some(store)
}

/// Drops test schemas left by earlier runs (once per process).
async fn drop_stale_schemas(pool: &PgPool) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'idem\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid && created.saturating_add(STALE_AFTER_SECS) < now {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE"
            )))
            .execute(pool)
            .await;
        }
    }
}

/// A fresh random storage key.
pub fn key() -> StorageKey {
    StorageKey::from_segments(&[b"pg-test".as_slice(), uuid::Uuid::new_v4().as_bytes()])
}

/// A claim request with the given lease and a one-hour retention.
pub fn request(
    key: StorageKey,
    fingerprint: u8,
    lease: Duration,
) -> idempotency_core::ClaimRequest {
    idempotency_core::ClaimRequest {
        key,
        fingerprint: idempotency_core::Fingerprint::of_bytes("pg-test", &[fingerprint]),
        lease,
        retention: Duration::from_secs(3600),
        max_attempts: 3,
    }
}

/// A second store on the same schema over a separate pool: another "process".
pub async fn other_process(store: &PostgresStore) -> PostgresStore {
    let pool = pool().await.expect("database reachable");
    PostgresStore::builder()
        .schema(store.schema())
        .build(pool)
        .expect("valid schema")
}
