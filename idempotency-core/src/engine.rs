//! The lease engine: owns one attempt from its claim to its final record
//! write, for every front end ([`Idempotent`](crate::Idempotent), the HTTP
//! layer, consumers).
//!
//! | guarantee | how |
//! |---|---|
//! | the lease is renewed for the **whole** attempt, until the outcome is written | [`OwnedAttempt::run`] renews every heartbeat while it polls the work, and the final write ([`complete`](OwnedAttempt::complete), [`fail`](OwnedAttempt::fail), [`release`](OwnedAttempt::release)) renews alongside its retries |
//! | a renewal never stops the work | a renewal runs *alongside* the work, never instead of it: work that holds the record's row lock (completion inside its own transaction) keeps being polled while a renewal waits for that lock |
//! | a failed final write is retried | with backoff (20 ms doubling to 1 s) while the lease is renewed, until it succeeds, the store answers [`StoreError::LeaseLost`], or the policy's settle timeout passes |
//! | every store call is bounded | each call runs under the policy's store timeout ([`StoreError::Timeout`]) |
//! | no `Pending` record is left behind by a dropped caller | dropping an [`OwnedAttempt`] (or a future of its final write) before its outcome is stored hands the write to a task on the current Tokio runtime: the outcome being written, or a retryable "cancelled" failure if the work had not finished |

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::key::{StorageKey, hex};
use crate::policy::Policy;
use crate::record::Lease;
use crate::store::{
    Claim, ClaimKind, ClaimRequest, Completion, Failure, IdempotencyStore, StoreError,
};

/// Runs a store call under `timeout`. A call that answers on its first poll
/// (an in-memory store) arms no timer.
///
/// A named future rather than an `async fn`: it holds the call once, where
/// an `async fn` would keep both its argument and the pinned copy it
/// awaits, so every layer of wrapping would double the size of the
/// caller's future.
///
/// # Errors
///
/// The call's error, or [`StoreError::Timeout`].
pub fn with_timeout<T, F>(timeout: Duration, fut: F) -> WithTimeout<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    WithTimeout {
        fut,
        timer: None,
        timeout,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`with_timeout`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct WithTimeout<F> {
        #[pin]
        fut: F,
        // Armed when the call first answers `Pending`.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<T, F> Future for WithTimeout<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(out);
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(StoreError::Timeout { source: None })),
            _ => Poll::Pending,
        }
    }
}

/// Claims `req`, and while the record is in flight waits (up to `wait`) for
/// it to settle, claiming again after each change. Returns the last decision:
/// [`Claim::InFlight`] when the wait timed out.
///
/// # Errors
///
/// The store's errors.
///
/// # Cancel safety
///
/// Cancel safe while waiting. If dropped after the store granted a lease but
/// before it was returned, that lease simply expires.
pub async fn claim_with_wait<S: IdempotencyStore + ?Sized>(
    store: &S,
    req: &ClaimRequest,
    wait: Option<Duration>,
) -> Result<Claim, StoreError> {
    let deadline = wait.and_then(|w| Instant::now().checked_add(w));
    loop {
        let claim = store.claim(req).await?;
        let (Claim::InFlight { .. }, Some(deadline)) = (&claim, deadline) else {
            return Ok(claim);
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(claim);
        }
        store.wait_for_change(&req.key, deadline - now).await?;
    }
}

/// What an executing attempt knows of its record: handed to the operation.
///
/// Cloning is cheap; every clone is the same attempt (marking it completed
/// through one clone is seen by all).
#[derive(Debug, Clone)]
pub struct Attempt {
    inner: Arc<AttemptInner>,
}

#[derive(Debug)]
struct AttemptInner {
    lease: Lease,
    kind: ClaimKind,
    completed: OnceLock<Option<String>>,
}

impl Attempt {
    /// An attempt for `lease`. The engine makes one per claim
    /// ([`OwnedAttempt::attempt`]); one made by hand is driven by nothing,
    /// which suits unit tests of operations and handlers.
    pub fn new(lease: Lease, kind: ClaimKind) -> Self {
        Self {
            inner: Arc::new(AttemptInner {
                lease,
                kind,
                completed: OnceLock::new(),
            }),
        }
    }

