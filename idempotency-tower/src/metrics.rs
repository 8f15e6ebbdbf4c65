//! Metric names and recording helpers (the `metrics` facade: install any
//! recorder, e.g. `metrics-exporter-prometheus`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `idempotency_requests_total` | counter | `outcome` ([`DecisionOutcome::as_str`](crate::DecisionOutcome::as_str)) |
//! | `idempotency_store_operation_seconds` | histogram | `operation` (`claim`, `claim_wait`, `complete`, `fail`, `release`, `renew`, `mark_corrupted`), `result` (`ok`, `error`, `cancelled` when the call was cut by its timeout) |
//!
//! No label ever holds a key, a key hash or a scope. This module is the only
//! writer of `idempotency_store_operation_seconds`; the stores time their own
//! statements under store-specific names (`idempotency_postgres_statement_seconds`,
//! `idempotency_redis_script_seconds`).

use std::future::Future;
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, Observed, Record,
    Resolution, StorageKey, StoreError, with_timeout,
};

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
    measure(operation, with_timeout(timeout, fut)).await
}

/// Records the latency and result of one store call, also when the call is
/// dropped before it answers (`result="cancelled"`).
async fn measure<T, F>(operation: &'static str, fut: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut probe = Probe {
        operation,
        start: Instant::now(),
        result: "cancelled",
    };
    let out = fut.await;
    probe.result = match &out {
        Ok(_) | Err(StoreError::LeaseLost | StoreError::NotFound | StoreError::Conflict) => "ok",
        Err(_) => "error",
    };
    out
}

struct Probe {
    operation: &'static str,
    start: Instant,
    result: &'static str,
}

impl Drop for Probe {
    fn drop(&mut self) {
        metrics::histogram!(STORE_OPERATION_SECONDS, "operation" => self.operation, "result" => self.result)
            .record(self.start.elapsed().as_secs_f64());
    }
}

/// A store whose every call is measured: what the lease engine drives, so
/// renewals and final writes are in the histogram like the layer's own calls.
#[derive(Clone, Debug)]
pub(crate) struct Metered<St>(pub(crate) St);

impl<St: IdempotencyStore> IdempotencyStore for Metered<St> {
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        measure("claim", self.0.claim(req))
    }
    fn complete(
        &self,
        lease: &Lease,
        completion: Completion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("complete", self.0.complete(lease, completion))
    }
    fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("fail", self.0.fail(lease, failure))
    }
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("release", self.0.release(lease))
    }
    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        measure("renew", self.0.renew(lease))
    }
    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        measure("get", self.0.get(key))
    }
    fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure(
            "mark_corrupted",
            self.0.mark_corrupted(key, observed, detail),
        )
    }
    fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> impl Future<Output = Result<Record, StoreError>> + Send {
        measure("resolve", self.0.resolve(key, resolution))
    }
    fn wait_for_change(
        &self,
        key: &StorageKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.0.wait_for_change(key, timeout)
    }
}
