//! The service's migrations: versioned SQL files in the configured schema,
//! applied once, in one transaction under an advisory lock (safe from
//! several processes starting at once), with a checksum so an edited
//! migration is refused.

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool, Row};

/// The migrations, in order: version, name, SQL (`{{schema}}` stands for
/// the quoted schema name).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "job_creation",
    include_str!("../migrations/0001_job_creation.sql"),
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
    #[error("database error while migrating")]
    Database(#[from] sqlx::Error),
}

/// Whether `name` is accepted as a schema name: 1 to 48 of `[a-z0-9_]`,
/// starting with a letter or `_`, not `pg_...`.
pub fn is_schema_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_")
}

/// `template` with `{{schema}}` replaced by the quoted `schema`.
pub(crate) fn apply(template: &str, schema: &str) -> String {
    template.replace("{{schema}}", &format!("\"{schema}\""))
}

/// Creates `schema` and applies the migrations not applied yet; returns how
/// many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
///
/// # Panics
///
/// When `schema` is not a valid name ([`is_schema_name`]): settings are
/// validated before.
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<usize, MigrateError> {
    assert!(is_schema_name(schema), "invalid schema name {schema:?}");
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('example-job-creation:migrate:' || $1))")
        .bind(schema)
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
    for &(version, name, sql) in MIGRATIONS {
        let checksum = Sha256::digest(sql.as_bytes()).to_vec();
        let row = sqlx::query(AssertSqlSafe(apply(
            "SELECT checksum FROM {{schema}}.schema_migrations WHERE version = $1",
            schema,
        )))
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
        sqlx::raw_sql(AssertSqlSafe(apply(sql, schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(apply(
            "INSERT INTO {{schema}}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            schema,
        )))
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
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["job_creation", "_x", "jobs_t_1"] {
            assert!(is_schema_name(ok), "{ok}");
        }
        for bad in ["", "1a", "pg_x", "Jobs", "a-b", "a\"b", &"a".repeat(49)] {
            assert!(!is_schema_name(bad), "{bad}");
        }
        assert_eq!(apply("{{schema}}.t", "s"), "\"s\".t");
    }
}
