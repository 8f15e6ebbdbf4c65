//! A store at capacity refuses new records (`StoreError::Capacity`): the
//! layer answers 503 `store-unavailable` with `Retry-After`, fails closed,
//! and keeps replaying what it already holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::MemoryStore;
use idempotency_tower::IdempotencyLayer;
use tower::ServiceExt;

async fn send(app: &Router, key: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::post("/things")
        .header("idempotency-key", key)
        .body(Body::empty())
        .unwrap();
    let (parts, body) = app.clone().oneshot(req).await.unwrap().into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_store_at_capacity_answers_503_with_retry_after() {
    // Room for one record (64 bytes of key and fingerprint), no more.
    let store = MemoryStore::builder().max_bytes(64).build();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/things",
            post(|State(runs): State<Arc<AtomicUsize>>| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, "made")
            }),
        )
        .layer(IdempotencyLayer::new(store.clone()))
        .with_state(runs.clone());

    let (status, _, body) = send(&app, "first").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(&body[..], b"made");
    assert!(
        store.bytes_used() > 64,
        "the completion was kept past the budget"
    );

    let (status, headers, body) = send(&app, "second").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(headers.contains_key(header::RETRY_AFTER));
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        problem["type"],
        "https://idempotency.rs/problems/store-unavailable"
    );
    assert_eq!(problem["status"], 503);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "fail closed: nothing ran");

    // What the store already holds is still replayed.
    let (status, headers, body) = send(&app, "first").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(&body[..], b"made");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
