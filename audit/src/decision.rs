//! Audit events for the decisions of `idempotency_tower::IdempotencyLayer`
//! (feature `tower`).
//!
//! The layer calls its [`DecisionHook`] once per request, inline and
//! synchronously, so only sinks that never wait implement it:
//! [`BufferedSink`] (the one to use in production, in front of any sink,
//! PostgreSQL included), [`MemorySink`], [`TracingSink`] and [`Auditor`],
//! which applies its redactor and queues the event on its buffer. Decision
//! events are therefore always fire-and-forget, whatever [`AuditModes`](crate::AuditModes)
//! says: the business facts that must commit with the business change are
//! recorded by the handler, in its transaction.
//!
//! Each decision becomes one event ([`decision_event`]):
//!
//! | event field | value |
//! |---|---|
//! | `type` | `idempotency.<outcome>`: `idempotency.executed`, `idempotency.replayed`, `idempotency.in_flight`, `idempotency.mismatch`, `idempotency.reclaimed`, `idempotency.fenced`, `idempotency.corrupted`, `idempotency.released`, `idempotency.failed`, `idempotency.rejected`, `idempotency.store_unavailable`, `idempotency.passed_through` |
//! | `source` | [`DECISION_SOURCE`] (`/idempotency`), so decisions form one stream in PostgreSQL |
//! | `subject` | `<METHOD> <route template>`, e.g. `POST /promotions/{id}` |
//! | `outcome` | the decision, as an [`Outcome`] |
//! | `key_hash`, `correlation_id` | from the decision (never the raw key) |
//! | `attributes` | `method`, `route`, and when known `status`, `fence`, `attempt`, `resource` (what the record points at: named by a handler that completed it, or the replayed record's); always `elapsed_ms` |
//!
//! ```
//! use idempotency_audit::{BufferedSink, MemorySink};
//! use idempotency_core::MemoryStore;
//! use idempotency_tower::IdempotencyLayer;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let trail = MemorySink::new(); // a PostgresSink in production
//! let layer = IdempotencyLayer::new(MemoryStore::new())
//!     .decision_hook(BufferedSink::new(trail.clone(), 10_000));
//! # drop(layer);
//! # });
//! ```

use idempotency_tower::{Decision, DecisionHook, DecisionOutcome};

use crate::event::{AuditEvent, Outcome};
use crate::modes::Auditor;
use crate::sink::buffered::BufferedSink;
use crate::sink::memory::MemorySink;
use crate::sink::tracing::TracingSink;

/// The `source` of decision events.
pub const DECISION_SOURCE: &str = "/idempotency";

/// The [`Outcome`] of a decision.
pub fn decision_outcome(outcome: DecisionOutcome) -> Outcome {
    match outcome {
        DecisionOutcome::Executed => Outcome::Executed,
        DecisionOutcome::Reclaimed => Outcome::Reclaimed,
        DecisionOutcome::Replayed => Outcome::Replayed,
        DecisionOutcome::InFlight => Outcome::InFlight,
        DecisionOutcome::Mismatch => Outcome::Mismatch,
        DecisionOutcome::Fenced => Outcome::Fenced,
        DecisionOutcome::Corrupted => Outcome::Corrupted,
        DecisionOutcome::Released => Outcome::Released,
        DecisionOutcome::Failed => Outcome::Failed,
        DecisionOutcome::Rejected => Outcome::Rejected,
        other => Outcome::from(other.as_str()),
    }
}

