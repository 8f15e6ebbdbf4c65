//! The handler and request of the layer's micro-benchmarks (`layer.rs`,
//! `allocs.rs`): the load benchmark's handler, a counted map entry and a
//! JSON body, behind `POST /orders`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;

/// The handler's state: executions per key (the side effect) and ids.
#[derive(Clone, Default)]
pub(crate) struct App {
    pub effects: Arc<Mutex<HashMap<String, u32>>>,
    pub next_id: Arc<AtomicU64>,
}

async fn create_order(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_matches('"')
        .to_owned();
    *app.effects.lock().unwrap().entry(key).or_default() += 1;
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let out = format!(
        r#"{{"id":{id},"request_bytes":{},"status":"created"}}"#,
        body.len()
    );
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/orders/{id}")),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        out,
    )
        .into_response()
}

/// `POST /orders` over `app`, without any layer.
pub(crate) fn routes(app: App) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(app)
}

/// The request of key `key`.
pub(crate) fn request(key: &str) -> Request<Body> {
    let body = format!(r#"{{"sku":"SKU-{key}","quantity":1,"note":"bench"}}"#);
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", format!("\"{key}\""))
        .body(Body::from(body))
        .unwrap()
}
