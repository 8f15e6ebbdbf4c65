//! Metric names and recording helpers (the `metrics` facade: install any
//! recorder, e.g. `metrics-exporter-prometheus`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `idempotency_requests_total` | counter | `outcome` ([`DecisionOutcome::as_str`](crate::DecisionOutcome::as_str)) |
//! | `idempotency_store_operation_seconds` | histogram | `operation` (`claim`, `claim_wait`, `complete`, `fail`, `release`, `renew`, `mark_corrupted`), `result` (`ok`, `error`) |
//!
//! No label ever holds a key, a key hash or a scope.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use idempotency_core::StoreError;

use crate::hook::DecisionOutcome;

/// Counter of handled requests by outcome.
pub const REQUESTS_TOTAL: &str = "idempotency_requests_total";

/// Histogram of store operation latency, in seconds.
pub const STORE_OPERATION_SECONDS: &str = "idempotency_store_operation_seconds";

pub(crate) fn count_outcome(outcome: DecisionOutcome) {
    metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome.as_str()).increment(1);
}

/// Runs a store operation under a timeout and records its latency.
pub(crate) async fn timed<T, F>(
    operation: &'static str,
    timeout: Duration,
    fut: F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let start = Instant::now();
    let mut fut = std::pin::pin!(fut);
    // A store that answers on the first poll (in memory) needs no timer.
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    let out = match first {
        Poll::Ready(r) => r,
        Poll::Pending => match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout { source: None }),
        },
    };
    let result = match &out {
        Ok(_) | Err(StoreError::LeaseLost | StoreError::NotFound | StoreError::Conflict) => "ok",
        Err(_) => "error",
    };
    metrics::histogram!(STORE_OPERATION_SECONDS, "operation" => operation, "result" => result)
        .record(start.elapsed().as_secs_f64());
    out
}
