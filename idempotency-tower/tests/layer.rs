//! Behaviour of the layer that does not depend on the store backend: store
//! failures, corrupted records, derived keys, terminal failures, panics, the
//! decision hook. The store-independent HTTP suite lives in `idempotency-tests`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    Claim, ClaimRequest, Completion, IdempotencyStore, Lease, MemoryStore, Observed, Outcome,
    Record, Resolution, StorageKey, StoreError,
};
use idempotency_tower::{
    Decision, DecisionOutcome, IdempotencyLayer, JsonFields, PathParams, StoreFailureMode,
};
use tower::ServiceExt;

/// A MemoryStore that can be switched "down" (every call fails) or "hung"
/// (every call never answers): the fault a real backend shows when its
/// server goes away.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
}

impl Faulty {
    async fn gate(&self) -> Result<(), StoreError> {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            )));
        }
        Ok(())
    }
}

impl IdempotencyStore for Faulty {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.gate().await?;
        self.inner.claim(req).await
    }
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.complete(lease, completion).await
    }
    async fn fail(
        &self,
        lease: &Lease,
        failure: idempotency_core::Failure,
    ) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.fail(lease, failure).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.release(lease).await
    }
    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.gate().await?;
        self.inner.renew(lease).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.gate().await?;
        self.inner.get(key).await
    }
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.mark_corrupted(key, observed, detail).await
    }
    async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        self.gate().await?;
        self.inner.resolve(key, resolution).await
    }
}

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn create(State(c): State<Counter>, headers: HeaderMap, body: Bytes) -> Response {
    let n = c.0.fetch_add(1, Ordering::SeqCst) + 1;
    let want: u16 = headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(201);
    if headers.contains_key("x-panic") {
        panic!("handler panicked on purpose");
    }
    if let Some(ms) = headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = StatusCode::from_u16(want).unwrap();
    (
        status,
        [("set-cookie", "session=abc"), ("location", "/things/1")],
        format!("execution {n}: {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

fn app<St>(layer: IdempotencyLayer<St>, counter: Counter) -> Router
where
    St: IdempotencyStore + Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/things", post(create))
        .route("/estimates/{id}/versions/{v}/promote", post(create))
        .layer(layer)
        .with_state(counter)
}

fn post_req(path: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn problem_type(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn executes_once_then_replays_marked() {
    let counter = Counter::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), counter.clone());
    let (s1, h1, b1) = send(&app, post_req("/things", Some("k1"), r#"{"a":1}"#)).await;
    assert_eq!(s1, 201);
    assert!(h1.get("idempotent-replayed").is_none());
    assert!(
        h1.get("x-request-id").is_some(),
        "a request id is generated and echoed"
    );
    let (s2, h2, b2) = send(&app, post_req("/things", Some("k1"), r#"{ "a": 1 }"#)).await;
    assert_eq!(s2, 201);
    assert_eq!(b1, b2);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(h2["location"], "/things/1");
    assert!(h2.get("set-cookie").is_none());
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn store_down_fails_closed_with_503() {
    let store = Faulty::default();
    store.down.store(true, Ordering::SeqCst);
    let counter = Counter::default();
    let app = app(IdempotencyLayer::new(store.clone()), counter.clone());
    let (s, h, b) = send(&app, post_req("/things", Some("k"), "{}")).await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/store-unavailable"
    );
    assert_eq!(counter.get(), 0, "nothing ran");

    // Back up: the same key executes normally.
    store.down.store(false, Ordering::SeqCst);
    let (s, _, _) = send(&app, post_req("/things", Some("k"), "{}")).await;
    assert_eq!(s, 201);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn store_down_fails_open_when_asked() {
    let store = Faulty::default();
    store.down.store(true, Ordering::SeqCst);
    let counter = Counter::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let layer = IdempotencyLayer::new(store)
        .on_store_failure(StoreFailureMode::FailOpen)
        .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.outcome));
    let app = app(layer, counter.clone());
    let (s, _, b) = send(&app, post_req("/things", Some("k"), r#"{"x":1}"#)).await;
    assert_eq!(s, 201);
    assert!(
        String::from_utf8_lossy(&b).ends_with(r#"{"x":1}"#),
        "the handler got the buffered body"
    );
    let (s, h, _) = send(&app, post_req("/things", Some("k"), r#"{"x":1}"#)).await;
    assert_eq!(s, 201);
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(counter.get(), 2, "unprotected while the store is down");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![DecisionOutcome::StoreUnavailable; 2]
    );
}

#[tokio::test]
async fn hung_store_times_out_into_503() {
    let store = Faulty::default();
    store.hung.store(true, Ordering::SeqCst);
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(store).store_timeout(Duration::from_millis(50));
    let app = app(layer, counter.clone());
    let (s, _, b) = send(&app, post_req("/things", Some("k"), "{}")).await;
    assert_eq!(s, 503);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/store-unavailable"
    );
    assert_eq!(counter.get(), 0);
}

#[tokio::test]
async fn corrupted_record_answers_500_until_resolved() {
    let store = MemoryStore::new();
    let counter = Counter::default();
    let seen = Arc::new(Mutex::new(Vec::<Decision>::new()));
    let sink = seen.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.clone()));
    let app = app(layer, counter.clone());
    let (s, _, _) = send(&app, post_req("/things", Some("bad"), "{}")).await;
    assert_eq!(s, 201);
    let key_hex = seen.lock().unwrap()[0].key_hash.clone().unwrap();
    let key = StorageKey::from_hex(&key_hex).unwrap();
    let rec = store.get(&key).await.unwrap().unwrap();
    store
        .mark_corrupted(&key, Observed::of(&rec), "resource vanished")
        .await
        .unwrap();

    let (s, _, b) = send(&app, post_req("/things", Some("bad"), "{}")).await;
    assert_eq!(s, 500);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/record-corrupted"
    );
    assert_eq!(seen.lock().unwrap()[1].outcome, DecisionOutcome::Corrupted);

    store.resolve(&key, Resolution::Delete).await.unwrap();
    let (s, _, _) = send(&app, post_req("/things", Some("bad"), "{}")).await;
    assert_eq!(s, 201);
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn a_record_without_an_http_response_is_marked_corrupted() {
    let store = MemoryStore::new();
    let counter = Counter::default();
    let seen = Arc::new(Mutex::new(Vec::<Decision>::new()));
    let sink = seen.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.clone()));
    let app = app(layer, counter.clone());
    // A 401 releases the key: the record is gone, and the hook told its hash.
    let mut req = post_req("/things", Some("typed"), "{}");
    req.headers_mut().insert("x-status", "401".parse().unwrap());
    assert_eq!(send(&app, req).await.0, 401);
    assert_eq!(seen.lock().unwrap()[0].outcome, DecisionOutcome::Released);
    let key = StorageKey::from_hex(seen.lock().unwrap()[0].key_hash.as_ref().unwrap()).unwrap();

    // Other code completes that key with a typed value, not an HTTP response.
    let req = ClaimRequest {
        key,
        fingerprint: idempotency_core::Fingerprint::compute(
            "POST",
            "/things",
            b"{}",
            &idempotency_core::FingerprintMode::Body,
        )
        .unwrap(),
        lease: Duration::from_secs(10),
        retention: Duration::from_secs(60),
        max_attempts: 3,
    };
    let Claim::Acquired { lease, .. } = store.claim(&req).await.unwrap() else {
        panic!("expected a fresh claim");
    };
    store
        .complete(
            &lease,
            Completion::new(Outcome::Value(Bytes::from_static(b"1"))),
        )
        .await
        .unwrap();

    let (s, _, b) = send(&app, post_req("/things", Some("typed"), "{}")).await;
    assert_eq!(s, 500);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/record-corrupted"
    );
    let rec = store.get(&key).await.unwrap().unwrap();
    assert_eq!(rec.state.name(), "CORRUPTED");
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn last_attempt_failure_is_replayed_as_operation_failed() {
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).max_attempts(2);
    let app = app(layer, counter.clone());
    let fail = || {
        let mut r = post_req("/things", Some("f"), "{}");
        r.headers_mut().insert("x-status", "503".parse().unwrap());
        r
    };
    assert_eq!(send(&app, fail()).await.0, 503);
    assert_eq!(send(&app, fail()).await.0, 503);
    let (s, h, b) = send(&app, fail()).await;
    assert_eq!(s, 500);
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/operation-failed"
    );
    assert_eq!(counter.get(), 2, "no third execution");
}

#[tokio::test]
async fn panicking_handler_marks_a_retryable_failure() {
    let counter = Counter::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), counter.clone());
    let mut req = post_req("/things", Some("p"), "{}");
    req.headers_mut().insert("x-panic", "1".parse().unwrap());
    let app2 = app.clone();
    let joined = tokio::spawn(async move { app2.oneshot(req).await }).await;
    assert!(
        joined.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    let (s, _, _) = send(&app, post_req("/things", Some("p"), "{}")).await;
    assert_eq!(s, 201, "a retry executes again");
    assert_eq!(counter.get(), 2);
}

#[tokio::test]
async fn path_params_derive_the_key() {
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).key_source(PathParams::new(["id", "v"]));
    let app = app(layer, counter.clone());
    let path = "/estimates/E1/versions/3/promote";
    let (s1, _, b1) = send(&app, post_req(path, None, "{}")).await;
    let (s2, h2, b2) = send(&app, post_req(path, None, "{}")).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(b1, b2);
    assert_eq!(h2["idempotent-replayed"], "true");
    let (s3, h3, _) = send(
        &app,
        post_req("/estimates/E1/versions/4/promote", None, "{}"),
    )
    .await;
    assert_eq!(s3, 201);
    assert!(h3.get("idempotent-replayed").is_none());
    assert_eq!(counter.get(), 2);
    // A route without those parameters cannot derive a key.
    let (s, _, b) = send(&app, post_req("/things", None, "{}")).await;
    assert_eq!(s, 400);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/key-invalid"
    );
}

