//! The store's own migration runner: embedded files, a history table in the
//! store's schema, one transaction serialised by an advisory lock.

use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use crate::error::{SetupError, map_sqlx};
use crate::sql::{Queries, substitute};

/// One embedded migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Files are never edited once released: a change
/// is a new file.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "records",
        sql: include_str!("../migrations/0001_records.sql"),
    },
    Migration {
        version: 2,
        description: "fences",
        sql: include_str!("../migrations/0002_fences.sql"),
    },
    Migration {
        version: 3,
        description: "watched",
        sql: include_str!("../migrations/0003_watched.sql"),
    },
    Migration {
        version: 4,
        description: "inbox",
        sql: include_str!("../migrations/0004_inbox.sql"),
    },
    Migration {
        version: 5,
        description: "invalidations",
        sql: include_str!("../migrations/0005_invalidations.sql"),
    },
    Migration {
        version: 6,
        description: "epoch_ms",
        sql: include_str!("../migrations/0006_epoch_ms.sql"),
    },
];

/// Applies every embedded migration not yet applied to `schema`.
///
/// Runs in one transaction holding a transaction-level advisory lock named
/// after the schema, so concurrent runs from several processes queue up and
/// the later ones find nothing to do; a failure rolls everything back.
pub(crate) async fn run(
    pool: &PgPool,
    queries: &Queries,
    schema: &str,
    channel: &str,
) -> Result<usize, SetupError> {
    let mut tx = pool.begin().await.map_err(map_sqlx)?;
    sqlx::query(queries.migrate_lock.sql())
        .bind(format!("migrate:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    sqlx::raw_sql(queries.migrate_bootstrap.sql())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query(queries.migrate_applied.sql())
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(map_sqlx)?;

    let mut count = 0;
    for m in MIGRATIONS {
        let checksum = Sha256::digest(m.sql.as_bytes()).to_vec();
        if let Some((_, stored)) = applied.iter().find(|(v, _)| *v == m.version) {
            if *stored != checksum {
                return Err(SetupError::MigrationModified {
                    version: m.version,
                    description: m.description,
                });
            }
            continue;
        }
        let sql = substitute(m.sql, schema, channel);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(queries.migrate_record.sql())
            .bind(m.version)
            .bind(m.description)
            .bind(&checksum)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tracing::info!(
            schema,
            version = m.version,
            description = m.description,
            "applied migration"
        );
        count += 1;
    }
    if let Some((v, _)) = applied
        .iter()
        .find(|(v, _)| !MIGRATIONS.iter().any(|m| m.version == *v))
    {
        // A newer build migrated this schema (rolling deploy): leave it be.
        tracing::warn!(
            schema,
            version = v,
            "schema has a migration this build does not know"
        );
    }
    tx.commit().await.map_err(map_sqlx)?;
    Ok(count)
}
