//! A service's own migrations: versioned SQL files, applied once each, in
//! one transaction under an advisory lock (several processes starting at
//! once apply them once), with a SHA-256 checksum per migration so an
//! edited migration is refused instead of silently diverging.
//!
//! The SQL may say `{{schema}}` where the schema name goes, so one file
//! serves any configured schema (and a test can use a fresh one). The
//! checksum is taken over the file as written, before the name goes in.

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::settings::is_schema_name;

/// One migration: its version (applied in the order given), name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, unique and increasing.
    pub version: i32,
    /// A short name, for the error that refuses an edited migration.
    pub name: &'static str,
    /// The SQL (`include_str!` of a file under `migrations/`).
    pub sql: &'static str,
}

/// Why the migrations could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// An applied migration's SQL differs from the one in this binary.
    #[error("migration {version} ({name}) was changed after it was applied")]
    Modified {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
    },
    /// The schema name is not one [`is_schema_name`] accepts.
    #[error("{0:?} is not a schema name")]
    SchemaName(String),
    /// The database failed.
    #[error("database error while migrating")]
    Database(#[from] sqlx::Error),
}

/// `template` with `{{schema}}` replaced by the quoted `schema`.
pub fn apply(template: &str, schema: &str) -> String {
    template.replace("{{schema}}", &format!("\"{schema}\""))
}

/// Creates `schema` with its `schema_migrations` table and applies the
/// `migrations` not applied yet, under the transaction-scoped advisory
/// lock `hashtext(lock)`; returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then (one transaction).
///
/// # Cancel safety
///
/// Dropped before it returns, the transaction rolls back: nothing applied.
pub async fn run(
    pool: &PgPool,
    schema: &str,
    lock: &str,
    migrations: &[Migration],
) -> Result<usize, MigrateError> {
    if !is_schema_name(schema) {
        return Err(MigrateError::SchemaName(schema.to_owned()));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(apply(
        "CREATE SCHEMA IF NOT EXISTS {{schema}};
         CREATE TABLE IF NOT EXISTS {{schema}}.schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bytea       NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        schema,
    )))
    .execute(&mut *tx)
    .await?;
    let mut applied = 0;
    for m in migrations {
        let checksum = Sha256::digest(m.sql.as_bytes()).to_vec();
        let row = sqlx::query(AssertSqlSafe(apply(
            "SELECT checksum FROM {{schema}}.schema_migrations WHERE version = $1",
            schema,
        )))
        .bind(m.version)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let stored: Vec<u8> = row.try_get("checksum")?;
            if stored != checksum {
                return Err(MigrateError::Modified {
                    version: m.version,
                    name: m.name,
                });
            }
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(apply(m.sql, schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(apply(
            "INSERT INTO {{schema}}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            schema,
        )))
        .bind(m.version)
        .bind(m.name)
        .bind(checksum)
        .execute(&mut *tx)
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_goes_in_quoted() {
        assert_eq!(apply("{{schema}}.t", "s"), "\"s\".t");
        assert_eq!(apply("no placeholder", "s"), "no placeholder");
    }

    /// A database for the tests below; `None` outside CI when unreachable.
    async fn pool() -> Option<PgPool> {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        match PgPool::connect(&url).await {
            Ok(p) => Some(p),
            Err(e) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(!ci, "PostgreSQL at {url} is unreachable under CI: {e}");
                println!("skipping: PostgreSQL at {url} is unreachable");
                None
            }
        }
    }

    fn fresh_schema() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("support_migrate_{}_{nanos}", std::process::id())
    }

    const ONE: Migration = Migration {
        version: 1,
        name: "things",
        sql: "CREATE TABLE {{schema}}.things (id int PRIMARY KEY);",
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_once_even_when_started_concurrently_and_refuses_an_edit() {
        let Some(pool) = pool().await else { return };
        let schema = fresh_schema();
        let lock = format!("support-test:{schema}");
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let (pool, schema, lock) = (pool.clone(), schema.clone(), lock.clone());
                tokio::spawn(async move { run(&pool, &schema, &lock, &[ONE]).await })
            })
            .collect();
        let mut applied = 0;
        for r in runs {
            applied += r.await.unwrap().unwrap();
        }
        assert_eq!(applied, 1, "exactly one process applies the migration");
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(apply(
            "SELECT count(*) FROM {{schema}}.schema_migrations",
            &schema,
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, 1);
        let edited = Migration {
            sql: "CREATE TABLE {{schema}}.things (id bigint PRIMARY KEY);",
            ..ONE
        };
        let err = run(&pool, &schema, &lock, &[edited]).await.unwrap_err();
        assert!(
            matches!(
                err,
                MigrateError::Modified {
                    version: 1,
                    name: "things"
                }
            ),
            "{err}"
        );
        let two = Migration {
            version: 2,
            name: "more",
            sql: "ALTER TABLE {{schema}}.things ADD COLUMN note text;",
        };
        assert_eq!(run(&pool, &schema, &lock, &[ONE, two]).await.unwrap(), 1);
        sqlx::raw_sql(AssertSqlSafe(apply(
            "DROP SCHEMA {{schema}} CASCADE",
            &schema,
        )))
        .execute(&pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_bad_schema_name_is_refused_before_the_database() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let err = run(&pool, "Bad-Name", "x", &[ONE]).await.unwrap_err();
        assert!(matches!(err, MigrateError::SchemaName(_)), "{err}");
    }
}
