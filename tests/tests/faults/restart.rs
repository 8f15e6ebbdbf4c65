//! Item 3: the store restarts under load. 64 clients send `POST /orders`,
//! each key four times (duplicates in flight together), to a quickstart
//! process on a private PostgreSQL (`pg_ctl restart -m fast`, what
//! `pg_ctlcluster ... restart` does) or a private Redis with AOF
//! (`appendfsync always`; SIGKILL and start again). While the store is
//! down the answers are 503 with `Retry-After`; never a replayed 5xx, never
//! a 500, never a duplicate effect; throughput is back within 5 s of the
//! store's return.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use example_support::testing;
use http::StatusCode;

use super::env::{self, Figures, Journal};
use super::redis_server::{Persistence, PrivateRedis};
use super::services::{self, Store};

const CLIENTS: usize = 64;
const SENDS_PER_KEY: usize = 4;
/// The lease of the restart cases: the quickstart's default, longer than a
/// restart, so the final write of an attempt cut by the restart is retried
/// while its lease still holds.
const LEASE: Duration = Duration::from_secs(10);
/// The bucket of the throughput series.
const BUCKET: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Answer {
    at: Duration,
    status: Option<StatusCode>,
    replayed: bool,
    retry_after: bool,
}

/// What the restart did: when it began and when the store answered again,
/// relative to the start of the load.
struct Outage {
    from: Duration,
    to: Duration,
}

async fn under_load<R>(store: Store, restart: R) -> Figures
where
    R: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send>>,
{
    let journal = Journal::new();
    let http = testing::client();
    let server = services::quickstart(&store, &journal, LEASE, &[]).await;
    let user = services::user();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, user) = (http.clone(), server.url("/orders"), user.clone());
            let (sent, stop) = (sent.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    let key = format!("restart-{}", n / SENDS_PER_KEY);
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        services::order_at(&http, &url, &user, &key, &key),
                    )
                    .await;
                    let at = start.elapsed();
                    let answer = match r {
                        Ok(Ok(reply)) => Answer {
                            at,
                            status: Some(reply.status),
                            replayed: reply.is_replay(),
                            retry_after: reply.headers.contains_key("retry-after"),
                        },
                        _ => Answer {
                            at,
                            status: None,
                            replayed: false,
                            retry_after: false,
                        },
                    };
                    answers.push(answer);
                    if answer.status == Some(StatusCode::SERVICE_UNAVAILABLE) {
                        // What a client does with Retry-After, shortened.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = start.elapsed();
    let down_for = restart().await;
    let outage = Outage {
        from,
        to: from + down_for,
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    answers.sort_by_key(|a| a.at);

    // Every answer is one the contract allows.
    let mut unavailable = 0;
    for a in &answers {
        match (a.status, a.replayed) {
            (Some(StatusCode::CREATED), _) | (Some(StatusCode::CONFLICT), false) => {}
            (Some(StatusCode::SERVICE_UNAVAILABLE), false) => {
                assert!(a.retry_after, "a 503 without Retry-After at {:?}", a.at);
                unavailable += 1;
            }
            (Some(s), true) => panic!("a replayed {s} at {:?}", a.at),
            (other, _) => panic!("unexpected answer {other:?} at {:?}", a.at),
        }
    }
    // How many requests met the store down depends on where in their
    // round trip the restart fell (3 to 440 per restart in the full run);
    // the restart itself is checked by the server's start time (PostgreSQL)
    // or a new process (Redis), and every answer above was checked.

    // Throughput: answers that executed or replayed, per bucket.
    let ok = |a: &&Answer| a.status == Some(StatusCode::CREATED);
    let count_in = |from: Duration, to: Duration| {
        answers
            .iter()
            .filter(ok)
            .filter(|a| a.at >= from && a.at < to)
            .count()
    };
    let warm = Duration::from_millis(500);
    let baseline = count_in(warm, outage.from) as f64
        / ((outage.from - warm).as_secs_f64() / BUCKET.as_secs_f64());
    let mut back = None;
    let mut t = outage.to;
    while t < outage.to + Duration::from_secs(6) {
        if count_in(t, t + BUCKET) as f64 >= baseline * 0.5 {
            back = Some(t + BUCKET - outage.to);
            break;
        }
        t += BUCKET;
    }
    let back =
        back.unwrap_or_else(|| panic!("throughput not back (baseline {baseline:.1}/bucket)"));
    assert!(
        back <= Duration::from_secs(5),
        "throughput back after {back:?}"
    );

    // Effects from the journal: one per key.
    let mut per_key = std::collections::HashMap::<String, usize>::new();
    for l in journal.lines() {
        if let Some(sku) = l.rsplit(' ').next() {
            *per_key.entry(sku.to_owned()).or_default() += 1;
        }
    }
    let duplicates: usize = per_key.values().map(|c| c - 1).sum();
    assert_eq!(duplicates, 0, "duplicate effects");
    Figures {
        case: "store-restart",
        store: store.name(),
        trials: 1,
        faults: 1,
        duplicates,
        guarantee: "0",
        recoveries: vec![back],
        extra: vec![
            ("requests", answers.len().to_string()),
            ("keys", per_key.len().to_string()),
            ("unavailable_503", unavailable.to_string()),
            ("store_down_ms", down_for.as_millis().to_string()),
            ("baseline_per_250ms", format!("{baseline:.0}")),
        ],
        ..Figures::default()
    }
}

/// Folds the figures of several runs into one.
fn merged(runs: Vec<Figures>) -> Option<Figures> {
    let mut it = runs.into_iter();
    let mut all = it.next()?;
    for f in it {
        all.trials += f.trials;
        all.faults += f.faults;
        all.duplicates += f.duplicates;
        all.recoveries.extend(f.recoveries);
        for (k, v) in f.extra {
            if let Some(e) = all.extra.iter_mut().find(|(n, _)| *n == k) {
                e.1 = format!("{} {v}", e.1);
            }
        }
    }
    Some(all)
}

pub async fn postgres() -> Option<Figures> {
    if !super::pg::available() {
        return None;
    }
    let pg = Arc::new(super::pg::PrivatePostgres::start().await);
    let mut runs = Vec::new();
    for _ in 0..env::trials(1, 5) {
        let restarting = pg.clone();
        runs.push(
            under_load(Store::Postgres(pg.url()), move || {
                Box::pin(async move { restarting.restart().await })
            })
            .await,
        );
    }
    merged(runs)
}

pub async fn redis() -> Option<Figures> {
    if !super::redis_server::available() {
        return None;
    }
    let redis = Arc::new(std::sync::Mutex::new(PrivateRedis::start(
        Persistence::AofAlways,
    )));
    let url = redis.lock().unwrap().url();
    let mut runs = Vec::new();
    for _ in 0..env::trials(1, 5) {
        let restarting = redis.clone();
        runs.push(
            under_load(Store::Redis(url.clone()), move || {
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || restarting.lock().unwrap().restart())
                        .await
                        .unwrap()
                })
            })
            .await,
        );
    }
    merged(runs)
}
