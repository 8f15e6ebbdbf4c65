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
use std::pin::Pin;
use std::task::{Context, Poll};
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
/// attempt in flight is timed whole, as `claim_wait`). A named future, like
/// [`with_timeout`](crate::with_timeout), so wrapping a call does not double
/// the size of the caller's future.
pub fn measure<T, F>(operation: &'static str, fut: F) -> Measured<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    Measured {
        fut,
        probe: Some(Probe {
            operation,
            start: Instant::now(),
            result: "cancelled",
        }),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`measure`]: the call's output, recorded when it
    /// answers, or as `cancelled` when dropped before.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Measured<F> {
        #[pin]
        fut: F,
        probe: Option<Probe>,
    }
}

impl<T, F> Future for Measured<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        if let Some(mut probe) = this.probe.take() {
            probe.result = result_label(&out);
        }
        Poll::Ready(out)
    }
}

fn result_label<T>(out: &Result<T, StoreError>) -> &'static str {
    match out {
        Ok(_) | Err(StoreError::LeaseLost | StoreError::NotFound | StoreError::Conflict) => "ok",
        Err(_) => "error",
    }
}

/// Records on drop, so a call cut short is counted too.
#[derive(Debug)]
struct Probe {
    operation: &'static str,
    start: Instant,
    result: &'static str,
}

impl Drop for Probe {
    fn drop(&mut self) {
        record(
            self.operation,
            self.result,
            self.start.elapsed().as_secs_f64(),
        );
    }
}

/// The operations and results of this crate and the HTTP layer get a static
/// metric key each (the `metrics` macros build one from literal labels
/// without allocating); any other operation name is labelled at run time.
macro_rules! record_static {
    ($operation:expr, $result:expr, $seconds:expr; $($op:literal),* $(,)?) => {
        match ($operation, $result) {
            $(
                ($op, "ok") => metrics::histogram!(
                    "idempotency_store_operation_seconds", "operation" => $op, "result" => "ok"
                ).record($seconds),
                ($op, "error") => metrics::histogram!(
                    "idempotency_store_operation_seconds", "operation" => $op, "result" => "error"
                ).record($seconds),
                ($op, "cancelled") => metrics::histogram!(
                    "idempotency_store_operation_seconds", "operation" => $op, "result" => "cancelled"
                ).record($seconds),
            )*
            (operation, result) => metrics::histogram!(
                STORE_OPERATION_SECONDS, "operation" => operation, "result" => result
            ).record($seconds),
        }
    };
}

/// Records one store call under [`STORE_OPERATION_SECONDS`].
fn record(operation: &'static str, result: &'static str, seconds: f64) {
    record_static!(operation, result, seconds;
        "claim", "claim_wait", "complete", "fail", "release", "renew", "get", "mark_corrupted",
        "resolve");
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

    fn attempt_ended(&self, lease: &Lease) {
        self.inner.attempt_ended(lease);
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

#[cfg(test)]
mod key_tests {
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    #[derive(Default)]
    struct Keys(Mutex<Vec<String>>);

    impl Recorder for Keys {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(format!("{}{{{}}}", key.name(), labels.join(",")));
            Histogram::noop()
        }
    }

    #[test]
    fn static_and_run_time_keys_are_the_same_metric() {
        let keys = Keys::default();
        let ops = [
            "claim",
            "claim_wait",
            "complete",
            "fail",
            "release",
            "renew",
            "get",
            "mark_corrupted",
            "resolve",
            "an_operation_of_someone_else",
        ];
        let mut want = Vec::new();
        metrics::with_local_recorder(&keys, || {
            for op in ops {
                for result in ["ok", "error", "cancelled"] {
                    record(op, result, 0.001);
                    want.push(format!(
                        "{STORE_OPERATION_SECONDS}{{operation={op},result={result}}}"
                    ));
                }
            }
        });
        assert_eq!(*keys.0.lock().unwrap(), want);
    }
}