/// The audit event for one decision; see the [module docs](self) for the mapping.
pub fn decision_event(decision: &Decision) -> AuditEvent {
    let mut b = AuditEvent::builder(
        format!("idempotency.{}", decision.outcome.as_str()),
        DECISION_SOURCE,
    )
    .subject(format!("{} {}", decision.method, decision.route))
    .outcome(decision_outcome(decision.outcome))
    .correlation_id(decision.correlation_id.clone())
    .attribute("method", decision.method.as_str())
    .attribute("route", decision.route.clone())
    .attribute(
        "elapsed_ms",
        u64::try_from(decision.elapsed.as_millis()).unwrap_or(u64::MAX),
    );
    if let Some(hash) = &decision.key_hash {
        b = b.key_hash(hash.clone());
    }
    if let Some(status) = decision.status {
        b = b.attribute("status", status.as_u16());
    }
    if let Some(fence) = decision.fence {
        b = b.attribute("fence", fence);
    }
    if let Some(attempt) = decision.attempt {
        b = b.attribute("attempt", attempt);
    }
    if let Some(resource) = &decision.resource {
        b = b.attribute("resource", resource.clone());
    }
    b.build()
}

/// Queues one event per decision; never blocks (a full queue drops and counts).
impl DecisionHook for BufferedSink {
    fn on_decision(&self, decision: &Decision) {
        self.enqueue(decision_event(decision));
    }
}

/// Keeps one event per decision, for tests.
impl DecisionHook for MemorySink {
    fn on_decision(&self, decision: &Decision) {
        self.push(decision_event(decision));
    }
}

/// Logs one event per decision.
impl DecisionHook for TracingSink {
    fn on_decision(&self, decision: &Decision) {
        self.emit(&decision_event(decision));
    }
}

/// Redacts, then queues one event per decision on the auditor's buffer
/// (decision events are always fire-and-forget: the hook may not wait).
impl<A: Send + Sync + 'static> DecisionHook for Auditor<A> {
    fn on_decision(&self, decision: &Decision) {
        self.queue_redacted(decision_event(decision));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};

    use super::*;

    #[test]
    fn maps_every_field() {
        let mut d = Decision::new(
            DecisionOutcome::Reclaimed,
            Method::POST,
            "/promotions/{id}",
            "req-7",
        )
        .with_key_hash("ab".repeat(32))
        .with_execution(3, 2)
        .with_status(StatusCode::CREATED)
        .with_resource("/promotions/7");
        d.elapsed = Duration::from_millis(12);
        let e = decision_event(&d);
        assert_eq!(e.event_type, "idempotency.reclaimed");
        assert_eq!(e.source, DECISION_SOURCE);
        assert_eq!(e.subject.as_deref(), Some("POST /promotions/{id}"));
        assert_eq!(e.outcome, Some(Outcome::Reclaimed));
        assert_eq!(e.key_hash.as_deref(), Some(&*"ab".repeat(32)));
        assert_eq!(e.correlation_id.as_deref(), Some("req-7"));
        assert_eq!(e.attributes["status"], 201);
        assert_eq!(e.attributes["fence"], 3);
        assert_eq!(e.attributes["attempt"], 2);
        assert_eq!(e.attributes["elapsed_ms"], 12);
        assert_eq!(e.attributes["method"], "POST");
        assert_eq!(e.attributes["resource"], "/promotions/7");

        let bare = decision_event(&Decision::new(
            DecisionOutcome::PassedThrough,
            Method::GET,
            "/x",
            "r",
        ));
        assert_eq!(bare.event_type, "idempotency.passed_through");
        assert_eq!(bare.outcome, Some(Outcome::Other("passed_through".into())));
        assert!(bare.key_hash.is_none());
        assert!(!bare.attributes.contains_key("status") && !bare.attributes.contains_key("fence"));
        assert!(!bare.attributes.contains_key("resource"));
    }

    #[test]
    fn every_outcome_keeps_its_name() {
        for o in [
            DecisionOutcome::Executed,
            DecisionOutcome::Reclaimed,
            DecisionOutcome::Replayed,
            DecisionOutcome::InFlight,
            DecisionOutcome::Mismatch,
            DecisionOutcome::Fenced,
            DecisionOutcome::Corrupted,
            DecisionOutcome::Released,
            DecisionOutcome::Failed,
            DecisionOutcome::Rejected,
            DecisionOutcome::StoreUnavailable,
            DecisionOutcome::PassedThrough,
        ] {
            assert_eq!(decision_outcome(o).as_str(), o.as_str());
        }
    }
}
