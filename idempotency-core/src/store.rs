//! The store trait: one atomic, compare-and-set decision per operation.
//!
//! Every implementation must pass the conformance suite
//! (`idempotency_core::conformance`, feature `conformance`). The contract, in
//! short (the full table is in the crate README):
//!
//! | operation | from | to |
//! |---|---|---|
//! | [`claim`](IdempotencyStore::claim) | absent or expired | `Pending` (new fence, attempt 1) → [`Claim::Acquired`] |
//! | `claim` | `Pending`, lease live | unchanged → [`Claim::InFlight`] |
//! | `claim` | `Pending`, lease expired, attempts left | `Pending` (new fence, attempt +1) → [`Claim::Acquired`] ([`ClaimKind::Takeover`]) |
//! | `claim` | `Pending`, lease expired, no attempts left | `Failed` terminal → [`Claim::Failed`] |
//! | `claim` | `Failed` retryable, attempts left | `Pending` (new fence, attempt +1) → [`Claim::Acquired`] ([`ClaimKind::Retry`]) |
//! | `claim` | `Completed` | unchanged → [`Claim::Completed`] |
//! | `claim` | `Failed` terminal or out of attempts | unchanged → [`Claim::Failed`] |
//! | `claim` | `Pending` / `Completed` / `Failed`, other fingerprint | unchanged → [`Claim::Mismatch`] |
//! | `claim` | `Corrupted` | unchanged → [`Claim::Corrupted`] |
//! | [`complete`](IdempotencyStore::complete) / [`fail`](IdempotencyStore::fail) | `Pending` with the lease's token and fence | `Completed` / `Failed` |
//! | [`release`](IdempotencyStore::release) | `Pending` with the lease's token and fence | absent |
//! | [`renew`](IdempotencyStore::renew) | `Pending` with the lease's token and fence | `Pending`, deadline = now + lease |
//! | [`mark_corrupted`](IdempotencyStore::mark_corrupted) | the [`Observed`] state and fence, live | `Corrupted` (else [`StoreError::Conflict`], nothing written) |
//! | [`resolve`](IdempotencyStore::resolve) | `Corrupted` / `Pending` | absent or `Failed` |
//!
//! A "new fence" is greater than every fence the store ever handed out for
//! the key: fences strictly increase per storage key for the key's whole
//! life, across release, expiry, [`resolve`](IdempotencyStore::resolve) and
//! re-claim, not only within one record. They need not be dense or start at
//! 1. Attempts count the executions of one record and restart at 1.
//!
//! A lease operation whose token or fence does not match the stored record
//! (or whose record is gone or expired) fails with [`StoreError::LeaseLost`] and changes
//! nothing. Time comes from the store's clock; a record counts as absent once
//! [`Record::is_expired`] says so, even if the backend still holds it.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{Completed, Failed, Lease, Outcome, Record};

/// A boxed error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors a store reports. Semantic variants first; backend failures keep their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The lease's token or fence no longer matches the record (another worker
    /// took it over, it was released or resolved, or it expired and was
    /// reclaimed). Nothing was written.
    #[error("lease lost: the record is no longer held by this lease")]
    LeaseLost,
    /// No such record.
    #[error("no record for this key")]
    NotFound,
    /// A compare-and-set found the record in another state or at another
    /// fence than the caller observed (it was resolved, re-claimed, completed
    /// or marked meanwhile). Nothing was written.
    #[error("the record changed since it was observed; nothing was written")]
    Conflict,
    /// The operation does not apply to the record's current state.
    #[error("{operation} is not allowed on a {state} record")]
    InvalidState {
        /// The operation attempted.
        operation: &'static str,
        /// The record's state name.
        state: &'static str,
    },
    /// The stored record cannot be decoded.
    #[error("stored record is corrupted: {detail}")]
    Corrupted {
        /// What is wrong.
        detail: String,
    },
    /// The store did not answer in time.
    #[error("store operation timed out")]
    Timeout {
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The store could not be reached (connection refused, pool exhausted, ...).
    #[error("store unavailable")]
    Unavailable {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The store is full: a claim that would create a new record was refused
    /// (an in-memory store at its byte budget). Transient: records expire
    /// and give their space back; an HTTP layer answers 503.
    #[error("store at capacity: {detail}")]
    Capacity {
        /// What is full.
        detail: String,
    },
    /// Any other backend error.
    #[error("store backend error")]
    Backend {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend { source: e.into() }
    }

    /// Wraps a connectivity error.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable { source: e.into() }
    }

    /// Whether the failure is about the store (timeout, unavailable, at
    /// capacity, backend) rather than about the record: an HTTP layer
    /// answers 503.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Unavailable { .. }
                | Self::Capacity { .. }
                | Self::Backend { .. }
        )
    }
}

