//! A router wrapped with the idempotency layer records one audit event per decision.
#![cfg(feature = "tower")]

#[cfg(feature = "postgres")]
mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use idempotency_audit::decision::DECISION_SOURCE;
use idempotency_audit::{
    AuditEvent, AuditModes, Auditor, BufferedSink, MemorySink, Mode, Outcome, PointerRedactor,
    TracingSink,
};
use idempotency_core::MemoryStore;
use idempotency_tower::{DecisionHook, IdempotencyLayer};
use tower::ServiceExt;

fn app(hook: impl DecisionHook) -> Router {
    Router::new()
        .route(
            "/orders/{id}",
            post(|body: String| async move { (StatusCode::CREATED, format!("order {body}")) }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).decision_hook(hook))
}

async fn call(app: &Router, key: Option<&str>, body: &'static str) -> StatusCode {
    let mut req = Request::post("/orders/7").header("content-type", "text/plain");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    // Read the whole response, as a client would.
    res.into_body().collect().await.unwrap();
    status
}

/// Executed, replayed, mismatch, rejected: four requests, four decisions.
async fn four_requests(app: &Router) {
    assert_eq!(call(app, Some("k-1"), "a").await, StatusCode::CREATED);
    assert_eq!(call(app, Some("k-1"), "a").await, StatusCode::CREATED);
    assert_eq!(
        call(app, Some("k-1"), "b").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(call(app, None, "a").await, StatusCode::BAD_REQUEST);
}

fn check_four(events: &[AuditEvent]) {
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "idempotency.executed",
            "idempotency.replayed",
            "idempotency.mismatch",
            "idempotency.rejected"
        ]
    );
    let outcomes: Vec<_> = events.iter().map(|e| e.outcome.clone().unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Executed,
            Outcome::Replayed,
            Outcome::Mismatch,
            Outcome::Rejected
        ]
    );
    for e in events {
        assert_eq!(e.source, DECISION_SOURCE);
        assert_eq!(e.subject.as_deref(), Some("POST /orders/{id}"));
        assert!(e.correlation_id.as_deref().is_some_and(|c| !c.is_empty()));
    }
    let key = events[0].key_hash.clone().expect("a key hash");
    assert_eq!(key.len(), 64);
    assert!(!key.contains("k-1"));
    assert_eq!(events[1].key_hash.as_ref(), Some(&key));
    assert_eq!(events[2].key_hash.as_ref(), Some(&key));
    assert!(events[3].key_hash.is_none());
    let statuses: Vec<_> = events
        .iter()
        .map(|e| e.attributes["status"].clone())
        .collect();
    assert_eq!(statuses, [201, 201, 422, 400]);
    assert!(
        events[0].attributes["fence"]
            .as_u64()
            .is_some_and(|f| f >= 1),
        "{:?}",
        events[0].attributes["fence"]
    );
    assert_eq!(events[0].attributes["attempt"], 1);
}

#[tokio::test]
async fn buffered_sink_hook_records_one_event_per_decision() {
    let trail = MemorySink::new();
    let buffer = BufferedSink::new(trail.clone(), 100);
    let app = app(buffer.clone());
    four_requests(&app).await;
    buffer.flush().await.unwrap();
    check_four(&trail.events());
    assert_eq!(buffer.dropped(), 0);
}

#[tokio::test]
async fn memory_tracing_and_auditor_hooks() {
    let trail = MemorySink::new();
    let app_memory = app(trail.clone());
    four_requests(&app_memory).await;
    check_four(&trail.events());

    four_requests(&app(TracingSink::new())).await;

    // The auditor redacts and queues on its buffer, even for a type set to atomic.
    let durable = MemorySink::new();
    let logged = MemorySink::new();
    let auditor = Auditor::new(
        AuditModes::new(Mode::Atomic),
        durable.clone(),
        BufferedSink::new(logged.clone(), 100),
    )
    .with_redactor(PointerRedactor::new(["/attributes/route"]).unwrap());
    let app_auditor = app(auditor.clone());
    four_requests(&app_auditor).await;
    auditor.buffer().flush().await.unwrap();
    assert!(durable.is_empty());
    let events = logged.events();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e.attributes["route"] == "[REDACTED]"));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn decisions_land_in_the_hash_chain() {
    use idempotency_audit::postgres::StreamBy;

    let Some(sink) = common::sink().await else {
        return;
    };
    let stream = common::stream("decisions");
    let sink = sink.with_stream(StreamBy::Fixed(stream.clone()));
    let buffer = BufferedSink::new(sink.clone(), 100);
    let app = app(buffer.clone());
    four_requests(&app).await;
    buffer.flush().await.unwrap();
    assert_eq!(buffer.written(), 4);
    let report = sink.verify(&stream).await.unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.events, 4);
}
