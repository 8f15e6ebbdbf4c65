//! Pooled versus multiplexed connections, on a real Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`).
//!
//! Run with: `cargo bench -p idempotency-redis --bench modes`
//!
//! For each mode and concurrency level it runs the two hot paths of the
//! layer: a first request (claim + complete of a fresh key) and a duplicate
//! (claim of a completed key: a replay). It prints throughput and latency
//! percentiles as a Markdown table.

use std::time::{Duration, Instant};

use bytes::Bytes;
use idempotency_core::{
    Claim, ClaimRequest, Completion, Fingerprint, IdempotencyStore, Outcome, StorageKey,
};
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};

const OPS_PER_RUN: usize = 20_000;

fn request(key: StorageKey) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("bench", b"body"),
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(60),
        max_attempts: 3,
    }
}

fn fresh() -> StorageKey {
    StorageKey::from_segments(&[uuid::Uuid::new_v4().as_bytes()])
}

fn outcome() -> Completion {
    Completion::new(Outcome::Value(Bytes::from_static(
        br#"{"id":"ord_123","status":"created","total":4200}"#,
    )))
}

#[derive(Clone, Copy)]
enum Workload {
    FirstRequest,
    Replay,
}

async fn one(store: &RedisStore, workload: Workload, replay_key: StorageKey) {
    match workload {
        Workload::FirstRequest => {
            let Claim::Acquired { lease, .. } = store.claim(&request(fresh())).await.unwrap()
            else {
                panic!("fresh key");
            };
            store.complete(&lease, outcome()).await.unwrap();
        }
        Workload::Replay => {
            let claim = store.claim(&request(replay_key)).await.unwrap();
            assert!(matches!(claim, Claim::Completed(_)));
        }
    }
}

async fn run(store: &RedisStore, workload: Workload, concurrency: usize) -> (f64, Vec<Duration>) {
    let replay_key = fresh();
    let Claim::Acquired { lease, .. } = store.claim(&request(replay_key)).await.unwrap() else {
        panic!("replay key");
    };
    store.complete(&lease, outcome()).await.unwrap();
    // Warm up connections and the script cache.
    for _ in 0..200 {
        one(store, workload, replay_key).await;
    }
    let per_task = OPS_PER_RUN / concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                one(&store, workload, replay_key).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(OPS_PER_RUN);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    ((per_task * concurrency) as f64 / secs, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        println!("| mode | workload | concurrency | ops/s | p50 µs | p99 µs |");
        println!("|---|---|---|---:|---:|---:|");
        for (mode, name) in [
            (ConnectionMode::Multiplexed, "multiplexed"),
            (ConnectionMode::Pooled, "pooled (32)"),
        ] {
            let store = RedisStore::new(
                RedisConfig::new(url.clone())
                    .prefix(format!("bench-{}", uuid::Uuid::new_v4().simple()))
                    .mode(mode),
            )
            .unwrap();
            if let Err(e) = store.ping().await {
                eprintln!("skipping: redis unreachable ({e})");
                return;
            }
            for (workload, wname) in [
                (Workload::FirstRequest, "claim+complete"),
                (Workload::Replay, "replay"),
            ] {
                for concurrency in [1, 16, 64] {
                    let (ops, lat) = run(&store, workload, concurrency).await;
                    println!(
                        "| {name} | {wname} | {concurrency} | {ops:.0} | {:.0} | {:.0} |",
                        pct(&lat, 0.5),
                        pct(&lat, 0.99)
                    );
                }
            }
        }
    });
}