/// A record's state, without its data: what a caller saw, for
/// compare-and-set operations such as
/// [`mark_corrupted`](IdempotencyStore::mark_corrupted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StateKind {
    /// Someone is executing.
    Pending,
    /// Done; replayed.
    Completed,
    /// Executed and failed.
    Failed,
    /// Blocked until an operator resolves it.
    Corrupted,
}

impl StateKind {
    /// `PENDING`, `COMPLETED`, `FAILED` or `CORRUPTED` (as
    /// [`RecordState::name`](crate::RecordState::name)).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Corrupted => "CORRUPTED",
        }
    }
}

/// What a caller observed of a record: its state and fence. A
/// compare-and-set operation writes only if the record still is this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Observed {
    /// The state seen.
    pub state: StateKind,
    /// The record's fence seen ([`Record::fence`], [`Completed::fence`]).
    pub fence: u64,
}

impl Observed {
    /// An observation of `state` at `fence`.
    pub const fn new(state: StateKind, fence: u64) -> Self {
        Self { state, fence }
    }

    /// A completed record at `fence`, as a replay (`Claim::Completed(c)`)
    /// shows it: `Observed::completed(c.fence)`.
    pub const fn completed(fence: u64) -> Self {
        Self::new(StateKind::Completed, fence)
    }

    /// What `record` is now.
    pub const fn of(record: &Record) -> Self {
        Self::new(record.state.kind(), record.fence)
    }
}

/// What a claimer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The record.
    pub key: StorageKey,
    /// This request's fingerprint.
    pub fingerprint: Fingerprint,
    /// Lease length (renewed by heartbeats while the operation runs).
    pub lease: Duration,
    /// How long a finished record is kept, from completion or failure.
    pub retention: Duration,
    /// How many executions a record may start in total (at least 1).
    pub max_attempts: u32,
}

/// How a lease was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimKind {
    /// No live record existed.
    New,
    /// A previous owner's lease expired (crash or stall): it is now fenced off.
    Takeover,
    /// A retryable failure is being retried.
    Retry,
}

/// The store's decision for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The caller owns the record and must execute, then complete, fail or release it.
    Acquired {
        /// Proof of ownership.
        lease: Lease,
        /// How it was obtained.
        kind: ClaimKind,
    },
    /// Someone else is executing now.
    InFlight {
        /// Time left on the current lease (a hint for `Retry-After`).
        retry_after: Duration,
        /// The current attempt number.
        attempt: u32,
    },
    /// Done before: replay it.
    Completed(Completed),
    /// Failed terminally (or out of attempts): replay the failure.
    Failed(Failed),
    /// The record was created by a request with another fingerprint.
    Mismatch,
    /// The record is corrupted and blocks until resolved.
    Corrupted {
        /// What was found.
        detail: String,
    },
}

/// What the owner writes on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// What to replay.
    pub outcome: Outcome,
    /// Optional reference to the resource the operation created.
    pub resource: Option<String>,
}

impl Completion {
    /// A completion with no resource reference.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            resource: None,
        }
    }

    /// Attaches a resource reference.
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }
}

/// What the owner writes on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why (never the raw key).
    pub reason: String,
    /// Whether a later claim may execute again (until max attempts).
    pub retryable: bool,
}

impl Failure {
    /// A failure a later claim may retry.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// A failure that is replayed to every later claim.
    pub fn terminal(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: false,
        }
    }
}

/// An operator's decision for a corrupted or stuck record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Forget the record: the next claim executes afresh.
    Delete,
    /// Turn it into a failure (retryable ones may execute again).
    Fail(Failure),
}

