//! Regressions of the black-box review: the lease held while a slow body is
//! collected, final writes retried while the store stalls, router
//! rejections not stored, `no-store` not releasing by default, replayed
//! encodings, bounded request ids, and settings that cannot break the layer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, MemoryStore, Observed,
    Record, Resolution, StorageKey, StoreError,
};
use idempotency_tower::{Concurrency, Decision, IdempotencyLayer, ReleaseKey};
use tower::ServiceExt;

/// A `MemoryStore` whose completions or releases can be made to fail, the
/// way a row locked by another session or a store outage looks.
#[derive(Clone, Default)]
struct Stalling {
    inner: MemoryStore,
    fail_complete: Arc<AtomicBool>,
    fail_release: Arc<AtomicBool>,
    writes_refused: Arc<AtomicUsize>,
}

fn stalled() -> StoreError {
    StoreError::Timeout { source: None }
}

impl IdempotencyStore for Stalling {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.inner.claim(req).await
    }
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        if self.fail_complete.load(Ordering::SeqCst) {
            self.writes_refused.fetch_add(1, Ordering::SeqCst);
            return Err(stalled());
        }
        self.inner.complete(lease, completion).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        self.inner.fail(lease, failure).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.fail_release.load(Ordering::SeqCst) {
            self.writes_refused.fetch_add(1, Ordering::SeqCst);
            return Err(stalled());
        }
        self.inner.release(lease).await
    }
    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.inner.renew(lease).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.inner.mark_corrupted(key, observed, detail).await
    }
    async fn resolve(&self, key: &StorageKey, r: Resolution) -> Result<Record, StoreError> {
        self.inner.resolve(key, r).await
    }
}

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn create(State(c): State<Counter>) -> Response {
    let n = c.next();
    (
        StatusCode::CREATED,
        [("location", format!("/orders/{n}"))],
        format!("{{\"id\":{n}}}"),
    )
        .into_response()
}

/// Answers a body that streams for `secs`, chunk by chunk.
async fn slow_body(State(c): State<Counter>) -> Response {
    let n = c.next();
    let chunks = futures_util::stream::unfold(0u32, move |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, Infallible>(Bytes::from(format!("{n}-{i};"))), i + 1))
    });
    (StatusCode::CREATED, Body::from_stream(chunks)).into_response()
}

fn req(method: &str, path: &str, key: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap()
}

async fn send(app: &Router, r: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// The lease is renewed while the response body is collected: a body that
/// streams for longer than the lease never lets a duplicate run the handler
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_lease_keeps_the_record() {
    let counter = Counter::default();
    let app = Router::new()
        .route("/orders", post(slow_body))
        .with_state(counter.clone())
        .layer(IdempotencyLayer::new(MemoryStore::new()).lease(Duration::from_millis(300)));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, req("POST", "/orders", "slow-1")).await }
    });
    // Past three leases, the body is still streaming.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, _) = send(&app, req("POST", "/orders", "slow-1")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a duplicate found the attempt in flight"
    );
    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, replay) = send(&app, req("POST", "/orders", "slow-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, body);
    assert_eq!(counter.get(), 1, "the handler ran once");
}

/// A completion the store refuses for longer than several leases (a row
/// locked by another session) is retried while the lease is renewed: one
/// order, and the retry after the answer is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_completion_yields_one_order_and_a_replay() {
    let store = Stalling::default();
    store.fail_complete.store(true, Ordering::SeqCst);
    let counter = Counter::default();
    let app = Router::new()
        .route("/orders", post(create))
        .with_state(counter.clone())
        .layer(IdempotencyLayer::new(store.clone()).lease(Duration::from_millis(300)));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, req("POST", "/orders", "stall-1")).await }
    });
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) = send(&app, req("POST", "/orders", "stall-1")).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "in flight while the completion is retried"
        );
    }
    assert!(store.writes_refused.load(Ordering::SeqCst) >= 3, "retried");
    store.fail_complete.store(false, Ordering::SeqCst);
    let (status, _, body) = first.await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::CREATED, &b"{\"id\":1}"[..])
    );
    let (status, headers, replay) = send(&app, req("POST", "/orders", "stall-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, body);
    assert_eq!(counter.get(), 1, "one order");
}

/// A release the store refuses for a while is retried until it lands: the
/// corrected retry runs at once instead of finding the key held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_release_is_retried_until_it_lands() {
    let store = Stalling::default();
    store.fail_release.store(true, Ordering::SeqCst);
    let calls = Counter::default();
    let app = Router::new()
        .route(
            "/orders",
            post(|State(c): State<Counter>| async move {
                if c.next() == 1 {
                    StatusCode::UNPROCESSABLE_ENTITY.into_response()
                } else {
                    StatusCode::CREATED.into_response()
                }
            }),
        )
        .with_state(calls.clone())
        .layer(IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(30)));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, req("POST", "/orders", "rel-1")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.fail_release.store(false, Ordering::SeqCst);
    let (status, _, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, headers, _) = send(&app, req("POST", "/orders", "rel-1")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the key was released, not held for the lease"
    );
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(calls.get(), 2);
}

/// A router rejection (405 on a POST-only route) is not stored: the
/// correct request with the same key then runs.
#[tokio::test]
async fn a_method_not_allowed_is_not_stored() {
    let counter = Counter::default();
    let app = Router::new()
        .route("/orders", post(create))
        .with_state(counter.clone())
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    let (status, headers, _) = send(&app, req("PATCH", "/orders", "k-405")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!headers.contains_key("idempotent-replayed"));
    let (status, headers, _) = send(&app, req("PATCH", "/orders", "k-405")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        !headers.contains_key("idempotent-replayed"),
        "never replayed"
    );
    let (status, _, body) = send(&app, req("POST", "/orders", "k-405")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::CREATED, &b"{\"id\":1}"[..])
    );
}

