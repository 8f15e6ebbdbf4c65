//! Which statements decide a claim, record state by record state: a new key
//! and every answer a claim gives without writing are one run of
//! `claim_fast.sql`; a record the claim may take (an abandoned lease, a
//! retryable failure, an expired record) falls through to `claim.sql`,
//! which takes it. An answer without a write neither rewrites the record
//! nor draws a fence (its row version and the fence sequence are read
//! before and after). Read off the store's own statement histogram
//! (`idempotency_postgres_statement_seconds{operation}`), one entry per
//! statement run, with a recorder of this test's own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency_core::peek::ReadFirst;
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Failure, IdempotencyStore, Observed, StorageKey,
};
use idempotency_postgres::PostgresStore;
use idempotency_postgres::sqlx::{self, AssertSqlSafe};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

const STATEMENT_SECONDS: &str = "idempotency_postgres_statement_seconds";

/// The `operation` of every statement run, in order.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

struct Entry(Arc<Mutex<Vec<String>>>, String);

impl HistogramFn for Entry {
    fn record(&self, _: f64) {
        self.0.lock().unwrap().push(self.1.clone());
    }
}

impl Recorder for Statements {
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
        if key.name() != STATEMENT_SECONDS {
            return Histogram::noop();
        }
        let operation = key
            .labels()
            .find(|l| l.key() == "operation")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        Histogram::from_arc(Arc::new(Entry(Arc::clone(&self.0), operation)))
    }
}

impl Statements {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Runs `test` on a current-thread runtime under this test's recorder.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce(Statements) -> F) {
    let statements = Statements::default();
    metrics::with_local_recorder(&statements, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(test(statements.clone()));
    });
}

async fn store(read_first: ReadFirst, fast: bool) -> Option<PostgresStore> {
    common::store_built(|b| b.read_first(read_first).fast_claim(fast)).await
}

/// The claim of `req` and the statements it ran.
async fn claim(
    store: &PostgresStore,
    statements: &Statements,
    req: &ClaimRequest,
) -> (Claim, Vec<String>) {
    statements.take();
    let claim = store.claim(req).await.expect("claim");
    (claim, statements.take())
}

/// What a write of `key` would change: its row's version (`xmin`) and the
/// last fence the schema's sequence handed out.
async fn written_state(store: &PostgresStore, key: &StorageKey) -> (Option<String>, i64) {
    let s = store.schema();
    let version = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT xmin::text FROM {s}.records WHERE key = $1"
    )))
    .bind(&key.as_bytes()[..])
    .fetch_optional(store.pool())
    .await
    .unwrap();
    let fence = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {s}.fences"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    (version, fence)
}

/// The claim of `req`, which must be one run of `claim_fast.sql` that
/// neither rewrote the record nor drew a fence.
async fn answered_without_a_write(
    store: &PostgresStore,
    statements: &Statements,
    req: &ClaimRequest,
) -> Claim {
    let before = written_state(store, &req.key).await;
    let (claim, ran) = claim(store, statements, req).await;
    assert_eq!(ran, fast(), "{claim:?}");
    assert_eq!(
        written_state(store, &req.key).await,
        before,
        "{claim:?} wrote"
    );
    claim
}

fn fast() -> Vec<String> {
    vec!["claim_fast".to_owned()]
}

fn fell_through() -> Vec<String> {
    vec!["claim_fast".to_owned(), "claim".to_owned()]
}

#[test]
fn a_new_key_and_every_answer_without_a_write_are_one_fast_statement() {
    recorded(|statements| async move {
        let Some(store) = store(ReadFirst::Never, true).await else {
            return;
        };
        let lease = Duration::from_secs(30);

        // Absent: inserted, fence drawn, lease as asked.
        let req = common::request(common::key(), 1, lease);
        let (none, fence_before) = written_state(&store, &req.key).await;
        assert_eq!(none, None);
        let (first, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, fast());
        let Claim::Acquired { lease: held, kind } = first else {
            panic!("a new key is acquired, got {first:?}");
        };
        assert_eq!(kind, ClaimKind::New);
        assert_eq!(held.attempt, 1);
        assert!(held.fence > u64::try_from(fence_before).unwrap());

        // In flight, same request.
        let again = answered_without_a_write(&store, &statements, &req).await;
        assert!(
            matches!(again, Claim::InFlight { attempt: 1, .. }),
            "{again:?}"
        );

        // Another request under the same key.
        let other = common::request(req.key, 2, lease);
        let mismatch = answered_without_a_write(&store, &statements, &other).await;
        assert!(matches!(mismatch, Claim::Mismatch), "{mismatch:?}");

        // Completed: the replay.
        store.complete(&held, common::value("done")).await.unwrap();
        let replay = answered_without_a_write(&store, &statements, &req).await;
        let Claim::Completed(done) = replay else {
            panic!("a replay, got {replay:?}");
        };
        assert_eq!(done.fence, held.fence);

        // Failed for good.
        let req = common::request(common::key(), 1, lease);
        let (held, _) = common::acquire(&store, &req).await;
        store.fail(&held, Failure::terminal("no")).await.unwrap();
        let failed = answered_without_a_write(&store, &statements, &req).await;
        assert!(matches!(failed, Claim::Failed(_)), "{failed:?}");

        // Corrupted.
        let req = common::request(common::key(), 1, lease);
        let (held, _) = common::acquire(&store, &req).await;
        store.complete(&held, common::value("done")).await.unwrap();
        store
            .mark_corrupted(&req.key, Observed::completed(held.fence), "bad bytes")
            .await
            .unwrap();
        let corrupted = answered_without_a_write(&store, &statements, &req).await;
        assert!(
            matches!(&corrupted, Claim::Corrupted { detail } if detail.contains("bad bytes")),
            "{corrupted:?}"
        );
    });
}

