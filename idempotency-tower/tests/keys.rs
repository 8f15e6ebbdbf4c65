//! One request, one key: every spelling of one resource is one record (or
//! refused), an ambiguous body never borrows another document's record,
//! the fingerprint counts the query only where its options say so, and a
//! request without the scope it was configured to have never runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::MemoryStore;
use idempotency_tower::{IdempotencyLayer, JsonFields};
use tower::ServiceExt;

const PROBLEMS: &str = "https://idempotency.rs/problems/";

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts its runs and answers 201 with the run number and the body.
async fn create(State(runs): State<Runs>, body: Bytes) -> Response {
    let n = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        format!("run {n}: {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

fn app(layer: IdempotencyLayer<MemoryStore>, runs: Runs) -> Router {
    Router::new()
        .route("/orders", post(create))
        .layer(layer)
        .with_state(runs)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn problem_type(&self) -> String {
        assert_eq!(
            self.headers["content-type"],
            "application/problem+json",
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn is_replay(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn post_json(uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(uri).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

// ---- 2. duplicate JSON member names ----------------------------------------

/// `{"sku":"zzz","sku":"s","quantity":1}` used to fingerprint as
/// `{"sku":"s","quantity":1}` (last wins) and replay its response.
#[tokio::test]
async fn a_body_with_a_repeated_member_is_refused_not_replayed() {
    let runs = Runs::default();
    let app = app(IdempotencyLayer::new(MemoryStore::new()), runs.clone());
    let first = send(
        &app,
        post_json("/orders", Some("k"), r#"{"sku":"s","quantity":1}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for body in [
        r#"{"sku":"zzz","sku":"s","quantity":1}"#,
        r#"{"sku":"zzz","\u0073ku":"s","quantity":1}"#,
        r#"{"quantity":1,"sku":"s","meta":{"a":1,"a":1}}"#,
        r#"{"quantity":1,"sku":"s","lines":[{"n":1},{"n":1,"n":2}]}"#,
    ] {
        let r = send(&app, post_json("/orders", Some("k"), body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!r.is_replay(), "{body}");
        assert_eq!(r.problem_type(), format!("{PROBLEMS}invalid-body"));
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{}",
            r.json()
        );
        // With a fresh key too: refused, never run.
        let r = send(&app, post_json("/orders", Some("fresh"), body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let detail = send(
        &app,
        post_json(
            "/orders",
            Some("k2"),
            r#"{"lines":[{"n":1},{"n":1,"n":2}]}"#,
        ),
    )
    .await
    .json();
    assert!(
        detail["detail"].as_str().unwrap().contains("/lines/1/n"),
        "{detail}"
    );
    assert_eq!(runs.get(), 1);
}

/// A key derived from JSON fields: a repeated member would have derived the
/// key of the last value.
#[tokio::test]
async fn a_derived_key_from_a_body_with_a_repeated_member_is_refused() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .key_source(JsonFields::new(["/sku"]))
        .fingerprint(idempotency_core::FingerprintMode::None);
    let app = app(layer, runs.clone());
    let first = send(&app, post_json("/orders", None, r#"{"sku":"s"}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let r = send(
        &app,
        post_json("/orders", None, r#"{"sku":"zzz","sku":"s"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.is_replay());
    assert_eq!(r.problem_type(), format!("{PROBLEMS}invalid-body"));
    assert_eq!(runs.get(), 1);
}
