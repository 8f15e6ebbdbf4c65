//! The service's migrations (`migrations/*.sql`), applied at start by
//! [`example_support::migrate::run`]: once each, in one transaction under an
//! advisory lock named after the schema (several processes may start at
//! once), an edited migration refused by its checksum.

use example_support::migrate::{self, MigrateError, Migration};
use sqlx::PgPool;

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "order_intake",
    sql: include_str!("../migrations/0001_order_intake.sql"),
}];

/// Creates schema `schema` and applies the migrations not applied yet;
/// returns how many it applied.
///
/// # Errors
///
/// [`MigrateError`]; nothing is applied then.
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<usize, MigrateError> {
    migrate::run(
        pool,
        schema,
        &format!("example-order-intake:migrate:{schema}"),
        MIGRATIONS,
    )
    .await
}
