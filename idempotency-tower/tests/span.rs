//! The `idempotency` span carries the outcome, the key hash and the fence,
//! never the raw key.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::post;
use idempotency_core::MemoryStore;
use idempotency_tower::IdempotencyLayer;
use tower::ServiceExt;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn span_records_outcome_hash_and_fence() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app: Router = Router::new()
        .route("/things", post(|| async { "done" }))
        .layer(IdempotencyLayer::new(MemoryStore::new()));
    for _ in 0..2 {
        let req = Request::post("/things")
            .header("idempotency-key", "very-secret-key")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("idempotency.outcome=\"executed\""), "{out}");
    assert!(out.contains("idempotency.outcome=\"replayed\""), "{out}");
    assert!(out.contains("idempotency.fence="), "{out}");
    assert!(out.contains("idempotency.key_hash="), "{out}");
    assert!(out.contains("http.route=/things"), "{out}");
    assert!(!out.contains("very-secret-key"), "{out}");
}
