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
use idempotency_core::MemoryStore;
use idempotency_core::conformance::support::GatedClaims;
use idempotency_tower::IdempotencyLayer;
use tower::ServiceExt;

/// Claims wait at a gate (closed): the test decides when the store answers.
type Gated = GatedClaims<MemoryStore>;

fn gated() -> Gated {
    GatedClaims::new(MemoryStore::new(), 0)
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
    while store.passed() < claims || !store.inner().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut-short claim was not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_the_claim_leaves_no_pending_record() {
    let store = gated();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = app(&store, &runs, |s| {
        IdempotencyLayer::new(s).lease(Duration::from_secs(60))
    });
    let request = tokio::spawn(app.clone().oneshot(order("gone-1")));
    store.until_arrived(1).await;
    // The client goes away while the store is answering the claim.
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    store.open(1);
    released(&store, 1).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing ran for the gone client"
    );

    // The retry runs at once, not after the 60 s lease.
    store.open(1);
    let res = app.clone().oneshot(order("gone-1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_past_its_budget_is_released_when_the_store_answers() {
    let store = gated();
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
    store.open(1);
    released(&store, 1).await;

    store.open(1);
    let res = app.clone().oneshot(order("late-1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
