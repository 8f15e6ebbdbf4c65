//! The service's migrations, in schema `promotion`, applied at start by
//! [`example_support::migrate`] (one transaction under an advisory lock,
//! checksums refuse an edited migration).

use example_support::migrate::{self, Migration};
use sqlx::PgPool;

pub use example_support::migrate::MigrateError;

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "promotion",
    sql: include_str!("../migrations/0001_promotion.sql"),
}];

/// Creates schema `promotion` and applies the migrations not applied yet;
/// returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
pub async fn migrate(pool: &PgPool) -> Result<usize, MigrateError> {
    migrate::run(pool, "promotion", "example-promotion:migrate", MIGRATIONS).await
}