#[tokio::test]
async fn json_fields_derive_the_key() {
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(JsonFields::new(["/vendor", "/hash"]))
        .fingerprint(idempotency_core::FingerprintMode::None);
    let app = app(layer, counter.clone());
    let (s1, _, _) = send(
        &app,
        post_req("/things", None, r#"{"vendor":"v","hash":"h","n":1}"#),
    )
    .await;
    let (s2, h2, _) = send(
        &app,
        post_req("/things", None, r#"{"hash":"h","vendor":"v","n":2}"#),
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(counter.get(), 1);
    let (s, _, b) = send(&app, post_req("/things", None, r#"{"vendor":"v"}"#)).await;
    assert_eq!(s, 400);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/key-invalid"
    );
}

#[tokio::test]
async fn optional_key_passes_requests_without_one() {
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).key_required(false);
    let app = app(layer, counter.clone());
    assert_eq!(send(&app, post_req("/things", None, "{}")).await.0, 201);
    assert_eq!(send(&app, post_req("/things", None, "{}")).await.0, 201);
    assert_eq!(counter.get(), 2);
    // With a key it is still exactly once.
    assert_eq!(
        send(&app, post_req("/things", Some("o"), "{}")).await.0,
        201
    );
    let (_, h, _) = send(&app, post_req("/things", Some("o"), "{}")).await;
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(counter.get(), 3);
}

#[tokio::test]
async fn decisions_carry_hash_fence_and_request_id_never_the_key() {
    let seen = Arc::new(Mutex::new(Vec::<Decision>::new()));
    let sink = seen.clone();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .namespace("ns")
        .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.clone()));
    let app = app(layer, Counter::default());
    let mut req = post_req("/things", Some("raw-secret-key"), "{}");
    req.headers_mut()
        .insert("x-request-id", "req-1".parse().unwrap());
    let (_, h, _) = send(&app, req).await;
    assert_eq!(h["x-request-id"], "req-1");
    let _ = send(
        &app,
        post_req("/things", Some("raw-secret-key"), r#"{"other":1}"#),
    )
    .await;
    let _ = send(&app, post_req("/things", None, "{}")).await;
    let seen = seen.lock().unwrap();
    let outcomes: Vec<_> = seen.iter().map(|d| d.outcome).collect();
    assert_eq!(
        outcomes,
        [
            DecisionOutcome::Executed,
            DecisionOutcome::Mismatch,
            DecisionOutcome::Rejected
        ]
    );
    let first = &seen[0];
    assert_eq!(first.correlation_id, "req-1");
    assert!(first.fence.is_some_and(|f| f >= 1), "{:?}", first.fence);
    assert_eq!(first.attempt, Some(1));
    assert_eq!(first.route, "/things");
    assert_eq!(first.status, Some(StatusCode::CREATED));
    let hash = first.key_hash.as_deref().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!format!("{seen:?}").contains("raw-secret-key"));
    assert_eq!(seen[1].status, Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(seen[2].key_hash, None);
}

#[tokio::test]
async fn a_panicking_hook_never_changes_the_response() {
    let layer =
        IdempotencyLayer::new(MemoryStore::new()).decision_hook(|_: &Decision| panic!("sink bug"));
    let app = app(layer, Counter::default());
    assert_eq!(
        send(&app, post_req("/things", Some("h"), "{}")).await.0,
        201
    );
}

#[tokio::test]
async fn a_wait_that_times_out_is_409() {
    let counter = Counter::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).concurrency(
        idempotency_tower::Concurrency::Wait(Duration::from_millis(100)),
    );
    let app = app(layer, counter.clone());
    let slow = || {
        let mut r = post_req("/things", Some("w"), "{}");
        r.headers_mut()
            .insert("x-delay-ms", "1500".parse().unwrap());
        r
    };
    let first = {
        let app = app.clone();
        let req = slow();
        tokio::spawn(async move { send(&app, req).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, h, b) = send(&app, slow()).await;
    assert_eq!(s, 409);
    assert!(h.get("retry-after").is_some());
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/in-flight"
    );
    assert_eq!(first.await.unwrap().0, 201);
    assert_eq!(counter.get(), 1);
}

#[tokio::test]
async fn unreadable_or_unfingerprintable_bodies_are_400() {
    let counter = Counter::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), counter.clone());
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let req = Request::post("/things")
        .header("idempotency-key", "broken")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let (s, _, b) = send(&app, req).await;
    assert_eq!(s, 400);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/invalid-body"
    );

    let fields = IdempotencyLayer::new(MemoryStore::new())
        .fingerprint(idempotency_core::FingerprintMode::fields(["/sku"]));
    let app = self::app(fields, counter.clone());
    let (s, _, b) = send(&app, post_req("/things", Some("nj"), "not json")).await;
    assert_eq!(s, 400);
    assert_eq!(
        problem_type(&b),
        "https://idempotency.rs/problems/invalid-body"
    );
    assert_eq!(counter.get(), 0);
}

