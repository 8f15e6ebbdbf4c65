//! Helpers for a store's own tests, next to the conformance suite: the
//! service URLs, the CI switch, and the claim/complete steps every store's
//! tests start from.
//!
//! ```no_run
//! use std::time::Duration;
//! use idempotency_core::MemoryStore;
//! use idempotency_core::conformance::support;
//!
//! # async fn demo() {
//! let store = MemoryStore::new();
//! let req = support::request(support::key("my-store"), 1, Duration::from_secs(10));
//! let lease = support::claim_and_complete(&store, &req, support::value("done")).await;
//! assert_eq!(lease.attempt, 1);
//! # }
//! ```
//!
//! Tests that need a service read its URL with [`database_url`] or
//! [`redis_url`], and when it is unreachable skip with a printed line,
//! unless [`in_ci`] says a missing service must fail the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::cache::{InvalidationFeed, Invalidations};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{Lease, Outcome, Record};
use crate::store::{
    Claim, ClaimKind, ClaimRequest, Completion, Failure, IdempotencyStore, Observed, Resolution,
    StoreError,
};

/// The PostgreSQL the tests use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The Redis the tests use when `REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether tests run under CI (`CI=true` or `CI=1`), where a missing
/// service must fail the run instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// `REDIS_URL`, or [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A fresh random storage key, its segments starting with `tag`.
pub fn key(tag: &str) -> StorageKey {
    StorageKey::from_segments(&[tag.as_bytes(), uuid::Uuid::new_v4().as_bytes()])
}

/// A claim request: fingerprint number `fingerprint` (two numbers differ,
/// one number is always the same request), `lease`, a one-hour retention
/// and three attempts.
pub fn request(key: StorageKey, fingerprint: u8, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("support", &[fingerprint]),
        lease,
        retention: Duration::from_secs(3600),
        max_attempts: 3,
    }
}

/// A completion carrying `s` as a value.
pub fn value(s: &str) -> Completion {
    Completion::new(Outcome::Value(Bytes::copy_from_slice(s.as_bytes())))
}

/// Claims `req` and returns the acquired lease.
///
/// # Panics
///
/// When the claim fails or does not acquire, naming what came instead.
pub async fn acquire<S: IdempotencyStore>(store: &S, req: &ClaimRequest) -> (Lease, ClaimKind) {
    match store.claim(req).await.expect("claim") {
        Claim::Acquired { lease, kind } => (lease, kind),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Claims `req` and completes it with `completion`: a finished record to
/// replay. Returns the lease that completed it.
///
/// # Panics
///
/// When the claim does not acquire or the completion fails.
pub async fn claim_and_complete<S: IdempotencyStore>(
    store: &S,
    req: &ClaimRequest,
    completion: Completion,
) -> Lease {
    let (lease, _) = acquire(store, req).await;
    store.complete(&lease, completion).await.expect("complete");
    lease
}

/// A store whose claims wait at a gate before they reach `inner`, counted
/// as they arrive and as they pass: a slow network or a locked row, seen
/// from the caller, with the test deciding when the store answers. Every
/// other call goes straight through.
#[derive(Clone)]
pub struct GatedClaims<S> {
    inner: S,
    gate: Arc<Semaphore>,
    arrived: Arc<AtomicUsize>,
    passed: Arc<AtomicUsize>,
}

impl<S> GatedClaims<S> {
    /// `inner` behind a gate that lets `open` claims through before it closes.
    pub fn new(inner: S, open: usize) -> Self {
        Self {
            inner,
            gate: Arc::new(Semaphore::new(open)),
            arrived: Arc::default(),
            passed: Arc::default(),
        }
    }

    /// The store behind the gate.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Lets `n` more claims through.
    pub fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Claims that reached the gate (passed or waiting).
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Claims that passed the gate and were sent to `inner`.
    pub fn passed(&self) -> usize {
        self.passed.load(Ordering::SeqCst)
    }

    /// Waits until `n` claims in all have reached the gate.
    ///
    /// # Panics
    ///
    /// If they have not within 5 s.
    pub async fn until_arrived(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.arrived() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} claims reach the gate within 5 s ({} did)",
                self.arrived()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl<S: Invalidations> Invalidations for GatedClaims<S> {
    fn invalidations(&self) -> InvalidationFeed {
        self.inner.invalidations()
    }
}

impl<S: IdempotencyStore> IdempotencyStore for GatedClaims<S> {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = self.gate.acquire().await {
            permit.forget();
        }
        self.passed.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(req).await
    }
    fn complete(
        &self,
        lease: &Lease,
        completion: Completion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.complete(lease, completion)
    }
    fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.fail(lease, failure)
    }
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.release(lease)
    }
    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        self.inner.renew(lease)
    }
    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.inner.get(key)
    }
    fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.mark_corrupted(key, observed, detail)
    }
    fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> impl Future<Output = Result<Record, StoreError>> + Send {
        self.inner.resolve(key, resolution)
    }
    fn wait_for_change(
        &self,
        key: &StorageKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.wait_for_change(key, timeout)
    }
    fn attempt_ended(&self, lease: &Lease) {
        self.inner.attempt_ended(lease);
    }
}