    /// The claim's lease as it was granted. Its token and fence are what a
    /// completion checks; renewals move only its deadline, so this copy stays
    /// valid for a completion inside the operation's own transaction (the
    /// PostgreSQL store's `complete_in`) while the engine renews the lease.
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// The attempt number: 1 for the first execution of the record, higher
    /// after a crash takeover or a retryable failure.
    pub fn number(&self) -> u32 {
        self.inner.lease.attempt
    }

    /// Whether no earlier attempt of this record started an execution (the
    /// record is new and this is its attempt 1).
    pub fn is_first(&self) -> bool {
        self.inner.kind == ClaimKind::New && self.inner.lease.attempt == 1
    }

    /// How the lease was obtained.
    pub fn kind(&self) -> ClaimKind {
        self.inner.kind
    }

    /// Fencing number: strictly increases with every claim of the key; pass
    /// it to downstream systems that reject stale writers.
    pub fn fence(&self) -> u64 {
        self.inner.lease.fence
    }

    /// The record's key.
    pub fn key(&self) -> StorageKey {
        self.inner.lease.key
    }

    /// A stable key for a downstream call (payment, e-mail, queue message),
    /// the same on every attempt of this record, so the downstream system can
    /// deduplicate a retry of a half-done attempt. Different labels give
    /// unrelated keys.
    ///
    /// ```
    /// # use idempotency_core::{KeySpec, Lease, LeaseToken, Timestamp, ClaimKind};
    /// # use std::time::Duration;
    /// # let key = KeySpec::new("billing").derived(["invoice-7"]).storage_key();
    /// let k = idempotency_core::downstream_key(&key, "payment");
    /// assert_eq!(k.len(), 64);
    /// assert_ne!(k, idempotency_core::downstream_key(&key, "email"));
    /// ```
    pub fn downstream_key(&self, label: &str) -> String {
        downstream_key(&self.inner.lease.key, label)
    }

    /// Tells the engine that the operation completed the record itself (for
    /// example inside its own database transaction, with
    /// `PostgresStore::complete_in`) and the completion is committed:
    /// the engine then stops renewing and writes nothing. `resource` names
    /// what the operation created, if anything.
    ///
    /// Call it only after the commit succeeded. The first call counts; later
    /// calls return `false` and change nothing.
    pub fn mark_completed(&self, resource: Option<String>) -> bool {
        self.inner.completed.set(resource).is_ok()
    }

    /// Whether [`mark_completed`](Self::mark_completed) was called.
    pub fn is_completed(&self) -> bool {
        self.inner.completed.get().is_some()
    }

    /// The resource given to [`mark_completed`](Self::mark_completed), if it was called.
    pub fn completed_resource(&self) -> Option<Option<String>> {
        self.inner.completed.get().cloned()
    }
}

/// A stable key for a downstream call made on behalf of the record `key`:
/// SHA-256 over a domain tag, the storage key and `label`, in hex.
pub fn downstream_key(key: &StorageKey, label: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"idempotency-rs/downstream/v1");
    h.update(key.as_bytes());
    h.update((label.len() as u64).to_be_bytes());
    h.update(label.as_bytes());
    hex(&h.finalize())
}

/// The final write of an attempt.
#[derive(Debug, Clone)]
enum Settlement {
    Complete(Completion),
    Fail(Failure),
    Release,
}

impl Settlement {
    fn name(&self) -> &'static str {
        match self {
            Self::Complete(_) => "completion",
            Self::Fail(_) => "failure",
            Self::Release => "release",
        }
    }
}

type RenewFuture = Pin<Box<dyn Future<Output = Result<Lease, StoreError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`OwnedAttempt::run`]: the work, with the lease renewed
    /// alongside. A named future rather than an `async fn`, so the work is
    /// held once, not once as an argument and again as what is awaited.
    #[must_use = "futures do nothing unless polled"]
    pub struct Run<'a, S, F>
    where
        S: IdempotencyStore,
        S: Clone,
        S: 'static,
    {
        owner: &'a mut OwnedAttempt<S>,
        #[pin]
        work: F,
    }
}

impl<S: IdempotencyStore + Clone + 'static, F: Future> Future for Run<'_, S, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.owner.poll_step(this.work, cx)
    }
}

impl<S: IdempotencyStore + Clone + 'static, F> std::fmt::Debug for Run<'_, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("key", &self.owner.lease.key)
            .finish_non_exhaustive()
    }
}

