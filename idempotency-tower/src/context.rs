//! [`IdempotencyContext`]: what the handler of an executing request knows of
//! its record, and how it completes the record in its own transaction.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use idempotency_core::{Attempt, ClaimKind, Completion, Lease, Outcome, StorageKey};

use crate::config::Config;
use crate::replay::stored_response;

/// The request extension the layer adds to every request it executes (never
/// to a replay, a rejected request or one passed through unprotected).
///
/// It carries the claim's [`Lease`], so a handler whose side effect lives in
/// the same database as the store can complete the record **inside its own
/// transaction** (`PostgresStore::complete_in`): the business rows and the
/// record commit together, or neither does. After the commit the handler
/// calls [`mark_completed`](Self::mark_completed); the layer then neither
/// stores the response itself nor records a failure, whatever the response.
///
/// If the handler does not call it, the layer applies its outcome policy as
/// usual. So a handler whose transaction failed (rolled back, or the lease
/// was lost: `StoreError::LeaseLost`) simply answers its error: the layer
/// records a retryable failure, or, when the lease was lost, records nothing.
///
/// In axum, take it with `Extension<IdempotencyContext>` (or
/// `Option<Extension<_>>` on routes that may run unprotected):
///
/// ```
/// use axum::{Extension, Router, http::{HeaderMap, StatusCode}, routing::post};
/// use idempotency_core::MemoryStore;
/// use idempotency_tower::{IdempotencyContext, IdempotencyLayer};
///
/// async fn promote(Extension(ctx): Extension<IdempotencyContext>) -> (StatusCode, &'static str) {
///     // let mut tx = pool.begin().await?; ... insert the work order ...
///     let completion = ctx
///         .completion(StatusCode::OK, &HeaderMap::new(), "{\"workorder_id\":\"WO-1\"}")
///         .with_resource("/work-orders/WO-1");
///     // store.complete_in(&mut tx, ctx.lease(), completion).await?; tx.commit().await?;
///     # drop(completion);
///     ctx.mark_completed(Some("/work-orders/WO-1".to_owned()));
///     (StatusCode::CREATED, "{\"workorder_id\":\"WO-1\"}")
/// }
///
/// let app: Router = Router::new()
///     .route("/promote", post(promote))
///     .layer(IdempotencyLayer::new(MemoryStore::new()));
/// ```
///
/// Cloning is cheap; every clone is the same context.
#[derive(Clone)]
pub struct IdempotencyContext {
    attempt: Attempt,
    config: Arc<Config>,
}

impl std::fmt::Debug for IdempotencyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyContext")
            .field("key", &self.attempt.key().short())
            .field("fence", &self.attempt.fence())
            .field("attempt", &self.attempt.number())
            .field("kind", &self.attempt.kind())
            .field("completed", &self.attempt.completed_resource())
            .finish()
    }
}

impl IdempotencyContext {
    pub(crate) fn new(attempt: Attempt, config: Arc<Config>) -> Self {
        Self { attempt, config }
    }

    /// The core attempt this request executes (what `Idempotent` hands its
    /// operations: the same engine owns both).
    pub fn as_attempt(&self) -> &Attempt {
        &self.attempt
    }

    /// The claim's lease, as it was when the handler was called. Its token
    /// and fence are what a completion checks; heartbeats move only its
    /// deadline, so this copy stays valid for `complete_in` while the layer
    /// renews the lease.
    pub fn lease(&self) -> &Lease {
        self.attempt.lease()
    }

    /// The record's storage key.
    pub fn key(&self) -> &StorageKey {
        &self.attempt.lease().key
    }

    /// The storage key as 64 lowercase hex digits (what logs and audit rows carry).
    pub fn key_hash(&self) -> String {
        self.attempt.key().to_hex()
    }

    /// The fencing number of this execution: strictly increases with every
    /// claim of the key; pass it to downstream systems that can refuse a
    /// stale writer.
    pub fn fence(&self) -> u64 {
        self.attempt.fence()
    }

