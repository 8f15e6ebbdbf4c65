//! Cancellation safety: 10,000 operations are dropped at random points
//! (waiting for a connection, mid-command, mid-reply, during a `NOSCRIPT`
//! fallback to `EVAL`), then every following operation must get its own reply.
//!
//! Each record's stored outcome names its key, so a reply meant for another
//! request (the cross-talk a half-read pooled connection would cause) is
//! caught: a replay must return exactly this key's body, a read exactly this
//! key's fingerprint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::server::{self, RedisServer};
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, Completion, Fingerprint, IdempotencyStore, Outcome, StorageKey,
};
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};
use rand::Rng;

const CANCELLATIONS: usize = 10_000;
const WORKERS: usize = 32;
const POOL: usize = 8;

struct Fixture {
    key: StorageKey,
    fingerprint: Fingerprint,
    body: Bytes,
}

fn request(key: StorageKey, fingerprint: Fingerprint) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint,
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(600),
        max_attempts: 1,
    }
}

fn fixture(i: usize) -> Fixture {
    let key = StorageKey::from_segments(&[b"cancel".as_slice(), &i.to_be_bytes()]);
    // Large enough that replies take several reads.
    let body = Bytes::from(key.to_hex().repeat(256));
    Fixture {
        key,
        fingerprint: Fingerprint::of_bytes("cancel", &i.to_be_bytes()),
        body,
    }
}

/// Runs one random operation and checks that whatever reply it got is its own.
async fn operation(store: &RedisStore, fixtures: &[Fixture], choice: u32, pick: usize) {
    let f = &fixtures[pick % fixtures.len()];
    match choice % 4 {
        0 => match store.claim(&request(f.key, f.fingerprint)).await.unwrap() {
            Claim::Completed(c) => {
                assert_eq!(
                    c.outcome,
                    Outcome::Value(f.body.clone()),
                    "someone else's reply"
                );
            }
            other => panic!("expected a replay, got {other:?}"),
        },
        1 => {
            let rec = store.get(&f.key).await.unwrap().expect("record");
            assert_eq!(rec.fingerprint, f.fingerprint, "someone else's reply");
        }
        2 => {
            let key = StorageKey::from_segments(&[uuid::Uuid::new_v4().as_bytes()]);
            let fp = Fingerprint::of_bytes("fresh", key.as_bytes());
            match store.claim(&request(key, fp)).await.unwrap() {
                Claim::Acquired { lease, kind } => {
                    assert_eq!((kind, lease.attempt), (ClaimKind::New, 1));
                    let body = Bytes::from(key.to_hex());
                    store
                        .complete(&lease, Completion::new(Outcome::Value(body.clone())))
                        .await
                        .unwrap();
                    let rec = store.get(&key).await.unwrap().expect("record");
                    assert_eq!(rec.fingerprint, fp, "someone else's reply");
                }
                other => panic!("a fresh key must be acquired, got {other:?}"),
            }
        }
        _ => store.ping().await.unwrap(),
    }
}

async fn storm(mode: ConnectionMode) {
    if !server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::new(
        RedisConfig::new(server.url())
            .prefix("cancel")
            .mode(mode)
            .pool_size(POOL)
            .pool_wait_timeout(Duration::from_secs(10))
            .response_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let fixtures: Arc<Vec<Fixture>> = Arc::new((0..64).map(fixture).collect());
    for f in fixtures.iter() {
        let Claim::Acquired { lease, .. } =
            store.claim(&request(f.key, f.fingerprint)).await.unwrap()
        else {
            panic!("fixture claim");
        };
        store
            .complete(&lease, Completion::new(Outcome::Value(f.body.clone())))
            .await
            .unwrap();
    }

    // Keep flushing the script cache so cancellations also land inside the
    // NOSCRIPT → EVAL fallback.
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let stop = stop.clone();
        let url = server.url();
        tokio::spawn(async move {
            let mut conn = idempotency_redis::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _: () = idempotency_redis::redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let cancelled = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (store, fixtures) = (store.clone(), fixtures.clone());
        let (cancelled, finished) = (cancelled.clone(), finished.clone());
        workers.push(tokio::spawn(async move {
            while cancelled.load(Ordering::Relaxed) < CANCELLATIONS {
                assert!(
                    finished.load(Ordering::Relaxed) < 50 * CANCELLATIONS,
                    "operations are not being cancelled"
                );
                let (choice, pick, micros) = {
                    let mut rng = rand::rng();
                    let micros = if rng.random_bool(0.3) {
                        rng.random_range(0..20)
                    } else {
                        rng.random_range(0..1500)
                    };
                    (rng.random::<u32>(), rng.random::<u32>() as usize, micros)
                };
                let op = operation(&store, &fixtures, choice, pick);
                match tokio::time::timeout(Duration::from_micros(micros), op).await {
                    Err(_) => cancelled.fetch_add(1, Ordering::Relaxed),
                    Ok(()) => finished.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        w.await
            .expect("an operation got a wrong reply or failed during the storm");
    }
    stop.store(true, Ordering::Relaxed);
    flusher.await.unwrap();
    assert!(cancelled.load(Ordering::Relaxed) >= CANCELLATIONS);

    // Afterwards: every operation gets its own reply.
    let mut checks = Vec::new();
    for w in 0..WORKERS {
        let (store, fixtures) = (store.clone(), fixtures.clone());
        checks.push(tokio::spawn(async move {
            for i in 0..64u32 {
                operation(&store, &fixtures, i, w * 64 + i as usize).await;
            }
        }));
    }
    for c in checks {
        c.await
            .expect("a pooled operation got someone else's reply");
    }
    if let Some(status) = store.pool_status() {
        assert!(status.size <= POOL, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_cancellations_pooled() {
    storm(ConnectionMode::Pooled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_cancellations_multiplexed() {
    storm(ConnectionMode::Multiplexed).await;
}
