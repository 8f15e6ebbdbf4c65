//! Micro-benchmarks of the core hot path: key derivation, fingerprints,
//! `MemoryStore` claim + complete, and a replay.
//!
//! Run with: `cargo bench -p idempotency-benches --bench core`
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idempotency_core::{
    Claim, ClaimRequest, Completion, Fingerprint, FingerprintMode, IdempotencyKey,
    IdempotencyStore, KeySpec, MemoryStore, Outcome, StoredResponse,
};

fn json_body(target: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(serde_json::json!({
            "sku": format!("SKU-{i:06}"),
            "quantity": i % 17 + 1,
            "unit_price_cents": 1999 + i,
            "note": "deliver to the loading dock behind building C",
            "tags": ["express", "fragile"],
        }));
        let body =
            serde_json::to_vec(&serde_json::json!({"customer": "c-42", "lines": items})).unwrap();
        if body.len() >= target {
            return body;
        }
        i += 1;
    }
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.bench_function("parse_sf_string", |b| {
        b.iter(|| {
            idempotency_tower::parse_key_header(black_box(
                br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#,
            ))
        })
    });
    let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
    g.bench_function("storage_key", |b| {
        b.iter(|| {
            KeySpec::new("shop")
                .scope(black_box("tenant-1/alice"))
                .method("POST")
                .route("/orders")
                .client_key(black_box(&key))
                .storage_key()
        })
    });
    g.finish();
}

fn fingerprints(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    for size in [1024usize, 64 * 1024] {
        let body = json_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("canonical_json", size),
            &body,
            |b, body| {
                b.iter(|| {
                    Fingerprint::compute("POST", "/orders", black_box(body), &FingerprintMode::Body)
                })
            },
        );
    }
    g.finish();
}

fn memory_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let fp = Fingerprint::of_bytes("bench", b"");
    let response = Outcome::Response(StoredResponse {
        status: 201,
        headers: vec![("location".into(), Bytes::from_static(b"/orders/1"))],
        body: Bytes::from_static(br#"{"id":1,"sku":"A-1","quantity":2}"#),
        trailers: Vec::new(),
    });
    let mut n = 0u64;
    let mut g = c.benchmark_group("memory_store");
    g.bench_function("claim_complete", |b| {
        b.iter(|| {
            n += 1;
            let req = ClaimRequest {
                key: KeySpec::new("bench")
                    .derived([n.to_be_bytes()])
                    .storage_key(),
                fingerprint: fp,
                lease: Duration::from_secs(10),
                retention: Duration::from_secs(60),
                max_attempts: 3,
            };
            rt.block_on(async {
                let Claim::Acquired { lease, .. } = store.claim(&req).await.unwrap() else {
                    unreachable!("fresh key")
                };
                store
                    .complete(&lease, Completion::new(response.clone()))
                    .await
                    .unwrap();
            })
        })
    });
    let replay = ClaimRequest {
        key: KeySpec::new("bench").derived(["replayed"]).storage_key(),
        fingerprint: fp,
        lease: Duration::from_secs(10),
        retention: Duration::from_secs(3600),
        max_attempts: 3,
    };
    rt.block_on(async {
        let Claim::Acquired { lease, .. } = store.claim(&replay).await.unwrap() else {
            unreachable!()
        };
        store
            .complete(&lease, Completion::new(response.clone()))
            .await
            .unwrap();
    });
    g.bench_function("replay", |b| {
        b.iter(|| rt.block_on(async { black_box(store.claim(&replay).await.unwrap()) }))
    });
    g.finish();
}

criterion_group!(benches, keys, fingerprints, memory_store);
criterion_main!(benches);
