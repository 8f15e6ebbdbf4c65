//! The script cache may be emptied at any moment (`SCRIPT FLUSH`, a restart,
//! a failover to a replica that never loaded the scripts): no operation may
//! fail for it. On a private `redis-server`, store operations run from many
//! tasks while another connection flushes the script cache in a tight loop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::server::{self, RedisServer};
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, Completion, Failure, Fingerprint, IdempotencyStore, Observed,
    Outcome, Resolution, StorageKey,
};
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};

const WORKERS: usize = 16;
const ROUNDS: usize = 100;

fn request(key: StorageKey) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("flush", key.as_bytes()),
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(600),
        max_attempts: 3,
    }
}

/// One round of every script: claim, renew, complete, replay, get, a
/// released key, a failed and retried one, a corrupted and resolved one.
async fn round(store: &RedisStore) {
    let key = StorageKey::from_segments(&[uuid::Uuid::new_v4().as_bytes()]);
    let r = request(key);
    let Claim::Acquired { lease, kind } = store.claim(&r).await.expect("claim") else {
        panic!("a fresh key is acquired");
    };
    assert_eq!(kind, ClaimKind::New);
    let lease = store.renew(&lease).await.expect("renew");
    let body = Bytes::from(key.to_hex());
    store
        .complete(&lease, Completion::new(Outcome::Value(body.clone())))
        .await
        .expect("complete");
    let Claim::Completed(done) = store.claim(&r).await.expect("replay") else {
        panic!("a completed key replays");
    };
    assert_eq!(done.outcome, Outcome::Value(body));
    assert!(store.get(&key).await.expect("get").is_some());
    store
        .mark_corrupted(&key, Observed::completed(done.fence), "flush test")
        .await
        .expect("mark_corrupted");
    store
        .resolve(&key, Resolution::Delete)
        .await
        .expect("resolve");
    let Claim::Acquired { lease, .. } = store.claim(&r).await.expect("claim again") else {
        panic!("a resolved key is acquired");
    };
    store
        .fail(&lease, Failure::retryable("again"))
        .await
        .expect("fail");
    let Claim::Acquired { lease, kind } = store.claim(&r).await.expect("retry") else {
        panic!("a retryable failure is retried");
    };
    assert_eq!(kind, ClaimKind::Retry);
    store.release(&lease).await.expect("release");
}

async fn storm(mode: ConnectionMode) {
    if !server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::new(
        RedisConfig::new(server.url())
            .prefix("flush")
            .mode(mode)
            .pool_size(8)
            .response_timeout(Duration::from_secs(10)),
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flushes = Arc::new(AtomicUsize::new(0));
    let flusher = {
        let (stop, flushes) = (stop.clone(), flushes.clone());
        let url = server.url();
        tokio::spawn(async move {
            let mut conn = idempotency_redis::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            // Bounded: until the workers are done, at most a million flushes.
            while !stop.load(Ordering::Relaxed) && flushes.load(Ordering::Relaxed) < 1_000_000 {
                let () = idempotency_redis::redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                flushes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                round(&store).await;
            }
        }));
    }
    let mut failed = None;
    for w in workers {
        if let Err(e) = w.await {
            failed.get_or_insert(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    flusher.await.unwrap();
    if let Some(e) = failed {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(
        flushes.load(Ordering::Relaxed) > 100,
        "the cache was flushed {} times",
        flushes.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_operation_fails_while_the_script_cache_is_flushed_multiplexed() {
    storm(ConnectionMode::Multiplexed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_operation_fails_while_the_script_cache_is_flushed_pooled() {
    storm(ConnectionMode::Pooled).await;
}