    /// The attempt number of this execution (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt.number()
    }

    /// How the claim was obtained: a new record, a takeover of an expired
    /// lease (a crashed or stalled attempt), or a retry after a retryable failure.
    pub fn kind(&self) -> ClaimKind {
        self.attempt.kind()
    }

    /// Whether no earlier attempt of this record started an execution
    /// (the same rule as [`Attempt::is_first`]).
    pub fn is_first_attempt(&self) -> bool {
        self.attempt.is_first()
    }

    /// A stable key for a downstream call (payment, e-mail, message), the
    /// same on every attempt of this record (see [`Attempt::downstream_key`]).
    pub fn downstream_key(&self, label: &str) -> String {
        self.attempt.downstream_key(label)
    }

    /// A [`Completion`] whose replay is `status`, the headers of `headers`
    /// that the layer replays (its allow-list, never `Set-Cookie`, `Date`,
    /// ...) and `body`: exactly what the layer would have stored.
    ///
    /// What duplicates receive may differ from the first response: a handler
    /// that answers `201 Created` can store `200 OK` with the same body for
    /// its replays.
    pub fn completion(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: impl Into<Bytes>,
    ) -> Completion {
        Completion::new(Outcome::Response(stored_response(
            &self.config,
            status,
            headers,
            body.into(),
        )))
    }

    /// Tells the layer that the handler completed the record itself and the
    /// completion is committed. `resource` names what the operation created
    /// (the same reference as in the completion); it reaches the decision hook.
    ///
    /// Call it only after the commit succeeded. The first call counts; later
    /// calls return `false` and change nothing.
    pub fn mark_completed(&self, resource: Option<String>) -> bool {
        self.attempt.mark_completed(resource)
    }

    /// Whether [`mark_completed`](Self::mark_completed) was called.
    pub fn is_completed(&self) -> bool {
        self.attempt.is_completed()
    }

    /// The resource given to [`mark_completed`](Self::mark_completed), if it was called.
    pub(crate) fn completed_resource(&self) -> Option<Option<String>> {
        self.attempt.completed_resource()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
    use idempotency_core::{LeaseToken, Timestamp};

    use super::*;

    fn context(kind: ClaimKind, attempt: u32) -> IdempotencyContext {
        let lease = Lease {
            key: StorageKey::from_segments(&[b"k"]),
            token: LeaseToken::new(),
            fence: u64::from(attempt),
            attempt,
            deadline: Timestamp::from_millis(1),
            lease_duration: Duration::from_secs(1),
            retention: Duration::from_secs(1),
        };
        IdempotencyContext::new(Attempt::new(lease, kind), Arc::new(Config::default()))
    }

    #[test]
    fn completion_keeps_only_replayed_headers() {
        let ctx = context(ClaimKind::New, 1);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert(SET_COOKIE, "s=1".parse().unwrap());
        headers.insert(LOCATION, "/w/1".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        let c = ctx
            .completion(StatusCode::OK, &headers, "{}")
            .with_resource("/w/1");
        let Outcome::Response(r) = c.outcome else {
            panic!("not a response")
        };
        assert_eq!(r.status, 200);
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
        assert_eq!(&r.body[..], b"{}");
        assert_eq!(c.resource.as_deref(), Some("/w/1"));
    }

    #[test]
    fn first_attempt_and_marking() {
        assert!(context(ClaimKind::New, 1).is_first_attempt());
        assert!(!context(ClaimKind::Takeover, 2).is_first_attempt());
        assert!(!context(ClaimKind::Retry, 2).is_first_attempt());
        let ctx = context(ClaimKind::New, 1);
        assert!(!ctx.is_completed());
        assert!(ctx.clone().mark_completed(Some("/w/1".into())));
        assert!(!ctx.mark_completed(None), "only the first call counts");
        assert!(ctx.is_completed());
        assert_eq!(ctx.completed_resource(), Some(Some("/w/1".to_owned())));
    }
}