#[tokio::test]
async fn a_lease_lost_mid_handler_is_fenced_and_not_recorded() {
    let store = MemoryStore::new();
    let counter = Counter::default();
    let seen = Arc::new(Mutex::new(Vec::<Decision>::new()));
    let sink = seen.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .namespace("fence")
        .lease(Duration::from_millis(90))
        .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.clone()));
    let app = app(layer, counter.clone());
    // The layer's identity for a client key: namespace, scope and key.
    let key = idempotency_core::KeySpec::new("fence")
        .client_key(&idempotency_core::IdempotencyKey::new("fenced").unwrap())
        .storage_key();
    let mut req = post_req("/things", Some("fenced"), "{}");
    req.headers_mut()
        .insert("x-delay-ms", "300".parse().unwrap());
    let running = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, req).await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    // An operator resolves the stuck record while the handler runs.
    let before = store.resolve(&key, Resolution::Delete).await.unwrap();
    assert_eq!(before.state.name(), "PENDING");
    let (s, h, _) = running.await.unwrap();
    assert_eq!(s, 201, "the client still gets the handler's response");
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(seen.lock().unwrap()[0].outcome, DecisionOutcome::Fenced);
    assert!(store.get(&key).await.unwrap().is_none(), "nothing recorded");
    let (s, h, _) = send(&app, post_req("/things", Some("fenced"), "{}")).await;
    assert_eq!(s, 201);
    assert!(h.get("idempotent-replayed").is_none());
    assert_eq!(counter.get(), 2);
}
