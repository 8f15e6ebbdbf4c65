//! Store timing: the one writer of `idempotency_store_operation_seconds`.
//!
//! Every front end (the [`Idempotent`](crate::Idempotent) runner, the HTTP
//! layer of `idempotency-tower`) measures its store calls through this module,
//! so the histogram has one name and one label set whichever store and front
//! end are in use. Stores time their own statements or scripts under
//! store-specific names (`idempotency_postgres_statement_seconds`,
//! `idempotency_redis_script_seconds`); they never write this one.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `idempotency_store_operation_seconds` | histogram | `operation` (`claim`, `claim_wait`, `complete`, `fail`, `release`, `renew`, `get`, `mark_corrupted`, `resolve`), `result` (`ok`, `error`, `cancelled`) |
//!
//! `result="ok"` includes the store's *answers* that are not faults
//! ([`StoreError::LeaseLost`], [`StoreError::NotFound`],
//! [`StoreError::Conflict`]); `error` is every other error, a timeout
//! included; `cancelled` is a call dropped before it answered. No label ever
//! holds a key, a key hash or a scope. The recorder is whatever the
//! application installed with the `metrics` facade (none: nothing is kept).
//!
//! [`MeteredStore`] is the decorator, in the style of `object_store`'s
//! `ThrottledStore`: it wraps any store and measures each call it forwards.
//!
//! ```
//! use idempotency_core::{IdempotencyStore, MemoryStore, metered::MeteredStore};
//!
//! let store = MeteredStore::new(MemoryStore::new());
//! let _inner: &MemoryStore = store.get_ref();
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, Observed, Record,
    Resolution, StorageKey, StoreError,
};

/// Histogram of store call latency in seconds, labelled `operation` and
/// `result`.
pub const STORE_OPERATION_SECONDS: &str = "idempotency_store_operation_seconds";

/// Awaits one store call and records its latency and result under
/// `operation`, also when the call is dropped before it answers
/// (`result="cancelled"`).
///
/// For a call that is not a single trait method (a claim that waits for the
/// attempt in flight is timed whole, as `claim_wait`).
pub async fn measure<T, F>(operation: &'static str, fut: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut probe = Probe {
        operation,
        start: Instant::now(),
        result: "cancelled",
    };
    let out = fut.await;
    probe.result = result_label(&out);
    out
}

fn result_label<T>(out: &Result<T, StoreError>) -> &'static str {
    match out {
        Ok(_) | Err(StoreError::LeaseLost | StoreError::NotFound | StoreError::Conflict) => "ok",
        Err(_) => "error",
    }
}

/// Records on drop, so a call cut short is counted too.
struct Probe {
    operation: &'static str,
    start: Instant,
    result: &'static str,
}

impl Drop for Probe {
    fn drop(&mut self) {
        metrics::histogram!(
            STORE_OPERATION_SECONDS,
            "operation" => self.operation,
            "result" => self.result
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}

/// A store whose every call is measured under
/// [`STORE_OPERATION_SECONDS`].
///
/// `wait_for_change` is forwarded unmeasured: it is a wait, not a store
/// operation, and its duration is the caller's choice.
#[derive(Clone, Debug, Default)]
pub struct MeteredStore<S> {
    inner: S,
}

impl<S> MeteredStore<S> {
    /// Measures the calls made to `inner`.
    pub const fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gives the wrapped store back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: IdempotencyStore> IdempotencyStore for MeteredStore<S> {
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        measure("claim", self.inner.claim(req))
    }

    fn complete(
        &self,
        lease: &Lease,
        completion: Completion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("complete", self.inner.complete(lease, completion))
    }

    fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("fail", self.inner.fail(lease, failure))
    }

    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure("release", self.inner.release(lease))
    }

    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        measure("renew", self.inner.renew(lease))
    }

    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        measure("get", self.inner.get(key))
    }

    fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        measure(
            "mark_corrupted",
            self.inner.mark_corrupted(key, observed, detail),
        )
    }

    fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> impl Future<Output = Result<Record, StoreError>> + Send {
        measure("resolve", self.inner.resolve(key, resolution))
    }

    fn wait_for_change(
        &self,
        key: &StorageKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.wait_for_change(key, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_answers_are_ok_and_faults_are_errors() {
        assert_eq!(result_label::<()>(&Ok(())), "ok");
        for answer in [
            StoreError::LeaseLost,
            StoreError::NotFound,
            StoreError::Conflict,
        ] {
            assert_eq!(result_label::<()>(&Err(answer)), "ok");
        }
        assert_eq!(
            result_label::<()>(&Err(StoreError::Timeout { source: None })),
            "error"
        );
    }
}
