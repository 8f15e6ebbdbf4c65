//! The handler-side completion ([`IdempotencyContext`]) and resource
//! verification before replays ([`IdempotencyLayer::verify_resource`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::{BoxError, ClockControl, IdempotencyStore, MemoryStore, RecordState};
use idempotency_tower::{
    Decision, DecisionOutcome, IdempotencyContext, IdempotencyLayer, KeyMaterial, PathParams,
};
use tower::ServiceExt;

const ROUTE: &str = "/things/{id}/make";

#[derive(Clone)]
struct App {
    store: MemoryStore,
    executions: Arc<AtomicUsize>,
    /// Whether the handler completes the record itself.
    self_complete: Arc<AtomicBool>,
    /// How long the handler sleeps after completing (heartbeats would run).
    linger: Duration,
}

/// Creates "thing {id}" and answers 201; its replays are stored as 200.
async fn make(
    State(app): State<App>,
    ctx: Option<Extension<IdempotencyContext>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let n = app.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!("{{\"thing\":\"{id}\",\"execution\":{n}}}");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::SET_COOKIE, HeaderValue::from_static("session=1"));
    let resource = format!("/things/{id}");
    if app.self_complete.load(Ordering::SeqCst) {
        let Extension(ctx) = ctx.expect("an executing request carries the context");
        let completion = ctx
            .completion(StatusCode::OK, &headers, body.clone())
            .with_resource(resource.clone());
        app.store
            .complete(ctx.lease(), completion)
            .await
            .expect("the lease owns the record");
        assert!(ctx.mark_completed(Some(resource)));
        tokio::time::sleep(app.linger).await;
    }
    (StatusCode::CREATED, headers, body).into_response()
}

fn app_with(
    layer: impl FnOnce(IdempotencyLayer<MemoryStore>) -> IdempotencyLayer<MemoryStore>,
    self_complete: bool,
    linger: Duration,
) -> (Router, App, Arc<Mutex<Vec<Decision>>>) {
    let app = App {
        store: MemoryStore::new(),
        executions: Arc::default(),
        self_complete: Arc::new(AtomicBool::new(self_complete)),
        linger,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let layer = layer(
        IdempotencyLayer::new(app.store.clone())
            .namespace("ctx-test")
            .key_source(PathParams::new(["id"]))
            .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.clone())),
    );
    let router = Router::new()
        .route(ROUTE, post(make))
        .layer(layer)
        .with_state(app.clone());
    (router, app, seen)
}

