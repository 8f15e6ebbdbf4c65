//! The audit trail of the layer's decisions: one event per decision, written
//! through a bounded non-blocking buffer so a slow or failing trail never
//! delays or fails a request.
//!
//! With `DATABASE_URL` set, events go to the append-only, hash-chained
//! PostgreSQL trail (schema `audit`, migrated at start-up; verify it with
//! `cargo run -p idempotency-audit --features postgres --bin audit-verify`);
//! otherwise they are logged through `tracing` (target `audit`).

use idempotency_audit::postgres::PostgresSink;
use idempotency_audit::postgres::sqlx::postgres::PgPoolOptions;
use idempotency_audit::{BufferedSink, TracingSink};
use idempotency_core::BoxError;

/// Events the buffer holds before it starts dropping (and counting) them.
const CAPACITY: usize = 10_000;

/// The trail for `database_url` (`DATABASE_URL`), and a name for the start-up log.
///
/// # Errors
///
/// `DATABASE_URL` is set but the database cannot be reached or migrated.
pub(crate) async fn from_url(
    database_url: Option<&str>,
) -> Result<(BufferedSink, &'static str), BoxError> {
    let Some(url) = database_url else {
        return Ok((BufferedSink::new(TracingSink::new(), CAPACITY), "tracing"));
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| format!("audit trail: PostgreSQL at DATABASE_URL unreachable: {e}"))?;
    // Appends with the trail's writer role only, whatever DATABASE_URL connects as.
    let sink = PostgresSink::new(pool).with_least_privilege();
    sink.migrate().await?;
    Ok((BufferedSink::new(sink, CAPACITY), "postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracing_without_a_database() {
        let (_, kind) = from_url(None).await.unwrap();
        assert_eq!(kind, "tracing");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/test");
        let err = from_url(Some(&url)).await.unwrap_err();
        assert!(err.to_string().contains("audit trail"), "{err}");
    }
}
