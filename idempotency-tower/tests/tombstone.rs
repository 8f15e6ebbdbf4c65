//! Responses too large to store: the client gets everything, the record
//! becomes a tombstone, and replays answer the original status with the
//! allow-listed headers a stored response would have kept, without a body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::{IdempotencyKey, IdempotencyStore, MemoryStore, Outcome, RecordState};
use idempotency_tower::{IdempotencyLayer, KeyMaterial};
use tower::ServiceExt;

const LIMIT: usize = 64;

async fn create(State(runs): State<Arc<AtomicUsize>>) -> Response {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, "/orders/42"),
            (header::CONTENT_TYPE, "application/json"),
            (header::SET_COOKIE, "session=abc"),
        ],
        format!(
            "{{\"order\":42,\"run\":{n},\"pad\":\"{}\"}}",
            "x".repeat(4 * LIMIT)
        ),
    )
        .into_response()
}

async fn send(app: &Router) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::post("/orders")
        .header("idempotency-key", "big-1")
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
async fn a_tombstone_replays_status_and_allow_listed_headers() {
    let store = MemoryStore::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/orders", post(create))
        .layer(IdempotencyLayer::new(store.clone()).max_stored_response(LIMIT))
        .with_state(runs.clone());

    let (status, headers, body) = send(&app).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body.len() > LIMIT, "the first client gets the whole body");
    assert_eq!(headers[header::LOCATION], "/orders/42");
    assert!(headers.get("idempotent-replayed").is_none());

    for _ in 0..2 {
        let (status, headers, body) = send(&app).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[header::LOCATION], "/orders/42");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers["idempotent-replayed"], "true");
        assert!(headers.get(header::SET_COOKIE).is_none(), "never replayed");
        assert!(body.is_empty(), "a tombstone keeps no body");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a tombstone never re-executes"
    );

    // What the store holds: a tombstone with the allow-listed headers only.
    let key = IdempotencyLayer::new(MemoryStore::new()).storage_key(
        &http::Method::POST,
        "/orders",
        "",
        &KeyMaterial::Client(IdempotencyKey::new("big-1").unwrap()),
    );
    let record = store.get(&key).await.unwrap().expect("record");
    let RecordState::Completed(done) = record.state else {
        panic!("not completed: {:?}", record.state);
    };
    let Outcome::Tombstone {
        status, headers, ..
    } = done.outcome
    else {
        panic!("not a tombstone: {:?}", done.outcome);
    };
    assert_eq!(status, Some(201));
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"location") && names.contains(&"content-type"));
    assert!(!names.contains(&"set-cookie"), "{names:?}");
}
