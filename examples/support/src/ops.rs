//! The bodies of the operations endpoints: `/readyz` (the database
//! answers) and `/metrics` (Prometheus text). `/healthz` is `"ok\n"` and
//! needs nothing shared. A service keeps its own `#[utoipa::path]`
//! handlers, which call these.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the database answers `SELECT 1` within [`READY_TIMEOUT`].
pub async fn database_ready(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// Installs the process-wide Prometheus recorder; `None` (logged) when
/// one is installed already, and `/metrics` is then disabled.
pub fn install_metrics() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics is disabled");
            None
        }
    }
}

/// `/metrics`: the Prometheus text, or 404 when metrics are disabled.
pub fn metrics(handle: Option<&PrometheusHandle>) -> Response {
    match handle {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are disabled\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_metrics_are_404() {
        assert_eq!(metrics(None).status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn an_unreachable_database_is_not_ready() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        assert!(!database_ready(&pool).await);
    }
}
