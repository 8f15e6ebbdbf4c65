//! A claim cut short (the client went away, or the claim's time budget ran
//! out, while the store was still answering) is driven to the store's
//! answer on its own, and a lease it acquired is released: the record does
//! not stay `Pending` with nobody executing, and the retry runs at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use idempotency_core::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, MemoryStore, Observed,
    Record, Resolution, StorageKey, StoreError,
};
use idempotency_tower::IdempotencyLayer;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

/// A `MemoryStore` whose claims wait for a permit before they reach the
/// store, the way a slow network or a locked row looks from the layer.
#[derive(Clone)]
struct Gated {
    inner: MemoryStore,
    gate: Arc<Semaphore>,
    entered: Arc<Notify>,
    claims_done: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(Notify::new()),
            claims_done: Arc::default(),
        }
    }
}

impl IdempotencyStore for Gated {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.entered.notify_one();
        self.gate.acquire().await.expect("gate open").forget();
        let out = self.inner.claim(req).await;
        self.claims_done.fetch_add(1, Ordering::SeqCst);
        out
    }
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        self.inner.complete(lease, completion).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        self.inner.fail(lease, failure).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
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

async fn create(State(runs): State<Arc<AtomicUsize>>) -> (StatusCode, String) {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("{{\"id\":{n}}}"))
}

fn order(key: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap()
}

fn app(
    store: &Gated,
    runs: &Arc<AtomicUsize>,
    layer: fn(Gated) -> IdempotencyLayer<Gated>,
) -> Router {
    Router::new()
        .route("/orders", post(create))
        .with_state(Arc::clone(runs))
        .layer(layer(store.clone()))
}

/// The record of a claim that outlived its request: absent once the
/// detached claim has been answered and its lease let go.
async fn released(store: &Gated, claims: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.claims_done.load(Ordering::SeqCst) < claims || !store.inner.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut-short claim was not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_the_claim_leaves_no_pending_record() {
    let store = Gated::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(&store, &runs, |s| {
        IdempotencyLayer::new(s).lease(Duration::from_secs(60))
    });
    let request = tokio::spawn(app.clone().oneshot(order("gone-1")));
    store.entered.notified().await;
    // The client goes away while the store is answering the claim.
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    store.gate.add_permits(1);
    released(&store, 1).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing ran for the gone client"
    );

    // The retry runs at once, not after the 60 s lease.
    store.gate.add_permits(1);
    let res = app.clone().oneshot(order("gone-1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_past_its_budget_is_released_when_the_store_answers() {
    let store = Gated::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(&store, &runs, |s| {
        IdempotencyLayer::new(s)
            .lease(Duration::from_secs(60))
            .store_timeout(Duration::from_millis(100))
    });
    let res = app.clone().oneshot(order("late-1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    // The store answers the claim after the layer gave up on it.
    store.gate.add_permits(1);
    released(&store, 1).await;

    store.gate.add_permits(1);
    let res = app.clone().oneshot(order("late-1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