/// A store of idempotency records. Each method is one atomic decision.
///
/// Implementations must be safe to share across tasks and processes; the
/// conformance suite (feature `conformance`) checks the contract.
pub trait IdempotencyStore: Send + Sync {
    /// Claims the record for `req.key`, or reports why not. See the module table.
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// `Pending` (this lease) → `Completed`; retention restarts now.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if the lease no longer owns the record.
    fn complete(
        &self,
        lease: &Lease,
        completion: Completion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `Pending` (this lease) → `Failed`; retention restarts now. A retryable
    /// failure whose attempt is the last allowed is stored as terminal by the
    /// caller (see [`crate::Policy`]); stores keep what they are given.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if the lease no longer owns the record.
    fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `Pending` (this lease) → absent: nothing worth keeping happened.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if the lease no longer owns the record.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease to now + `lease.lease_duration`; returns the renewed lease.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseLost`] if the lease no longer owns the record.
    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Reads a record; expired records read as `None`.
    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// The record as `observed` → `Corrupted` (blocks every claim until
    /// resolved). Compare-and-set: written only if the record exists, is not
    /// expired, and its state kind and fence equal `observed`, so a late
    /// mark never hits a record an operator resolved or a new claim
    /// re-created in the meantime. A replay marks what it replayed with
    /// [`Observed::completed`]`(completed.fence)`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if there is no live record,
    /// [`StoreError::Conflict`] if it is not the observed one (nothing is
    /// written).
    fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Operator action: `Corrupted` or `Pending` → absent or `Failed`. Returns
    /// the record as it was.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if there is no record, [`StoreError::InvalidState`]
    /// if it is `Completed` or `Failed`.
    fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> impl Future<Output = Result<Record, StoreError>> + Send;

    /// Waits until the record for `key` may have left `Pending` (completed,
    /// failed, released, lease expired), or `timeout` passes. Callers claim
    /// again afterwards; spurious wake-ups are allowed.
    ///
    /// The default polls every 25 ms; stores with notifications override it.
    fn wait_for_change(
        &self,
        key: &StorageKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = key;
        async move {
            tokio::time::sleep(timeout.min(Duration::from_millis(25))).await;
            Ok(())
        }
    }

    /// Tells the store that the attempt holding `lease` has ended in this
    /// process: its final write (if any) was made, the operation completed
    /// the record itself (in its own transaction), or the attempt was
    /// abandoned. The engine calls it once for every attempt it drives
    /// ([`OwnedAttempt`](crate::OwnedAttempt)), after any write it made.
    ///
    /// Stores keep nothing per attempt and ignore it (the default); a
    /// wrapper that knows this process's attempts
    /// ([`ReplayCache`](crate::cache::ReplayCache)) forgets the attempt.
    /// Wrappers must pass it on.
    fn attempt_ended(&self, lease: &Lease) {
        let _ = lease;
    }
}

/// Optional ability: delete expired records in bulk.
pub trait PurgeExpired: Send + Sync {
    /// Deletes up to `batch` expired records; returns how many were deleted.
    fn purge_expired(&self, batch: usize) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Optional ability, for tests: move the store's clock forward.
///
/// Stores take time from their backend (`now()`, Redis `TIME`); for tests they
/// add an offset that this trait advances, so lease and retention expiry can
/// be tested without sleeping.
pub trait ClockControl: Send + Sync {
    /// Moves the store's notion of "now" forward by `by`.
    fn advance(&self, by: Duration);
}

macro_rules! forward_store {
    ($ty:ty) => {
        impl<T: IdempotencyStore + ?Sized> IdempotencyStore for $ty {
            fn claim(
                &self,
                req: &ClaimRequest,
            ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
                (**self).claim(req)
            }
            fn complete(
                &self,
                lease: &Lease,
                completion: Completion,
            ) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).complete(lease, completion)
            }
            fn fail(
                &self,
                lease: &Lease,
                failure: Failure,
            ) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).fail(lease, failure)
            }
            fn release(
                &self,
                lease: &Lease,
            ) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).release(lease)
            }
            fn renew(
                &self,
                lease: &Lease,
            ) -> impl Future<Output = Result<Lease, StoreError>> + Send {
                (**self).renew(lease)
            }
            fn get(
                &self,
                key: &StorageKey,
            ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
                (**self).get(key)
            }
            fn mark_corrupted(
                &self,
                key: &StorageKey,
                observed: Observed,
                detail: &str,
            ) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).mark_corrupted(key, observed, detail)
            }
            fn resolve(
                &self,
                key: &StorageKey,
                resolution: Resolution,
            ) -> impl Future<Output = Result<Record, StoreError>> + Send {
                (**self).resolve(key, resolution)
            }
            fn wait_for_change(
                &self,
                key: &StorageKey,
                timeout: Duration,
            ) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).wait_for_change(key, timeout)
            }
            fn attempt_ended(&self, lease: &Lease) {
                (**self).attempt_ended(lease)
            }
        }
    };
}

forward_store!(Arc<T>);
forward_store!(&T);
forward_store!(Box<T>);

impl<T: PurgeExpired + ?Sized> PurgeExpired for Arc<T> {
    fn purge_expired(&self, batch: usize) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).purge_expired(batch)
    }
}

impl<T: ClockControl + ?Sized> ClockControl for Arc<T> {
    fn advance(&self, by: Duration) {
        (**self).advance(by);
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Object-safe mirror of [`IdempotencyStore`], implemented for every store.
/// Use [`DynStore`] rather than this trait directly.
pub trait ErasedStore: Send + Sync {
    #[doc(hidden)]
    fn claim_dyn<'a>(&'a self, req: &'a ClaimRequest) -> BoxFut<'a, Claim>;
    #[doc(hidden)]
    fn complete_dyn<'a>(&'a self, lease: &'a Lease, completion: Completion) -> BoxFut<'a, ()>;
    #[doc(hidden)]
    fn fail_dyn<'a>(&'a self, lease: &'a Lease, failure: Failure) -> BoxFut<'a, ()>;
    #[doc(hidden)]
    fn release_dyn<'a>(&'a self, lease: &'a Lease) -> BoxFut<'a, ()>;
    #[doc(hidden)]
    fn renew_dyn<'a>(&'a self, lease: &'a Lease) -> BoxFut<'a, Lease>;
    #[doc(hidden)]
    fn get_dyn<'a>(&'a self, key: &'a StorageKey) -> BoxFut<'a, Option<Record>>;
    #[doc(hidden)]
    fn mark_corrupted_dyn<'a>(
        &'a self,
        key: &'a StorageKey,
        observed: Observed,
        detail: &'a str,
    ) -> BoxFut<'a, ()>;
    #[doc(hidden)]
    fn resolve_dyn<'a>(&'a self, key: &'a StorageKey, resolution: Resolution)
    -> BoxFut<'a, Record>;
    #[doc(hidden)]
    fn wait_for_change_dyn<'a>(&'a self, key: &'a StorageKey, timeout: Duration) -> BoxFut<'a, ()>;
    #[doc(hidden)]
    fn attempt_ended_dyn(&self, lease: &Lease);
}

impl<S: IdempotencyStore> ErasedStore for S {
    fn claim_dyn<'a>(&'a self, req: &'a ClaimRequest) -> BoxFut<'a, Claim> {
        Box::pin(self.claim(req))
    }
    fn complete_dyn<'a>(&'a self, lease: &'a Lease, completion: Completion) -> BoxFut<'a, ()> {
        Box::pin(self.complete(lease, completion))
    }
    fn fail_dyn<'a>(&'a self, lease: &'a Lease, failure: Failure) -> BoxFut<'a, ()> {
        Box::pin(self.fail(lease, failure))
    }
    fn release_dyn<'a>(&'a self, lease: &'a Lease) -> BoxFut<'a, ()> {
        Box::pin(self.release(lease))
    }
    fn renew_dyn<'a>(&'a self, lease: &'a Lease) -> BoxFut<'a, Lease> {
        Box::pin(self.renew(lease))
    }
    fn get_dyn<'a>(&'a self, key: &'a StorageKey) -> BoxFut<'a, Option<Record>> {
        Box::pin(self.get(key))
    }
    fn mark_corrupted_dyn<'a>(
        &'a self,
        key: &'a StorageKey,
        observed: Observed,
        detail: &'a str,
    ) -> BoxFut<'a, ()> {
        Box::pin(self.mark_corrupted(key, observed, detail))
    }
    fn resolve_dyn<'a>(
        &'a self,
        key: &'a StorageKey,
        resolution: Resolution,
    ) -> BoxFut<'a, Record> {
        Box::pin(self.resolve(key, resolution))
    }
    fn wait_for_change_dyn<'a>(&'a self, key: &'a StorageKey, timeout: Duration) -> BoxFut<'a, ()> {
        Box::pin(self.wait_for_change(key, timeout))
    }
    fn attempt_ended_dyn(&self, lease: &Lease) {
        self.attempt_ended(lease);
    }
}

/// A type-erased, cheaply cloneable store, for choosing the backend at run time.
///
/// ```
/// use idempotency_core::{DynStore, MemoryStore};
/// let store = DynStore::new(MemoryStore::new());
/// let also = store.clone();
/// # drop(also);
/// ```
#[derive(Clone)]
pub struct DynStore(Arc<dyn ErasedStore>);

impl DynStore {
    /// Erases a store's type.
    pub fn new<S: IdempotencyStore + 'static>(store: S) -> Self {
        Self(Arc::new(store))
    }
}

impl std::fmt::Debug for DynStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynStore")
    }
}

impl IdempotencyStore for DynStore {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.0.claim_dyn(req).await
    }
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        self.0.complete_dyn(lease, completion).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        self.0.fail_dyn(lease, failure).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.0.release_dyn(lease).await
    }
    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.0.renew_dyn(lease).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.0.get_dyn(key).await
    }
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.0.mark_corrupted_dyn(key, observed, detail).await
    }
    async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        self.0.resolve_dyn(key, resolution).await
    }
    async fn wait_for_change(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        self.0.wait_for_change_dyn(key, timeout).await
    }
    fn attempt_ended(&self, lease: &Lease) {
        self.0.attempt_ended_dyn(lease);
    }
}