/// One attempt owned from its claim to its final record write.
///
/// Made by [`OwnedAttempt::new`] from the lease of a [`Claim::Acquired`].
/// Drive the work with [`run`](Self::run) (the lease is renewed meanwhile),
/// then end the attempt with exactly one of [`complete`](Self::complete),
/// [`fail`](Self::fail), [`release`](Self::release), or
/// [`finish`](Self::finish) when the work wrote the record itself or the
/// lease was lost.
///
/// # Cancel safety
///
/// Dropping an `OwnedAttempt` that was not ended, or the future of one of its
/// final writes before the store confirmed it, never leaves the record
/// `Pending` for its lease to expire: the write is handed to a task spawned
/// on the current Tokio runtime, which retries it like the final write does
/// (with renewals, until it succeeds, the lease is lost or the settle timeout
/// passes). That write is the outcome being written when the drop came, or,
/// if no final write had started, a retryable failure "cancelled", so the
/// next claim runs the operation again at once. Outside a Tokio runtime
/// nothing can be spawned: the record stays `Pending` until its lease
/// expires (a warning says so). An attempt whose lease was lost, or whose
/// work marked the record completed, writes nothing when dropped.
pub struct OwnedAttempt<S: IdempotencyStore + Clone + 'static> {
    store: S,
    policy: Policy,
    attempt: Attempt,
    /// The latest renewed lease.
    lease: Lease,
    lost: bool,
    /// Made on first use, so an attempt can be built outside a runtime.
    ticker: Option<Interval>,
    renewal: Option<RenewFuture>,
    /// The final write in progress; `None` once it is confirmed or nothing
    /// is to be written.
    pending: Option<Settlement>,
    ended: bool,
    /// A write handed over by a dropped attempt: if this one is dropped too
    /// (the runtime shuts down), nothing is spawned again.
    handed_over: bool,
}

impl<S: IdempotencyStore + Clone + 'static> std::fmt::Debug for OwnedAttempt<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedAttempt")
            .field("key", &self.lease.key.short())
            .field("fence", &self.lease.fence)
            .field("attempt", &self.lease.attempt)
            .field("lost", &self.lost)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// How an attempt's final write ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The lease was lost (another owner took the record over, an operator
    /// released it, or it expired and was reclaimed): nothing was written.
    #[error("the lease was lost; the outcome was not recorded")]
    LeaseLost,
    /// The store kept failing until the settle timeout passed. The record
    /// stays `Pending` until its lease expires; the next claim after that
    /// takes it over as a new attempt (or fails it terminally when no
    /// attempts are left).
    #[error("the store failed while the outcome was written")]
    Store(#[source] StoreError),
}

