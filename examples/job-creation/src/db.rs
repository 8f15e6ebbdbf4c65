//! The service's migrations, in the configured schema, applied at start by
//! [`example_support::migrate`] (one transaction under an advisory lock,
//! checksums refuse an edited migration).

use example_support::migrate::{self, Migration};
use sqlx::PgPool;

pub use example_support::migrate::{MigrateError, apply};
pub use example_support::settings::is_schema_name;

/// The migrations, in order (`{{schema}}` stands for the quoted schema name).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "job_creation",
    sql: include_str!("../migrations/0001_job_creation.sql"),
}];

/// Creates `schema` and applies the migrations not applied yet; returns how
/// many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then (also when `schema` is not a
/// valid name, [`is_schema_name`]).
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<usize, MigrateError> {
    migrate::run(
        pool,
        schema,
        &format!("example-job-creation:migrate:{schema}"),
        MIGRATIONS,
    )
    .await
}
