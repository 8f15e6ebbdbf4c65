//! The HTTP behaviour suite on `PostgresStore` (`DATABASE_URL`), each test in
//! a schema of its own so clock moves never touch another test's records.

use std::time::{SystemTime, UNIX_EPOCH};

use idempotency_core::conformance::support;
use idempotency_postgres::PostgresStore;
use idempotency_postgres::sqlx;
use idempotency_postgres::sqlx::postgres::PgPoolOptions;

async fn store() -> Option<PostgresStore> {
    let url = support::database_url();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_lazy(&url)
        .expect("DATABASE_URL parses");
    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
        if support::in_ci() {
            panic!("PostgreSQL at {url} unreachable under CI: {e}");
        }
        println!("skipping: postgres unreachable");
        return None;
    }
    // Test schemas are `idem_t_<unix seconds>_<random>`; the store crate's
    // tests drop the ones older than an hour.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    let store = PostgresStore::builder()
        .schema(format!("idem_t_{secs}_{}", &rand[..12]))
        .build(pool)
        .expect("valid schema");
    store.migrate().await.expect("migrate");
    Some(store)
}

idempotency_tests::http_behaviour_suite!(store());
