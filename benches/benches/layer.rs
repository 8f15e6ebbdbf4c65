//! Micro-benchmarks of the HTTP layer without a network: one request through
//! an axum `Router` with and without `IdempotencyLayer` over `MemoryStore`
//! (the handler of the load benchmark: a counted map entry and a JSON body).
//!
//! Run with: `cargo bench -p idempotency-benches --bench layer`
#![allow(missing_docs)]

mod common;

use std::hint::black_box;

use axum::Router;
use axum::http::StatusCode;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use idempotency_core::MemoryStore;
use idempotency_tower::IdempotencyLayer;
use tower::ServiceExt;

async fn send(router: &Router, key: &str) -> (StatusCode, Bytes) {
    let res = router.clone().oneshot(common::request(key)).await.unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let routes = || common::routes(common::App::default());
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
