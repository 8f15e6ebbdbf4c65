//! The migration runner: embedded SQL files, a history table inside the
//! audit schema, the schema's roles and privileges, one advisory-locked
//! transaction.

use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use super::roles::AuditRoles;
use super::{Schema, map_err};
use crate::error::AuditError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    /// The SQL, with `{{schema}}` standing for the schema name.
    pub(crate) sql: &'static str,
}

/// Every migration this crate ships, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "append_function",
        sql: include_str!("../../migrations/0002_append_function.sql"),
    },
];

/// Ownership and grants, re-applied after every run that applied a migration.
const PRIVILEGES: &str = include_str!("../../migrations/privileges.sql");

impl Migration {
    /// SHA-256 of the SQL template (independent of the schema name).
    fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.as_bytes()).to_vec()
    }
}

/// What [`PostgresSink::migrate`](super::PostgresSink::migrate) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the schema was up to date).
    pub applied: Vec<i64>,
    /// The schema's version afterwards.
    pub version: i64,
}

/// Applies the missing migrations to `schema` in one transaction, holding a
/// transaction-scoped advisory lock so that concurrent runs (several
/// processes starting at once) apply each migration exactly once.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    schema: &Schema,
    roles: &AuditRoles,
) -> Result<MigrationReport, AuditError> {
    let mut tx = conn.begin().await.map_err(map_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("idempotency-audit/migrate/{}", schema.name()))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    ensure_roles(&mut tx, roles).await?;
    let bootstrap = schema.apply(
        "CREATE SCHEMA IF NOT EXISTS {{schema}};
         CREATE TABLE IF NOT EXISTS {{schema}}.schema_migrations (
             version    bigint      PRIMARY KEY,
             name       text        NOT NULL,
             checksum   bytea       NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    );
    sqlx::raw_sql(AssertSqlSafe(bootstrap))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    let applied_rows = sqlx::query(AssertSqlSafe(
        schema.apply("SELECT version, checksum FROM {{schema}}.schema_migrations ORDER BY version"),
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(map_err)?;
    let mut already = Vec::with_capacity(applied_rows.len());
    for row in &applied_rows {
        let version: i64 = row.try_get("version").map_err(map_err)?;
        let checksum: Vec<u8> = row.try_get("checksum").map_err(map_err)?;
        already.push((version, checksum));
    }

    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if let Some((_, checksum)) = already.iter().find(|(v, _)| *v == m.version) {
            if *checksum != m.checksum() {
                return Err(AuditError::MigrationChanged {
                    version: m.version,
                    name: m.name.to_owned(),
                });
            }
            continue;
        }
        sqlx::raw_sql(AssertSqlSafe(roles.apply(schema, m.sql)))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(AssertSqlSafe(schema.apply(
            "INSERT INTO {{schema}}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        )))
        .bind(m.version)
        .bind(m.name)
        .bind(m.checksum())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        applied.push(m.version);
    }
    if !applied.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(roles.apply(schema, PRIVILEGES)))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
    }
    tx.commit().await.map_err(map_err)?;
    let version = already
        .iter()
        .map(|(v, _)| *v)
        .chain(applied.iter().copied())
        .max()
        .unwrap_or(0);
    Ok(MigrationReport { applied, version })
}

/// Creates the missing roles and makes the migrating role a member of the
/// owner (so it may hand the tables over), or, when the migrating role may
/// not, refuses with [`AuditError::RolesMissing`] and logs the SQL to run.
async fn ensure_roles(conn: &mut PgConnection, roles: &AuditRoles) -> Result<(), AuditError> {
    let me = sqlx::query(
        "SELECT current_user::text AS name, rolsuper, rolcreaterole \
           FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    let user: String = me.try_get("name").map_err(map_err)?;
    let superuser: bool = me.try_get("rolsuper").map_err(map_err)?;
    let may_create = superuser || me.try_get::<bool, _>("rolcreaterole").map_err(map_err)?;
    let mut missing = Vec::new();
    for role in [roles.owner(), roles.writer(), roles.reader()] {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)",
        )
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        if !exists {
            missing.push(role.to_owned());
        }
    }
    let member = superuser
        || (!missing.iter().any(|m| m == roles.owner())
            && sqlx::query_scalar::<_, bool>("SELECT pg_has_role(current_user, $1, 'MEMBER')")
                .bind(roles.owner())
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?);
    if !may_create && (!missing.is_empty() || !member) {
        if !member && !missing.iter().any(|m| m == roles.owner()) {
            missing.push(format!("member of {}", roles.owner()));
        }
        tracing::error!(
            target: "audit",
            user = %user,
            missing = ?missing,
            sql = %roles.setup_sql(&user),
            "the audit roles are missing and this role may not create them: run this SQL as a role with CREATEROLE, then migrate again"
        );
        return Err(AuditError::RolesMissing { missing, user });
    }
    for role in &missing {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE \"{role}\" NOLOGIN")))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    if !superuser
        && !sqlx::query_scalar::<_, bool>("SELECT pg_has_role(current_user, $1, 'MEMBER')")
            .bind(roles.owner())
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?
    {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "GRANT \"{}\" TO CURRENT_USER",
            roles.owner()
        )))
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}
