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

use idempotency_core::metered::{Measured, measure};
use idempotency_core::{StoreError, WithTimeout, with_timeout};

use crate::hook::DecisionOutcome;

/// Counter of handled requests by outcome.
pub const REQUESTS_TOTAL: &str = "idempotency_requests_total";

/// Histogram of store operation latency, in seconds (written by
/// [`idempotency_core::metered`], shared with the `Idempotent` runner).
pub use idempotency_core::metered::STORE_OPERATION_SECONDS;

/// One static metric key per outcome: the `metrics` macros build it from
/// literal labels without allocating, recorder or not.
macro_rules! count_static {
    ($outcome:expr; $($variant:ident => $label:literal),* $(,)?) => {
        match $outcome {
            $(
                DecisionOutcome::$variant => {
                    metrics::counter!("idempotency_requests_total", "outcome" => $label)
                        .increment(1);
                }
            )*
        }
    };
}

pub(crate) fn count_outcome(outcome: DecisionOutcome) {
    count_static!(outcome;
        Executed => "executed",
        Reclaimed => "reclaimed",
        Replayed => "replayed",
        InFlight => "in_flight",
        Mismatch => "mismatch",
        Fenced => "fenced",
        Corrupted => "corrupted",
        Released => "released",
        Failed => "failed",
        Rejected => "rejected",
        StoreUnavailable => "store_unavailable",
        PassedThrough => "passed_through",
    );
}

/// Runs a store operation under a timeout and records its latency (a named
/// future: wrapping the call does not double the size of the caller's).
pub(crate) fn timed<T, F>(
    operation: &'static str,
    timeout: Duration,
    fut: F,
) -> Measured<WithTimeout<F>>
where
    F: Future<Output = Result<T, StoreError>>,
{
    measure(operation, with_timeout(timeout, fut))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// Records the name and labels of every metric registered.
    #[derive(Default)]
    struct Keys(Mutex<Vec<String>>);

    impl Keys {
        fn push(&self, key: &Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(format!("{}{{{}}}", key.name(), labels.join(",")));
        }
    }

    impl Recorder for Keys {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.push(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.push(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.push(key);
            Histogram::noop()
        }
    }

    #[test]
    fn every_outcome_is_counted_under_its_name() {
        use DecisionOutcome::*;
        let all = [
            Executed,
            Reclaimed,
            Replayed,
            InFlight,
            Mismatch,
            Fenced,
            Corrupted,
            Released,
            Failed,
            Rejected,
            StoreUnavailable,
            PassedThrough,
        ];
        let keys = Keys::default();
        metrics::with_local_recorder(&keys, || all.iter().for_each(|o| count_outcome(*o)));
        let want: Vec<String> = all
            .iter()
            .map(|o| format!("{REQUESTS_TOTAL}{{outcome={}}}", o.as_str()))
            .collect();
        assert_eq!(*keys.0.lock().unwrap(), want);
    }
}