async fn send(router: &Router, id: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::post(format!("/things/{id}/make"))
        .body(Body::empty())
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn key(id: &str) -> idempotency_core::StorageKey {
    IdempotencyLayer::new(MemoryStore::new())
        .namespace("ctx-test")
        .storage_key(
            &http::Method::POST,
            ROUTE,
            "",
            &KeyMaterial::Derived(vec![id.as_bytes().to_vec()]),
        )
}

#[tokio::test]
async fn handler_completion_is_kept_and_replayed() {
    let (router, app, seen) = app_with(|l| l, true, Duration::ZERO);
    let (status, headers, body) = send(&router, "a").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(&body[..], br#"{"thing":"a","execution":1}"#);

    // The record holds what the handler stored: 200, allow-listed headers.
    let record = app.store.get(&key("a")).await.unwrap().expect("record");
    let RecordState::Completed(done) = record.state else {
        panic!("not completed: {:?}", record.state)
    };
    assert_eq!(done.resource.as_deref(), Some("/things/a"));

    let (status, headers, replayed) = send(&router, "a").await;
    assert_eq!(status, StatusCode::OK, "the handler chose 200 for replays");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert_eq!(replayed, body);
    assert_eq!(app.executions.load(Ordering::SeqCst), 1);

    let seen = seen.lock().unwrap();
    let outcomes: Vec<_> = seen.iter().map(|d| d.outcome).collect();
    assert_eq!(
        outcomes,
        [DecisionOutcome::Executed, DecisionOutcome::Replayed]
    );
    for d in seen.iter() {
        assert_eq!(d.resource.as_deref(), Some("/things/a"));
        assert_eq!(d.path_param("id"), Some("a"));
        assert_eq!(d.path, "/things/a/make");
    }
}

/// Heartbeats stop once the handler completed: a handler that lingers past
/// several heartbeats after its commit is not reported as fenced.
#[tokio::test]
async fn no_fencing_after_handler_completion() {
    let (router, app, seen) = app_with(
        |l| l.lease(Duration::from_millis(60)),
        true,
        Duration::from_millis(250),
    );
    let (status, _, _) = send(&router, "b").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(seen.lock().unwrap()[0].outcome, DecisionOutcome::Executed);
    let (status, headers, _) = send(&router, "b").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(app.executions.load(Ordering::SeqCst), 1);
}

/// Without `mark_completed`, the layer stores the response itself.
#[tokio::test]
async fn without_handler_completion_the_layer_stores() {
    let (router, app, seen) = app_with(|l| l, false, Duration::ZERO);
    assert_eq!(send(&router, "c").await.0, StatusCode::CREATED);
    let (status, headers, _) = send(&router, "c").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the layer replays what was sent"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(app.executions.load(Ordering::SeqCst), 1);
    assert!(seen.lock().unwrap()[0].resource.is_none());
}

fn checked(
    exists: Arc<AtomicBool>,
    fails: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
) -> impl Fn(IdempotencyLayer<MemoryStore>) -> IdempotencyLayer<MemoryStore> {
    move |l| {
        let (exists, fails, asked) = (exists.clone(), fails.clone(), asked.clone());
        l.verify_resource(move |resource: String| {
            let (exists, fails, asked) = (exists.clone(), fails.clone(), asked.clone());
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                assert!(resource.starts_with("/things/"));
                if fails.load(Ordering::SeqCst) {
                    return Err::<bool, BoxError>("database down".into());
                }
                Ok(exists.load(Ordering::SeqCst))
            }
        })
    }
}

/// A record that changes between the replay's read and its corruption mark
/// (here: while its resource is checked, the record expires and a new claim
/// re-creates it) is left alone: the late mark is refused (`Conflict`), the
/// answer is 503 with `Retry-After`, and the new record is not corrupted.
#[tokio::test]
async fn a_record_that_changed_before_its_mark_is_left_alone() {
    let (router, app, seen) = app_with(
        |l| {
            let store = l.store().clone();
            l.verify_resource(move |_resource: String| {
                let store = store.clone();
                async move {
                    store.advance(Duration::from_secs(2 * 24 * 3600));
                    let req = idempotency_core::ClaimRequest {
                        key: key("late"),
                        fingerprint: idempotency_core::Fingerprint::of_bytes("other", b""),
                        lease: Duration::from_secs(60),
                        retention: Duration::from_secs(3600),
                        max_attempts: 1,
                    };
                    let claim = store.claim(&req).await.unwrap();
                    assert!(matches!(claim, idempotency_core::Claim::Acquired { .. }));
                    Ok::<_, BoxError>(false)
                }
            })
        },
        true,
        Duration::ZERO,
    );
    assert_eq!(send(&router, "late").await.0, StatusCode::CREATED);
    let first = app.store.get(&key("late")).await.unwrap().unwrap();
    let (status, headers, body) = send(&router, "late").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(String::from_utf8_lossy(&body).contains("store-unavailable"));
    let now = app.store.get(&key("late")).await.unwrap().unwrap();
    assert!(
        matches!(now.state, RecordState::Pending(_)),
        "the new claim's record was marked: {:?}",
        now.state
    );
    assert!(now.fence > first.fence);
    assert_eq!(
        seen.lock().unwrap().last().map(|d| d.outcome),
        Some(DecisionOutcome::StoreUnavailable)
    );
}

#[tokio::test]
async fn a_missing_resource_corrupts_the_record() {
    let exists = Arc::new(AtomicBool::new(true));
    let fails = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let (router, app, seen) = app_with(
        checked(exists.clone(), fails.clone(), asked.clone()),
        true,
        Duration::ZERO,
    );
    assert_eq!(send(&router, "d").await.0, StatusCode::CREATED);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "executions are not checked"
    );
    assert_eq!(send(&router, "d").await.0, StatusCode::OK);
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // The check cannot answer: 503, the record is unchanged.
    fails.store(true, Ordering::SeqCst);
    let (status, headers, body) = send(&router, "d").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(String::from_utf8_lossy(&body).contains("store-unavailable"));
    let record = app.store.get(&key("d")).await.unwrap().unwrap();
    assert!(matches!(record.state, RecordState::Completed(_)));

    // The resource is gone: 500, corrupted, and it stays so.
    fails.store(false, Ordering::SeqCst);
    exists.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let (status, headers, body) = send(&router, "d").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(String::from_utf8_lossy(&body).contains("record-corrupted"));
    }
    let record = app.store.get(&key("d")).await.unwrap().unwrap();
    let RecordState::Corrupted(c) = record.state else {
        panic!("not corrupted: {:?}", record.state)
    };
    assert!(c.detail.contains("/things/d"), "{}", c.detail);
    // Nothing ran again, and even a resource that reappears does not unblock it.
    exists.store(true, Ordering::SeqCst);
    assert_eq!(
        send(&router, "d").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(app.executions.load(Ordering::SeqCst), 1);
    let outcomes: Vec<_> = seen.lock().unwrap().iter().map(|d| d.outcome).collect();
    assert_eq!(
        outcomes,
        [
            DecisionOutcome::Executed,
            DecisionOutcome::Replayed,
            DecisionOutcome::StoreUnavailable,
            DecisionOutcome::Corrupted,
            DecisionOutcome::Corrupted,
            DecisionOutcome::Corrupted,
        ]
    );
}

