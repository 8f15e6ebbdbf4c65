//! The service's migrations (schemas `appointments` and `work_execution`,
//! history in `appointments.schema_migrations`), applied at start by
//! [`example_support::migrate`] (one transaction under an advisory lock,
//! checksums refuse an edited migration).

use example_support::migrate::{self, Migration};
use sqlx::PgPool;

pub use example_support::migrate::MigrateError;

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "appointments",
    sql: include_str!("../migrations/0001_appointments.sql"),
}];

/// Creates schemas `appointments` and `work_execution` and applies the
/// migrations not applied yet; returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
pub async fn migrate(pool: &PgPool) -> Result<usize, MigrateError> {
    migrate::run(
        pool,
        "appointments",
        "example-appointments:migrate",
        MIGRATIONS,
    )
    .await
}
