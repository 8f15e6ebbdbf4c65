//! Micro-benchmarks of the HTTP layer without a network: one request through
//! an axum `Router` with and without `IdempotencyLayer` over `MemoryStore`
//! (the handler of the load benchmark: a counted map entry and a JSON body).
//!
//! Run with: `cargo bench -p idempotency-benches --bench layer`
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idempotency_core::MemoryStore;
use idempotency_tower::IdempotencyLayer;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct App {
    effects: Arc<Mutex<HashMap<String, u32>>>,
    next_id: Arc<AtomicU64>,
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

fn request(key: &str) -> Request<Body> {
    let body = format!(r#"{{"sku":"SKU-{key}","quantity":1,"note":"bench"}}"#);
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", format!("\"{key}\""))
        .body(Body::from(body))
        .unwrap()
}

async fn send(router: &Router, key: &str) -> (StatusCode, Bytes) {
    let res = router.clone().oneshot(request(key)).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let routes = || {
        Router::new()
            .route("/orders", post(create_order))
            .with_state(App::default())
    };
    let bare = routes();
    let memory = routes().layer(IdempotencyLayer::new(MemoryStore::new()).namespace("bench"));
    let (status, _) = rt.block_on(send(&memory, "replayed"));
    assert_eq!(status, StatusCode::CREATED);

    let mut g = c.benchmark_group("layer");
    g.bench_function("bare", |b| {
        b.iter(|| rt.block_on(async { black_box(send(&bare, "k").await) }))
    });
    g.bench_function("memory_replay", |b| {
        b.iter(|| rt.block_on(async { black_box(send(&memory, "replayed").await) }))
    });
    let mut n = 0u64;
    g.bench_function("memory_first_execution", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("new-{n}");
            rt.block_on(async { black_box(send(&memory, &key).await) })
        })
    });
    g.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
