//! The service's migrations: versioned SQL files applied once, in one
//! transaction under an advisory lock named after the schema (safe from
//! several processes starting at once), with a checksum so an edited
//! migration is refused. Everything lands in the service's schema.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// The migrations, in order: version, name, SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "order_intake",
    include_str!("../migrations/0001_order_intake.sql"),
)];

/// Why the migrations could not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An applied migration's SQL differs from the one in this binary.
    #[error("migration {version} ({name}) was changed after it was applied")]
    Modified {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
    },
    /// The database failed.
    #[error("database error while migrating: {0}")]
    Database(#[from] sqlx::Error),
}

/// Whether `s` can be the service's schema: `[a-z_][a-z0-9_]*`, at most 48
/// bytes, no `pg_` prefix (substituted into SQL, so never anything else).
pub fn is_schema_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.len() <= 48
        && !s.starts_with("pg_")
}

/// Creates schema `schema` and applies the migrations not applied yet;
/// returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
///
/// # Panics
///
/// If `schema` is not [a schema name](is_schema_name).
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<usize, MigrateError> {
    assert!(is_schema_name(schema), "not a schema name: {schema:?}");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('example-order-intake:migrate:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bytea       NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    )))
    .execute(&mut *tx)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let checksum = Sha256::digest(sql.as_bytes()).to_vec();
        let row = sqlx::query("SELECT checksum FROM schema_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let stored: Vec<u8> = row.try_get("checksum")?;
            if stored != checksum {
                return Err(MigrateError::Modified { version, name });
            }
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
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
    #[test]
    fn schema_names() {
        for ok in ["orders", "_t1", "oi_0123"] {
            assert!(super::is_schema_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Orders",
            "1x",
            "pg_orders",
            "a-b",
            "a\"b",
            &"a".repeat(49),
        ] {
            assert!(!super::is_schema_name(bad), "{bad}");
        }
    }
}
