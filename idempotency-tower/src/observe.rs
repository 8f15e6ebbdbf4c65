//! The observability context of one handled request: its span, metrics,
//! decision hook and correlation id ([`Ctx`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Method, Response, StatusCode};
use http_body::Body;
use idempotency_core::StorageKey;
use tracing::Span;

use crate::body::ResponseBody;
use crate::config::{Config, X_REQUEST_ID};
use crate::hook::{Decision, DecisionOutcome};
use crate::metrics::count_outcome;
use crate::problem::Problem;

/// What one handled request has learnt so far, for its span, metrics and decision.
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    started: Instant,
    method: Method,
    pub(crate) route: String,
    /// The request's path, kept only for a decision hook.
    path: String,
    correlation_id: HeaderValue,
    pub(crate) span: Span,
    pub(crate) resource: Option<String>,
    /// The record's storage key; its hex form is made only when something reads it.
    key: Option<StorageKey>,
    fence: Option<u64>,
    attempt: Option<u32>,
}

impl Ctx {
    pub(crate) fn new(
        config: Arc<Config>,
        started: Instant,
        parts: &http::request::Parts,
        route: String,
        correlation_id: HeaderValue,
        span: Span,
    ) -> Self {
        Self {
            started,
            method: parts.method.clone(),
            route,
            path: if config.hook.is_some() {
                parts.uri.path().to_owned()
            } else {
                String::new()
            },
            correlation_id,
            span,
            resource: None,
            key: None,
            fence: None,
            attempt: None,
            config,
        }
    }

    /// Records the record's key (its hex form only if the span is on).
    pub(crate) fn set_key(&mut self, key: StorageKey) {
        if !self.span.is_disabled() {
            self.span
                .record("idempotency.key_hash", key.to_hex().as_str());
        }
        self.key = Some(key);
    }

    /// Records the lease of an execution.
    pub(crate) fn set_lease(&mut self, lease: &idempotency_core::Lease) {
        self.fence = Some(lease.fence);
        self.attempt = Some(lease.attempt);
        self.span.record("idempotency.fence", lease.fence);
        self.span.record("idempotency.attempt", lease.attempt);
    }

    pub(crate) fn decide(&self, outcome: DecisionOutcome, status: Option<StatusCode>) {
        self.span.record("idempotency.outcome", outcome.as_str());
        if let Some(s) = status {
            self.span.record("http.status_code", s.as_u16());
        }
        count_outcome(outcome);
        tracing::debug!(parent: &self.span, outcome = outcome.as_str(), status = status.map(|s| s.as_u16()), "idempotency decision");
        let Some(hook) = &self.config.hook else {
            return;
        };
        let decision = Decision {
            outcome,
            key_hash: self.key.map(|k| k.to_hex()),
            fence: self.fence,
            attempt: self.attempt,
            method: self.method.clone(),
            route: self.route.clone(),
            path: self.path.clone(),
            resource: self.resource.clone(),
            status,
            correlation_id: String::from_utf8_lossy(self.correlation_id.as_bytes()).into_owned(),
            elapsed: self.started.elapsed(),
        };
        if std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_decision(&decision))).is_err() {
            tracing::error!(parent: &self.span, "decision hook panicked; ignored");
        }
    }

    /// Echoes the correlation id on a response.
    pub(crate) fn finish<B>(&self, mut res: Response<B>) -> Response<B> {
        if !res.headers().contains_key(X_REQUEST_ID) {
            res.headers_mut()
                .insert(X_REQUEST_ID, self.correlation_id.clone());
        }
        res
    }

    /// Answers a problem and records the decision.
    pub(crate) fn problem<B: Body>(
        &self,
        outcome: DecisionOutcome,
        problem: Problem,
    ) -> Response<ResponseBody<B>> {
        self.decide(outcome, Some(problem.kind.status()));
        self.finish(problem.into_response())
    }
}
