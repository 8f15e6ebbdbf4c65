//! The reaper: batches, skipped locks, one reaper per schema, the background
//! task and its metric.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency_core::{
    ClaimRequest, ClockControl, Failure, IdempotencyStore, PurgeExpired, StorageKey,
};
use idempotency_postgres::PostgresStore;
use idempotency_postgres::sqlx::{self, AssertSqlSafe};

/// `n` completed records retained for one second (they expire once the clock
/// moves two seconds on).
async fn short_lived(store: &PostgresStore, n: usize) -> Vec<StorageKey> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let req = ClaimRequest {
            retention: Duration::from_secs(1),
            ..common::request(common::key(), 1, Duration::from_millis(500))
        };
        common::claim_and_complete(store, &req, common::value("v")).await;
        keys.push(req.key);
    }
    keys
}

async fn rows(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.records",
        store.schema()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_in_batches_and_keeps_live_records() {
    let Some(store) = common::store().await else {
        return;
    };
    short_lived(&store, 25).await;
    // Kept: a live completed record, a live lease, a corrupted record, a
    // failure still retained.
    let live = common::request(common::key(), 1, Duration::from_secs(3600));
    common::claim_and_complete(&store, &live, common::value("live")).await;
    common::acquire(
        &store,
        &common::request(common::key(), 1, Duration::from_secs(3600)),
    )
    .await;
    let corrupt = common::request(common::key(), 1, Duration::from_millis(500));
    let (l, _) = common::acquire(
        &store,
        &ClaimRequest {
            retention: Duration::from_secs(1),
            ..corrupt.clone()
        },
    )
    .await;
    store.complete(&l, common::value("x")).await.unwrap();
    store
        .mark_corrupted(
            &corrupt.key,
            idempotency_core::Observed::completed(l.fence),
            "gone",
        )
        .await
        .unwrap();
    let failed = common::request(common::key(), 1, Duration::from_secs(1));
    let (l, _) = common::acquire(&store, &failed).await;
    store.fail(&l, Failure::terminal("no")).await.unwrap();

    assert_eq!(
        store.purge_expired(10).await.unwrap(),
        0,
        "nothing expired yet"
    );
    store.advance(Duration::from_secs(2));
    assert_eq!(store.purge_expired(10).await.unwrap(), 10);
    assert_eq!(store.purge_expired(10).await.unwrap(), 10);
    assert_eq!(store.purge_expired(10).await.unwrap(), 5);
    assert_eq!(store.purge_expired(10).await.unwrap(), 0);
    assert_eq!(rows(&store).await, 4);
    assert!(store.get(&live.key).await.unwrap().is_some());
    assert!(store.get(&corrupt.key).await.unwrap().is_some());
    assert!(store.get(&failed.key).await.unwrap().is_some());
}

/// Rows locked by a concurrent transaction are skipped, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_locked_rows() {
    let Some(store) = common::store().await else {
        return;
    };
    let keys = short_lived(&store, 5).await;
    store.advance(Duration::from_secs(2));
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {}.records WHERE key = $1 FOR UPDATE",
        store.schema()
    )))
    .bind(&keys[0].as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), store.purge_expired(100))
        .await
        .expect("the reaper never waits on a locked row")
        .unwrap();
    assert_eq!(n, 4);
    blocker.rollback().await.unwrap();
    assert_eq!(store.purge_expired(100).await.unwrap(), 1);
}

/// While another reaper of the schema (any process) holds the reaper lock,
/// purging does nothing and returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reaper_per_schema() {
    let Some(store) = common::store().await else {
        return;
    };
    let other = common::other_process(&store).await;
    short_lived(&store, 3).await;
    store.advance(Duration::from_secs(2));
    other.advance(Duration::from_secs(2));
    let mut reaper = store.pool().begin().await.unwrap();
    let got: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext('idempotency-postgres'), hashtext($1))",
    )
    .bind(format!("reaper:{}", store.schema()))
    .fetch_one(&mut *reaper)
    .await
    .unwrap();
    assert!(got);
    assert_eq!(other.purge_expired(100).await.unwrap(), 0);
    assert_eq!(rows(&store).await, 3);
    // Another schema's reaper is not affected.
    let Some(elsewhere) = common::store().await else {
        return;
    };
    short_lived(&elsewhere, 2).await;
    elsewhere.advance(Duration::from_secs(2));
    assert_eq!(elsewhere.purge_expired(100).await.unwrap(), 2);
    reaper.rollback().await.unwrap();
    assert_eq!(other.purge_expired(100).await.unwrap(), 3);
}

#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<Count>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let c = self.0.lock().unwrap().entry(name).or_default().clone();
        metrics::Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The background task drains everything expired in batches, counts it in
/// `idempotency_postgres_reaped_total{schema}`, and stops on shutdown.
#[test]
fn background_reaper_drains_and_counts() {
    let counters = Counters::default();
    metrics::with_local_recorder(&counters, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Some(store) = common::store().await else {
                return;
            };
            short_lived(&store, 23).await;
            store.advance(Duration::from_secs(2));
            let reaper = store.spawn_reaper(Duration::from_millis(20), 5);
            for _ in 0..500 {
                if rows(&store).await == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                rows(&store).await,
                0,
                "the reaper drained every expired record"
            );
            assert!(!reaper.is_finished());
            reaper.shutdown().await;
            let metric = format!(
                "idempotency_postgres_reaped_total{{schema={}}}",
                store.schema()
            );
            assert_eq!(counters.get(&metric), 23);
        });
    });
}

/// A detached reaper keeps running without its handle; a dropped one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_reaper_keeps_running_and_dropped_one_stops() {
    let Some(store) = common::store().await else {
        return;
    };
    // Dropped at once: nothing is reaped by it.
    drop(store.spawn_reaper(Duration::from_millis(10), 5));
    short_lived(&store, 7).await;
    store.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rows(&store).await, 7, "a dropped reaper reaps nothing");
    store.spawn_reaper(Duration::from_millis(10), 5).detach();
    for _ in 0..500 {
        if rows(&store).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rows(&store).await, 0);
}