#[test]
fn a_record_the_claim_may_take_falls_through_to_the_general_statement() {
    recorded(|statements| async move {
        let Some(store) = store(ReadFirst::Never, true).await else {
            return;
        };

        // A retryable failure: retried.
        let req = common::request(common::key(), 1, Duration::from_secs(30));
        let (held, _) = common::acquire(&store, &req).await;
        store
            .fail(&held, Failure::retryable("later"))
            .await
            .unwrap();
        let (retry, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, fell_through());
        let Claim::Acquired { lease, kind } = retry else {
            panic!("a retry, got {retry:?}");
        };
        assert_eq!((kind, lease.attempt), (ClaimKind::Retry, 2));
        assert!(lease.fence > held.fence);

        // An abandoned lease: taken over, fencing the first holder off.
        let short = common::request(common::key(), 1, Duration::from_millis(200));
        let (abandoned, _) = common::acquire(&store, &short).await;
        store.advance(Duration::from_secs(1));
        let (takeover, ran) = claim(&store, &statements, &short).await;
        assert_eq!(ran, fell_through());
        let Claim::Acquired { lease, kind } = takeover else {
            panic!("a takeover, got {takeover:?}");
        };
        assert_eq!((kind, lease.attempt), (ClaimKind::Takeover, 2));
        assert!(lease.fence > abandoned.fence);
        assert!(
            store
                .complete(&abandoned, common::value("late"))
                .await
                .is_err()
        );

        // An abandoned lease with no attempts left: failed for good.
        let last = ClaimRequest {
            max_attempts: 1,
            ..common::request(common::key(), 1, Duration::from_millis(200))
        };
        common::acquire(&store, &last).await;
        store.advance(Duration::from_secs(1));
        let (spent, ran) = claim(&store, &statements, &last).await;
        assert_eq!(ran, fell_through());
        assert!(matches!(spent, Claim::Failed(_)), "{spent:?}");

        // A completed record past its retention: a new execution.
        let req = common::request(common::key(), 1, Duration::from_secs(30));
        let (held, _) = common::acquire(&store, &req).await;
        store.complete(&held, common::value("old")).await.unwrap();
        store.advance(Duration::from_secs(2 * 3600));
        let (fresh, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, fell_through());
        let Claim::Acquired { lease, kind } = fresh else {
            panic!("a new execution, got {fresh:?}");
        };
        assert_eq!((kind, lease.attempt), (ClaimKind::New, 1));
        assert!(lease.fence > held.fence);
    });
}

#[test]
fn a_peek_that_finds_nothing_goes_on_to_the_fast_statement() {
    recorded(|statements| async move {
        let Some(store) = store(ReadFirst::Always, true).await else {
            return;
        };
        let req = common::request(common::key(), 1, Duration::from_secs(30));
        let (first, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, ["peek", "claim_fast"]);
        let Claim::Acquired { lease, .. } = first else {
            panic!("acquired, got {first:?}");
        };
        store.complete(&lease, common::value("done")).await.unwrap();
        let (replay, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, ["peek"]);
        assert!(matches!(replay, Claim::Completed(_)), "{replay:?}");
    });
}

#[test]
fn without_the_fast_statement_every_claim_is_the_general_one() {
    recorded(|statements| async move {
        let Some(store) = store(ReadFirst::Never, false).await else {
            return;
        };
        let req = common::request(common::key(), 1, Duration::from_secs(30));
        let (first, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, ["claim"]);
        assert!(
            matches!(
                first,
                Claim::Acquired {
                    kind: ClaimKind::New,
                    ..
                }
            ),
            "{first:?}"
        );
        let (again, ran) = claim(&store, &statements, &req).await;
        assert_eq!(ran, ["claim"]);
        assert!(matches!(again, Claim::InFlight { .. }), "{again:?}");
    });
}
