//! Heap allocations per request through an axum `Router` with and without
//! `IdempotencyLayer` over `MemoryStore` (the handler of `layer.rs`):
//! counts, not times, so the figures repeat exactly on any machine state.
//!
//! Run with: `cargo bench -p idempotency-benches --bench allocs`
#![allow(missing_docs)]

mod common;

use std::alloc::System;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use idempotency_core::MemoryStore;
use idempotency_tower::IdempotencyLayer;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

async fn send(router: &Router, req: Request<Body>) -> StatusCode {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let _ = res.into_body().collect().await.unwrap().to_bytes();
    status
}

/// Allocations and bytes per request over `n` requests, the requests
/// themselves built outside the count.
fn per_request(
    rt: &tokio::runtime::Runtime,
    router: &Router,
    n: usize,
    key: impl Fn(usize) -> String,
    expect: StatusCode,
) -> (f64, f64) {
    let requests: Vec<_> = (0..n).map(|i| common::request(&key(i))).collect();
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for req in requests {
            assert_eq!(send(router, req).await, expect);
        }
    });
    let stats = region.change();
    let allocs = stats.allocations + stats.reallocations;
    let bytes = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize;
    (allocs as f64 / n as f64, bytes as f64 / n as f64)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let routes = || common::routes(common::App::default());
    let bare = routes();
    let memory = routes().layer(IdempotencyLayer::new(MemoryStore::new()).namespace("bench"));
    // Warm up: lazily built statics, the store's first allocations.
    per_request(
        &rt,
        &bare,
        1000,
        |i| format!("warm-{i}"),
        StatusCode::CREATED,
    );
    per_request(
        &rt,
        &memory,
        1000,
        |i| format!("warm-{i}"),
        StatusCode::CREATED,
    );
    let n = std::env::var("ALLOCS_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    // `ALLOCS_ONLY=bare|first` runs only that path (for a profiler:
    // `valgrind --tool=dhat` or `--tool=callgrind`).
    match std::env::var("ALLOCS_ONLY").as_deref() {
        Ok("first") => {
            let (allocs, bytes) =
                per_request(&rt, &memory, n, |i| format!("new-{i}"), StatusCode::CREATED);
            println!("memory, first execution: {allocs:.2} allocations, {bytes:.0} bytes");
            return;
        }
        Ok("bare") => {
            let (allocs, bytes) =
                per_request(&rt, &bare, n, |i| format!("b-{i}"), StatusCode::CREATED);
            println!("bare: {allocs:.2} allocations, {bytes:.0} bytes");
            return;
        }
        _ => {}
    }
    let rows = [
        (
            "bare",
            per_request(&rt, &bare, n, |i| format!("b-{i}"), StatusCode::CREATED),
        ),
        (
            "memory, first execution",
            per_request(&rt, &memory, n, |i| format!("new-{i}"), StatusCode::CREATED),
        ),
        (
            "memory, replay",
            per_request(&rt, &memory, n, |i| format!("new-{i}"), StatusCode::CREATED),
        ),
    ];
    println!("| path | allocations / request | bytes / request |");
    println!("|---|---:|---:|");
    for (name, (allocs, bytes)) in rows {
        println!("| {name} | {allocs:.2} | {bytes:.0} |");
    }
}
