//! Faults on a private `redis-server`: killed, restarted, frozen, absent at
//! start. Every failure is a typed, transient store error (an HTTP layer
//! answers 503), bounded by the configured timeouts, and the same store
//! recovers once Redis is back, with no restart of the application.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::server::{self, RedisServer};
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, Completion, Fingerprint, IdempotencyStore, Outcome, StorageKey,
    StoreError,
};
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};

const MODES: [ConnectionMode; 2] = [ConnectionMode::Multiplexed, ConnectionMode::Pooled];
const TIMEOUT: Duration = Duration::from_millis(300);

fn store(url: String, mode: ConnectionMode) -> RedisStore {
    RedisStore::new(
        RedisConfig::new(url)
            .prefix("faults")
            .mode(mode)
            .connect_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .pool_wait_timeout(TIMEOUT)
            .wait_poll_interval(Duration::from_secs(120)),
    )
    .unwrap()
}

fn req(key: StorageKey) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("faults", b""),
        lease: Duration::from_secs(60),
        retention: Duration::from_secs(600),
        max_attempts: 3,
    }
}

fn key() -> StorageKey {
    StorageKey::from_segments(&[uuid::Uuid::new_v4().as_bytes()])
}

fn assert_transient(r: Result<Claim, StoreError>, mode: ConnectionMode) -> StoreError {
    match r {
        Err(e @ (StoreError::Unavailable { .. } | StoreError::Timeout { .. })) => {
            assert!(e.is_transient());
            assert!(
                std::error::Error::source(&e).is_some(),
                "{e:?} keeps its source"
            );
            e
        }
        other => panic!("{mode:?}: expected Unavailable or Timeout, got {other:?}"),
    }
}

/// Claims until one succeeds (the store reconnects by itself).
async fn recovered(store: &RedisStore, r: &ClaimRequest) -> Claim {
    let start = Instant::now();
    loop {
        match store.claim(r).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "no recovery: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    if !server::available() {
        return;
    }
    for mode in MODES {
        let mut server = RedisServer::start();
        let store = store(server.url(), mode);
        let k = key();
        let r = req(k);
        assert!(matches!(
            store.claim(&r).await.unwrap(),
            Claim::Acquired { .. }
        ));

        server.kill();
        for _ in 0..3 {
            let start = Instant::now();
            assert_transient(store.claim(&req(key())).await, mode);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "bounded by the timeouts"
            );
        }

        server.restart();
        // Same store value, no restart of the application.
        let claim = recovered(&store, &r).await;
        // A primary without persistence forgot the claim: the key runs again.
        // (README: "What a restart without persistence loses".)
        assert!(
            matches!(
                claim,
                Claim::Acquired {
                    kind: ClaimKind::New,
                    ..
                }
            ),
            "{mode:?}: {claim:?}"
        );
        // Scripts were flushed by the restart: reloaded on NOSCRIPT.
        let Claim::Acquired { lease, .. } = store.claim(&req(key())).await.unwrap() else {
            panic!("fresh key");
        };
        store
            .complete(
                &lease,
                Completion::new(Outcome::Value(Bytes::from_static(b"ok"))),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_absent_at_start_then_started() {
    if !server::available() {
        return;
    }
    for mode in MODES {
        let port = server::free_port();
        let store = store(format!("redis://127.0.0.1:{port}"), mode);
        match store.ping().await {
            Err(StoreError::Unavailable { .. }) => {}
            other => panic!("{mode:?}: expected Unavailable, got {other:?}"),
        }
        let e = assert_transient(store.claim(&req(key())).await, mode);
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");

        let _server = RedisServer::start_on(port, &[]);
        let claim = recovered(&store, &req(key())).await;
        assert!(matches!(claim, Claim::Acquired { .. }));
        store.ping().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_then_recovers() {
    if !server::available() {
        return;
    }
    for mode in MODES {
        let server = RedisServer::start();
        let store = store(server.url(), mode);
        let r = req(key());
        assert!(matches!(
            store.claim(&r).await.unwrap(),
            Claim::Acquired { .. }
        ));

        server.pause();
        let start = Instant::now();
        let e = assert_transient(store.claim(&r).await, mode);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            start.elapsed()
        );
        if mode == ConnectionMode::Multiplexed {
            assert!(matches!(e, StoreError::Timeout { .. }), "{e:?}");
        }
        server.resume();

        // The lease taken before the freeze is still there: in flight.
        let claim = recovered(&store, &r).await;
        assert!(
            matches!(claim, Claim::InFlight { .. }),
            "{mode:?}: {claim:?}"
        );
    }
}

/// The change subscription reconnects after a restart, and waiters are
/// woken by notifications again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_subscription_survives_a_restart() {
    if !server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let a = store(server.url(), ConnectionMode::Multiplexed);
    let b = store(server.url(), ConnectionMode::Pooled);
    let live = |s: &RedisStore| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            loop {
                s.wait_for_change(&key(), Duration::from_millis(1))
                    .await
                    .ok();
                if s.change_subscription_live() {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "subscription down"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    live(&a).await;
    let before = a.change_subscriptions();
    server.restart();
    // The loss is noticed and the subscription established again: counted,
    // not sampled (a sampled "down" window can be shorter than a sleep on a
    // loaded machine).
    let start = Instant::now();
    while a.change_subscriptions() == before || !a.change_subscription_live() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "loss not noticed, or no new subscription"
        );
        // Keeps the subscriber task running.
        a.wait_for_change(&key(), Duration::from_millis(1))
            .await
            .ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let k = key();
    let r = req(k);
    let Claim::Acquired { lease, .. } = recovered(&b, &r).await else {
        panic!("claim");
    };
    // `a`'s command connection predates the restart: its first command may
    // find it broken (a transient error the caller sees once). Use it until
    // it answers, so the wait below starts on a working connection.
    let start = Instant::now();
    while let Err(e) = a.get(&k).await {
        assert!(e.is_transient(), "{e:?}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no recovery: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait_for_change(&k, Duration::from_secs(120)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.complete(
        &lease,
        Completion::new(Outcome::Value(Bytes::from_static(b"v"))),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("woken by the notification, not by its 120 s poll interval")
        .unwrap()
        .unwrap();
}