/// Records without a resource are replayed without asking the check.
#[tokio::test]
async fn records_without_resource_are_not_checked() {
    let asked = Arc::new(AtomicUsize::new(0));
    let (router, _app, _) = app_with(
        checked(
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            asked.clone(),
        ),
        false,
        Duration::ZERO,
    );
    assert_eq!(send(&router, "e").await.0, StatusCode::CREATED);
    let (status, headers, _) = send(&router, "e").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

/// A store whose renewal waits for the handler's "commit", as PostgreSQL's
/// does when the handler's transaction holds the record's row lock.
#[derive(Clone)]
struct RowLocked {
    inner: MemoryStore,
    renewing: Arc<tokio::sync::Notify>,
    committed: Arc<tokio::sync::Notify>,
}

impl IdempotencyStore for RowLocked {
    async fn claim(
        &self,
        req: &idempotency_core::ClaimRequest,
    ) -> Result<idempotency_core::Claim, idempotency_core::StoreError> {
        self.inner.claim(req).await
    }
    async fn complete(
        &self,
        lease: &idempotency_core::Lease,
        completion: idempotency_core::Completion,
    ) -> Result<(), idempotency_core::StoreError> {
        self.inner.complete(lease, completion).await
    }
    async fn fail(
        &self,
        lease: &idempotency_core::Lease,
        failure: idempotency_core::Failure,
    ) -> Result<(), idempotency_core::StoreError> {
        self.inner.fail(lease, failure).await
    }
    async fn release(
        &self,
        lease: &idempotency_core::Lease,
    ) -> Result<(), idempotency_core::StoreError> {
        self.inner.release(lease).await
    }
    async fn renew(
        &self,
        lease: &idempotency_core::Lease,
    ) -> Result<idempotency_core::Lease, idempotency_core::StoreError> {
        self.renewing.notify_one();
        self.committed.notified().await;
        self.inner.renew(lease).await
    }
    async fn get(
        &self,
        key: &idempotency_core::StorageKey,
    ) -> Result<Option<idempotency_core::Record>, idempotency_core::StoreError> {
        self.inner.get(key).await
    }
    async fn mark_corrupted(
        &self,
        key: &idempotency_core::StorageKey,
        observed: idempotency_core::Observed,
        detail: &str,
    ) -> Result<(), idempotency_core::StoreError> {
        self.inner.mark_corrupted(key, observed, detail).await
    }
    async fn resolve(
        &self,
        key: &idempotency_core::StorageKey,
        resolution: idempotency_core::Resolution,
    ) -> Result<idempotency_core::Record, idempotency_core::StoreError> {
        self.inner.resolve(key, resolution).await
    }
}

/// A renewal that waits for the handler (its transaction holds the row
/// lock) must not stop the handler from being polled: the handler commits,
/// the renewal then finds the record completed, and the request finishes at
/// once, not after the store timeout.
#[tokio::test]
async fn a_renewal_blocked_by_the_handler_does_not_stall_it() {
    let store = RowLocked {
        inner: MemoryStore::new(),
        renewing: Arc::default(),
        committed: Arc::default(),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler_store = store.clone();
    let handler = move |Extension(ctx): Extension<IdempotencyContext>| {
        let store = handler_store.clone();
        async move {
            // "complete_in" inside the transaction, then wait until a
            // heartbeat's renewal is queued behind the row lock ...
            let completion = ctx.completion(StatusCode::OK, &HeaderMap::new(), "done");
            store.inner.complete(ctx.lease(), completion).await.unwrap();
            store.renewing.notified().await;
            // ... and "commit", which releases it.
            store.committed.notify_one();
            ctx.mark_completed(None);
            (StatusCode::CREATED, "done")
        }
    };
    let router = Router::new().route(ROUTE, post(handler)).layer(
        IdempotencyLayer::new(store.clone())
            .key_source(PathParams::new(["id"]))
            .lease(Duration::from_millis(30))
            .store_timeout(Duration::from_secs(60))
            .decision_hook(move |d: &Decision| sink.lock().unwrap().push(d.outcome)),
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), send(&router, "locked"))
        .await
        .expect("the handler was kept polled while its renewal waited");
    assert_eq!(answered.0, StatusCode::CREATED);
    assert_eq!(
        *seen.lock().unwrap(),
        [DecisionOutcome::Executed],
        "not fenced"
    );
}