impl<S: IdempotencyStore + Clone + 'static> OwnedAttempt<S> {
    /// Takes ownership of an acquired lease. The first renewal is due one
    /// heartbeat from now.
    pub fn new(store: S, policy: Policy, lease: Lease, kind: ClaimKind) -> Self {
        Self {
            store,
            policy,
            attempt: Attempt::new(lease.clone(), kind),
            lease,
            lost: false,
            ticker: None,
            renewal: None,
            pending: None,
            ended: false,
            handed_over: false,
        }
    }

    /// What the operation is handed.
    pub fn attempt(&self) -> &Attempt {
        &self.attempt
    }

    /// The latest renewed lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether a renewal found the lease lost: the record is no longer this
    /// attempt's, and whatever it writes will be refused.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Drives `work` to completion, renewing the lease every heartbeat while
    /// it runs. Renewals run alongside `work`, never instead of it. A
    /// renewal still in flight when `work` ends goes on being polled by the
    /// next step of the attempt (more work, or the final write).
    ///
    /// Call it as often as needed (the handler, then the body it streams):
    /// the heartbeat carries over.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work` at its current `.await`; the attempt
    /// itself stays usable (or, if dropped too, see the type's docs).
    pub fn run<F: Future>(&mut self, work: F) -> Run<'_, S, F> {
        Run { owner: self, work }
    }

    /// One step of [`Run`]: the work first (biased), then a renewal in
    /// flight, then the heartbeat that starts the next one.
    fn poll_step<F: Future>(
        &mut self,
        mut work: Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<F::Output> {
        loop {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if let Some(renewal) = self.renewal.as_mut() {
                let Poll::Ready(renewed) = renewal.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.renewal = None;
                self.settle_renewal(renewed);
                continue;
            }
            if self.lost || self.attempt.is_completed() {
                return Poll::Pending;
            }
            let every = self.policy.heartbeat_interval();
            let ticker = self.ticker.get_or_insert_with(|| {
                let mut t = tokio::time::interval_at(Instant::now() + every, every);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            });
            if ticker.poll_tick(cx).is_pending() {
                return Poll::Pending;
            }
            self.start_renewal();
        }
    }

    fn start_renewal(&mut self) {
        let store = self.store.clone();
        let current = self.lease.clone();
        let timeout = self.policy.store_timeout_duration();
        self.renewal = Some(Box::pin(async move {
            with_timeout(timeout, store.renew(&current)).await
        }));
    }

    fn settle_renewal(&mut self, renewed: Result<Lease, StoreError>) {
        match renewed {
            Ok(l) => self.lease = l,
            // The work completed the record itself: nothing is left to renew.
            Err(StoreError::LeaseLost) if self.attempt.is_completed() => {}
            // A final write is in flight and may be what ended the lease (a
            // renewal queued behind it finds the record settled): its own
            // answer decides, and says so.
            Err(StoreError::LeaseLost) if self.pending.is_some() => self.lost = true,
            Err(StoreError::LeaseLost) => {
                tracing::warn!(key = %self.lease.key.short(), fence = self.lease.fence, "lease lost while the attempt runs; its outcome will not be recorded");
                self.lost = true;
            }
            Err(e) => {
                tracing::warn!(key = %self.lease.key.short(), error = %e, "lease renewal failed; retrying at the next heartbeat");
            }
        }
    }

    /// Stores the outcome (`Pending` → `Completed`), retrying transient store
    /// errors with backoff while the lease keeps being renewed.
    ///
    /// # Errors
    ///
    /// [`SettleError::LeaseLost`] if the record is no longer this attempt's;
    /// [`SettleError::Store`] if the store kept failing for the settle timeout.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the write is confirmed hands it to a
    /// spawned task (see the type's docs): the outcome is still written.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
    )]
    pub fn complete(
        mut self,
        completion: Completion,
    ) -> impl Future<Output = Result<(), SettleError>> {
        async move { self.settle(Settlement::Complete(completion)).await }
    }

    /// Records the failure (`Pending` → `Failed`). A retryable failure on the
    /// last allowed attempt is stored as terminal (see [`Policy::settle_failure`]).
    /// Retried like [`complete`](Self::complete).
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    ///
    /// # Cancel safety
    ///
    /// As [`complete`](Self::complete).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
    )]
    pub fn fail(mut self, failure: Failure) -> impl Future<Output = Result<(), SettleError>> {
        async move {
            let failure = self.policy.settle_failure(&self.lease, failure);
            self.settle(Settlement::Fail(failure)).await
        }
    }

    /// Forgets the record (`Pending` → absent): nothing worth keeping
    /// happened, the next claim runs afresh. Retried like
    /// [`complete`](Self::complete).
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    ///
    /// # Cancel safety
    ///
    /// As [`complete`](Self::complete).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
    )]
    pub fn release(mut self) -> impl Future<Output = Result<(), SettleError>> {
        async move { self.settle(Settlement::Release).await }
    }

    /// Ends the attempt without writing: the work completed the record
    /// itself ([`Attempt::mark_completed`]) or the lease was lost. Called on
    /// an attempt that is neither, it leaves the record to the drop rule
    /// (a retryable "cancelled" failure) and logs an error.
    pub fn finish(mut self) {
        self.renewal = None;
        if self.attempt.is_completed() || self.lost {
            self.ended = true;
        } else {
            tracing::error!(key = %self.lease.key.short(), "attempt finished without an outcome; recording it as cancelled");
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
    )]
    fn settle(
        &mut self,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), SettleError>> + '_ {
        async move {
            if self.lost {
                self.ended = true;
                return Err(SettleError::LeaseLost);
            }
            self.pending = Some(settlement);
            let result = self.settle_pending().await;
            self.pending = None;
            self.ended = true;
            // A renewal still in flight has nothing left to protect.
            self.renewal = None;
            result
        }
    }

    /// Writes `self.pending` until it lands, the lease is lost or the settle
    /// timeout passes, renewing the lease alongside.
    async fn settle_pending(&mut self) -> Result<(), SettleError> {
        // One copy per write: `self.pending` keeps the original for a
        // retry, and for the hand-over if this attempt is dropped meanwhile.
        let Some(name) = self.pending.as_ref().map(Settlement::name) else {
            return Ok(());
        };
        let give_up = Instant::now().checked_add(self.policy.settle_timeout_duration());
        let mut backoff = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let Some(settlement) = self.pending.clone() else {
                return Ok(());
            };
            let write = write(
                self.store.clone(),
                self.lease.clone(),
                settlement,
                self.policy.store_timeout_duration(),
            );
            let err = match self.run(write).await {
                Ok(()) => {
                    if tries > 1 {
                        tracing::info!(key = %self.lease.key.short(), tries, "{} recorded after retrying", name);
                    }
                    return Ok(());
                }
                Err(StoreError::LeaseLost) => return Err(self.lease_lost(name)),
                Err(e) => e,
            };
            if self.lost {
                return Err(self.lease_lost(name));
            }
            let out_of_time = give_up.is_none_or(|g| Instant::now() + backoff >= g);
            if !err.is_transient() || out_of_time {
                tracing::error!(
                    key = %self.lease.key.short(),
                    error = %err,
                    tries,
                    attempt = self.lease.attempt,
                    "could not record the {}: the record stays pending until its lease expires; the next request with this key then takes it over as a new attempt (or fails it terminally when no attempts are left)",
                    name
                );
                return Err(SettleError::Store(err));
            }
            tracing::warn!(key = %self.lease.key.short(), error = %err, tries, "could not record the {}; retrying while the lease is renewed", name);
            self.run(tokio::time::sleep(backoff)).await;
            if self.lost {
                return Err(self.lease_lost(name));
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The lease was lost before the final write landed: says so once.
    fn lease_lost(&mut self, settlement: &'static str) -> SettleError {
        tracing::warn!(key = %self.lease.key.short(), fence = self.lease.fence, "lease lost before the {settlement} was recorded; nothing was written");
        self.lost = true;
        SettleError::LeaseLost
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
fn write<S: IdempotencyStore>(
    store: S,
    lease: Lease,
    settlement: Settlement,
    timeout: Duration,
) -> impl Future<Output = Result<(), StoreError>> {
    async move {
        match settlement {
            Settlement::Complete(c) => with_timeout(timeout, store.complete(&lease, c)).await,
            Settlement::Fail(f) => with_timeout(timeout, store.fail(&lease, f)).await,
            Settlement::Release => with_timeout(timeout, store.release(&lease)).await,
        }
    }
}

impl<S: IdempotencyStore + Clone + 'static> Drop for OwnedAttempt<S> {
    fn drop(&mut self) {
        if self.ended || self.lost || self.attempt.is_completed() {
            self.store.attempt_ended(&self.lease);
            return;
        }
        if self.handed_over {
            tracing::warn!(key = %self.lease.key.short(), "the runtime stopped before a dropped attempt's outcome was recorded; the record stays pending until its lease expires");
            self.store.attempt_ended(&self.lease);
            return;
        }
        let settlement = self.pending.take().unwrap_or_else(|| {
            Settlement::Fail(self.policy.settle_failure(
                &self.lease,
                Failure::retryable(
                    "cancelled: the caller dropped the operation before it finished",
                ),
            ))
        });
        let key = self.lease.key;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %key.short(), "attempt dropped outside a Tokio runtime; the record stays pending until its lease expires");
            self.store.attempt_ended(&self.lease);
            return;
        };
        let mut rest = OwnedAttempt {
            store: self.store.clone(),
            policy: self.policy.clone(),
            attempt: self.attempt.clone(),
            lease: self.lease.clone(),
            lost: false,
            ticker: self.ticker.take(),
            renewal: self.renewal.take(),
            pending: None,
            ended: false,
            handed_over: true,
        };
        self.ended = true;
        handle.spawn(async move {
            let name = settlement.name();
            match rest.settle(settlement).await {
                Ok(()) => tracing::debug!(key = %key.short(), "{name} of a dropped attempt recorded"),
                Err(e) => tracing::debug!(key = %key.short(), error = %e, "{name} of a dropped attempt not recorded"),
            }
        });
    }
}
