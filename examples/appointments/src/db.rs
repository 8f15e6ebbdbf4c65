//! The service's migrations: versioned SQL files, applied once, in one
//! transaction under an advisory lock (safe from several processes starting
//! at once), with a checksum so an edited migration is refused.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// The migrations, in order: version, name, SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "appointments",
    include_str!("../migrations/0001_appointments.sql"),
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

/// Creates schemas `appointments` and `work_execution` and applies the migrations not applied yet;
/// returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
pub async fn migrate(pool: &PgPool) -> Result<usize, MigrateError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('example-appointments:migrate'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS appointments;
         CREATE TABLE IF NOT EXISTS appointments.schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bytea       NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .execute(&mut *tx)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let checksum = Sha256::digest(sql.as_bytes()).to_vec();
        let row =
            sqlx::query("SELECT checksum FROM appointments.schema_migrations WHERE version = $1")
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
        sqlx::query(
            "INSERT INTO appointments.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        )
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
