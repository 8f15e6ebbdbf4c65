//! Shared helpers: a real PostgreSQL at `DATABASE_URL`.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency_audit::postgres::PostgresSink;
use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::postgres::sqlx::{self, PgPool, Row};

/// Private test schemas are named `audit_t_<unix seconds>_<random>`; ones
/// older than this are left over from interrupted runs and are dropped.
const STALE_AFTER_SECS: u64 = 3600;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A pool to the test database, or `None` (after printing why) when it is
/// unreachable outside CI.
///
/// # Panics
///
/// Under CI when the database is unreachable.
pub async fn pool(max_connections: u32) -> Option<PgPool> {
    let url = database_url();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
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

/// A sink on the shared `audit` schema (migrated; idempotent), or `None` to skip.
pub async fn sink() -> Option<PostgresSink> {
    sink_with(4).await
}

pub async fn sink_with(max_connections: u32) -> Option<PostgresSink> {
    let sink = PostgresSink::new(pool(max_connections).await?);
    sink.migrate()
        .await
        .expect("migrate the shared audit schema");
    Some(sink)
}

/// A stream name no other test uses.
pub fn stream(name: &str) -> String {
    format!("test/{name}/{}", uuid::Uuid::new_v4().simple())
}

/// A fresh private schema name (dropped by the test that made it).
pub fn fresh_schema() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("audit_t_{secs}_{}", &rand[..12])
}

/// Drops a private schema (never the shared one) and its three roles.
pub async fn drop_schema(pool: &PgPool, schema: &str) {
    assert!(
        schema.starts_with("audit_t_"),
        "only private test schemas are dropped"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .expect("drop private schema");
    for suffix in ["owner", "writer", "reader"] {
        drop_role(pool, &format!("{schema}_{suffix}")).await;
    }
}

/// Prefixed to a statement that changes the database's own privileges
/// (`GRANT ... ON DATABASE`, or `DROP OWNED BY` a role that holds one): it
/// rewrites the one `pg_database` row without a row lock, so two at once
/// fail with "tuple concurrently updated". The advisory lock lasts until the
/// end of the statement list's implicit transaction.
pub const DATABASE_ACL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('idempotency-audit tests: database privileges'));";

/// Drops a role of this test run (and whatever it still owns or was granted
/// in this database).
pub async fn drop_role(pool: &PgPool, role: &str) {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(pool)
            .await
            .expect("look the role up");
    if exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "{DATABASE_ACL_LOCK} DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\";"
        )))
        .execute(pool)
        .await
        .expect("drop role");
    }
}

/// A fresh login role name for this test (`audit_t_<secs>_<random>_<what>`),
/// dropped by [`drop_stale_schemas`] if the test does not.
pub fn fresh_role(what: &str) -> String {
    format!("{}_{what}", fresh_schema())
}

/// Creates a LOGIN role that is a member of `member_of` (none when empty).
pub async fn login_role(pool: &PgPool, role: &str, member_of: &[&str]) {
    let mut sql = format!("CREATE ROLE \"{role}\" LOGIN;");
    for m in member_of {
        sql.push_str(&format!("GRANT \"{m}\" TO \"{role}\";"));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .expect("create login role");
}

/// `DATABASE_URL` with `role` as the user (the test servers trust loopback).
pub fn url_as(role: &str) -> String {
    let url = database_url();
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL has a scheme");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{role}@{host}{path}")
}

/// A pool of `max_connections` connecting as `role`.
pub async fn pool_as(role: &str, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url_as(role))
        .await
        .expect("connect as the test role")
}

/// Drops private test schemas left by interrupted runs (once per process).
pub async fn drop_stale_schemas(pool: &PgPool) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rows = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'audit\\_t\\_%'")
        .fetch_all(pool)
        .await
        .expect("list schemas");
    for row in rows {
        let name: String = row.get("nspname");
        let secs = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if now.saturating_sub(secs) > STALE_AFTER_SECS && secs != u64::MAX {
            drop_schema(pool, &name).await;
        }
    }
    let roles = sqlx::query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'audit\\_t\\_%'")
        .fetch_all(pool)
        .await
        .expect("list roles");
    for row in roles {
        let name: String = row.get("rolname");
        let secs = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if now.saturating_sub(secs) > STALE_AFTER_SECS && secs != u64::MAX {
            drop_role(pool, &name).await;
        }
    }
}

/// Runs `sql` (binding `stream`) on a connection of its own with the
/// triggers switched off for that session only, as a superuser tampering
/// with the table would.
pub async fn tamper(pool: &PgPool, sql: &str, stream: &str) -> u64 {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("tampering needs a superuser");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(stream)
        .execute(&mut *tx)
        .await
        .expect("tamper");
    tx.commit().await.expect("commit");
    done.rows_affected()
}