/// `Cache-Control: no-store` (as a security-header layer adds everywhere)
/// does not turn idempotency off; the typed extension releases on purpose.
#[tokio::test]
async fn no_store_keeps_the_record_and_release_key_releases_it() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/orders",
            post(|State(c): State<Counter>| async move {
                let n = c.next();
                ([("cache-control", "no-store")], format!("{n}"))
            }),
        )
        .route(
            "/quotes",
            post(|State(c): State<Counter>| async move {
                (Extension(ReleaseKey), format!("{}", c.next()))
            }),
        )
        .with_state(counter.clone())
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    let (_, _, a) = send(&app, req("POST", "/orders", "ns-1")).await;
    let (_, headers, b) = send(&app, req("POST", "/orders", "ns-1")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(a, b);
    let (_, _, q1) = send(&app, req("POST", "/quotes", "q-1")).await;
    let (_, headers, q2) = send(&app, req("POST", "/quotes", "q-1")).await;
    assert!(
        !headers.contains_key("idempotent-replayed"),
        "released, ran again"
    );
    assert_ne!(q1, q2);
    assert_eq!(counter.get(), 3);
}

use axum::Extension;

/// Behind a compression layer a replay keeps the encoding of its bytes.
#[tokio::test]
async fn a_replay_keeps_content_encoding_language_and_vary() {
    let app = Router::new()
        .route(
            "/orders",
            post(|| async {
                (
                    StatusCode::CREATED,
                    [
                        ("content-encoding", "gzip"),
                        ("content-language", "de"),
                        ("vary", "accept-encoding"),
                    ],
                    Bytes::from_static(&[0x1f, 0x8b, 0, 1]),
                )
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    send(&app, req("POST", "/orders", "enc-1")).await;
    let (_, headers, body) = send(&app, req("POST", "/orders", "enc-1")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-language"], "de");
    assert_eq!(headers["vary"], "accept-encoding");
    assert_eq!(&body[..], &[0x1f, 0x8b, 0, 1]);
}

/// A client's `x-request-id` over 128 visible characters (or with spaces
/// or controls) is replaced by a generated id everywhere it is read.
#[tokio::test]
async fn an_unbounded_request_id_is_replaced() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/orders", post(|| async { "ok" }))
        .layer(IdempotencyLayer::new(MemoryStore::new()).decision_hook({
            let seen = seen.clone();
            move |d: &Decision| seen.lock().unwrap().push(d.correlation_id.clone())
        }));
    let huge = "a".repeat(300 * 1024);
    for (i, bad) in [huge.as_str(), "has space", &"b".repeat(129)]
        .into_iter()
        .enumerate()
    {
        let mut r = req("POST", "/orders", &format!("rid-{i}"));
        r.headers_mut().insert("x-request-id", bad.parse().unwrap());
        let (_, headers, _) = send(&app, r).await;
        let echoed = headers["x-request-id"].to_str().unwrap();
        assert_eq!(echoed.len(), 36, "a generated UUID, not the client's value");
    }
    let ok = "c".repeat(128);
    let mut r = req("POST", "/orders", "rid-ok");
    r.headers_mut().insert("x-request-id", ok.parse().unwrap());
    let (_, headers, _) = send(&app, r).await;
    assert_eq!(headers["x-request-id"], ok.as_str());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[..3].iter().all(|id| id.len() == 36), "{seen:?}");
    assert_eq!(seen[3], ok);
}

/// Settings at their extremes neither panic nor execute a key twice: a zero
/// lease is clamped to the minimum, an endless wait to the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_settings_never_panic_or_execute_twice() {
    let counter = Counter::default();
    let app = Router::new()
        .route("/orders", post(create))
        .with_state(counter.clone())
        .layer(
            IdempotencyLayer::new(MemoryStore::new())
                .lease(Duration::ZERO)
                .store_timeout(Duration::MAX)
                .concurrency(Concurrency::Wait(Duration::MAX)),
        );
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, req("POST", "/orders", "zero-lease")).await })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::CREATED, &b"{\"id\":1}"[..])
        );
    }
    assert_eq!(counter.get(), 1, "one execution for twelve duplicates");
}

/// Trailers (gRPC's `grpc-status`) are part of the outcome: stored and
/// replayed after the body.
#[tokio::test]
async fn trailers_are_stored_and_replayed() {
    let counter = Counter::default();
    let app = Router::new()
        .route(
            "/calls",
            post(|State(c): State<Counter>| async move {
                let n = c.next();
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("grpc-message", format!("call {n}").parse().unwrap());
                let frames = futures_util::stream::iter([
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"payload"))),
                    Ok(http_body::Frame::trailers(trailers)),
                ]);
                (
                    [("content-type", "application/grpc")],
                    Body::new(http_body_util::StreamBody::new(frames)),
                )
            }),
        )
        .with_state(counter.clone())
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    for replayed in [false, true] {
        let res = app
            .clone()
            .oneshot(req("POST", "/calls", "grpc-1"))
            .await
            .unwrap();
        assert_eq!(res.headers().contains_key("idempotent-replayed"), replayed);
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "call 1");
        assert_eq!(&collected.to_bytes()[..], b"payload");
    }
    assert_eq!(counter.get(), 1);
}
