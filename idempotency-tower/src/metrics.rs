//! Metric names and recording helpers (the `metrics` facade: install any
//! recorder, e.g. `metrics-exporter-prometheus`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `idempotency_requests_total` | counter | `outcome` ([`DecisionOutcome::as_str`](crate::DecisionOutcome::as_str)) |
//! | `idempotency_store_operation_seconds` | histogram | `operation` (`claim`, `claim_wait`, `complete`, `fail`, `release`, `renew`, `mark_corrupted`), `result` (`ok`, `error` — a timeout included, `cancelled` when the call was dropped before it answered) |
//!
//! No label ever holds a key, a key hash or a scope. The store histogram has
//! one writer, [`idempotency_core::metered`] (its decorator wraps the store
//! the lease engine drives; the claim is timed whole); the stores time their
//! own statements under store-specific names
//! (`idempotency_postgres_statement_seconds`, `idempotency_redis_script_seconds`).

use std::future::Future;
use std::time::Duration;

use idempotency_core::metered::measure;
use idempotency_core::{StoreError, with_timeout};

use crate::hook::DecisionOutcome;

/// Counter of handled requests by outcome.
pub const REQUESTS_TOTAL: &str = "idempotency_requests_total";

/// Histogram of store operation latency, in seconds (written by
/// [`idempotency_core::metered`], shared with the `Idempotent` runner).
pub use idempotency_core::metered::STORE_OPERATION_SECONDS;

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
    measure(operation, with_timeout(timeout, fut)).await
}
