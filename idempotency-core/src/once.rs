//! Run any async operation once per key: [`Idempotent`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::fingerprint::Fingerprint;
use crate::key::{StorageKey, hex};
use crate::policy::Policy;
use crate::record::{Lease, Outcome};
use crate::store::{
    Claim, ClaimKind, ClaimRequest, Completion, Failure, IdempotencyStore, Observed, StoreError,
};

/// The result of a run: the value, and whether this call produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution<T> {
    /// This call executed the operation.
    Executed(T),
    /// An earlier call executed it; this is its stored result.
    Replayed(T),
}

impl<T> Execution<T> {
    /// The value, however it was obtained.
    pub fn into_inner(self) -> T {
        match self {
            Self::Executed(v) | Self::Replayed(v) => v,
        }
    }

    /// Whether the value is a replay.
    pub fn is_replay(&self) -> bool {
        matches!(self, Self::Replayed(_))
    }
}

/// Why a run produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E> {
    /// Another caller is executing the operation now (and waiting, if
    /// configured, timed out).
    #[error("operation already in flight; retry after {retry_after:?}")]
    InFlight {
        /// Time left on the other caller's lease.
        retry_after: Duration,
    },
    /// The key was first used with a different input.
    #[error("idempotency key reused with a different input")]
    Mismatch,
    /// The record is corrupted and blocks until an operator resolves it.
    #[error("idempotency record is corrupted: {detail}")]
    Corrupted {
        /// What was found.
        detail: String,
    },
    /// An earlier attempt failed terminally (or attempts are exhausted); the
    /// failure is replayed.
    #[error("operation failed earlier and will not run again: {reason}")]
    Failed {
        /// The stored reason.
        reason: String,
    },
    /// The operation ran in this call and returned an error; the record is
    /// marked failed (retryable or terminal as classified).
    #[error("operation failed")]
    Operation(#[source] E),
    /// The operation ran, but another worker took the record over meanwhile
    /// (this call's lease expired); its result was not recorded.
    #[error("lease lost while the operation ran; its result was not recorded")]
    LeaseLost,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The result could not be serialised or a stored result deserialised.
    #[error("result (de)serialisation failed")]
    Codec(#[source] serde_json::Error),
}

/// Context handed to the operation.
#[derive(Debug, Clone)]
pub struct Attempt {
    lease: Lease,
    kind: ClaimKind,
}

impl Attempt {
    /// 1 for the first execution, higher after crashes or retryable failures.
    pub fn number(&self) -> u32 {
        self.lease.attempt
    }

    /// Whether this is the first execution of the key.
    pub fn is_first(&self) -> bool {
        self.kind == ClaimKind::New
    }

    /// How the lease was obtained.
    pub fn kind(&self) -> ClaimKind {
        self.kind
    }

    /// Fencing number: pass it to downstream systems that reject stale writers.
    pub fn fence(&self) -> u64 {
        self.lease.fence
    }

    /// The record's key.
    pub fn key(&self) -> StorageKey {
        self.lease.key
    }

    /// A stable key for a downstream call (payment, e-mail, queue message),
    /// the same on every attempt of this record, so the downstream system can
    /// deduplicate a retry of a half-done attempt.
    pub fn downstream_key(&self, label: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"idempotency-rs/downstream/v1");
        h.update(self.lease.key.as_bytes());
        h.update((label.len() as u64).to_be_bytes());
        h.update(label.as_bytes());
        hex(&h.finalize())
    }
}

/// Whether a failed operation may run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// A later call may execute again (until max attempts).
    Retryable,
    /// Every later call gets [`RunError::Failed`].
    Terminal,
}

/// Runs async operations once per key, over any [`IdempotencyStore`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use idempotency_core::{Execution, Fingerprint, Idempotent, KeySpec, MemoryStore, Policy};
///
/// let runner = Idempotent::new(MemoryStore::new(), Policy::default());
/// let key = KeySpec::new("billing").derived(["invoice-7"]).storage_key();
/// let input = serde_json::json!({"amount": 1200});
/// let fp = Fingerprint::of_value("charge", &input).unwrap();
///
/// let first = runner
///     .run(key, fp, |_attempt| async { Ok::<_, std::io::Error>(String::from("ch_1")) })
///     .await
///     .unwrap();
/// assert_eq!(first, Execution::Executed("ch_1".to_string()));
///
/// let second = runner
///     .run(key, fp, |_attempt| async { Ok::<_, std::io::Error>(String::from("ch_2")) })
///     .await
///     .unwrap();
/// assert_eq!(second, Execution::Replayed("ch_1".to_string()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Idempotent<S> {
    store: S,
    policy: Policy,
}

impl<S> Idempotent<S>
where
    S: IdempotencyStore + Clone + 'static,
{
    /// A runner over `store` with `policy`.
    pub fn new(store: S, policy: Policy) -> Self {
        Self { store, policy }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `op` unless a result for `key` exists; errors of `op` are retryable.
    ///
    /// See [`run_classified`](Self::run_classified).
    ///
    /// # Errors
    ///
    /// See [`RunError`].
    ///
    /// # Cancel safety
    ///
    /// See [`run_classified`](Self::run_classified).
    pub async fn run<T, E, F, Fut>(
        &self,
        key: StorageKey,
        fingerprint: Fingerprint,
        op: F,
    ) -> Result<Execution<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_classified(key, fingerprint, op, |_| FailureClass::Retryable)
            .await
    }

    /// Runs `op` unless a result for `key` exists, classifying its errors.
    ///
    /// 1. Claims the key (waiting for an in-flight execution if the policy says so).
    /// 2. On a replay, deserialises the stored value; a value that cannot be
    ///    decoded marks the record `Corrupted`.
    /// 3. Otherwise runs `op`, renewing the lease every heartbeat while it
    ///    runs, then stores its value (`Completed`) or its error (`Failed`,
    ///    retryable or terminal per `classify`; the last allowed attempt is
    ///    always terminal).
    ///
    /// # Errors
    ///
    /// See [`RunError`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, by design of what cancellation means here. If the
    /// returned future is dropped while `op` runs, `op` is dropped at its
    /// current `.await` point and the record is marked `Failed` *retryable*
    /// ("cancelled"), on a task spawned on the current Tokio runtime, so the
    /// next call runs the operation again (counting an attempt) instead of
    /// waiting for the lease to expire. Whatever `op` had already done before
    /// the drop is not undone: operations that must never be cut half-way
    /// should be spawned as their own task (the HTTP layer does this), or
    /// complete in the same database transaction as their effect. Outside a
    /// Tokio runtime the record stays `Pending` until its lease expires, then a
    /// later call takes it over. Dropping the future before `op` starts, or
    /// after it finished, leaves the record exactly as a completed call would.
    pub async fn run_classified<T, E, F, Fut, C>(
        &self,
        key: StorageKey,
        fingerprint: Fingerprint,
        op: F,
        classify: C,
    ) -> Result<Execution<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Attempt) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&E) -> FailureClass,
    {
        let req = self.policy.claim_request(key, fingerprint);
        let claim = claim_with_wait(&self.store, &req, self.policy.wait_timeout())
            .await
            .map_err(RunError::Store)?;
        let (lease, kind) = match claim {
            Claim::Acquired { lease, kind } => (lease, kind),
            Claim::Completed(c) => return self.replay(&key, c.fence, c.outcome).await,
            Claim::Failed(f) => return Err(RunError::Failed { reason: f.reason }),
            Claim::InFlight { retry_after, .. } => return Err(RunError::InFlight { retry_after }),
            Claim::Mismatch => return Err(RunError::Mismatch),
            Claim::Corrupted { detail } => return Err(RunError::Corrupted { detail }),
        };

        let mut guard = CancelGuard {
            store: Some(self.store.clone()),
            lease: lease.clone(),
            policy: self.policy.clone(),
        };
        let attempt = Attempt {
            lease: lease.clone(),
            kind,
        };
        let (result, fenced) =
            run_with_heartbeat(&self.store, &self.policy, lease, op(attempt)).await;
        guard.disarm();
        let lease = guard.lease.clone();
        if fenced {
            return Err(RunError::LeaseLost);
        }
        match result {
            Ok(value) => {
                let bytes = match serde_json::to_vec(&value) {
                    Ok(b) => b,
                    Err(e) => {
                        let failure = Failure::terminal(format!("result not serialisable: {e}"));
                        let _ = self.store.fail(&lease, failure).await;
                        return Err(RunError::Codec(e));
                    }
                };
                let completion = Completion::new(Outcome::Value(Bytes::from(bytes)));
                complete_with_retry(&self.store, &lease, completion)
                    .await
                    .map_err(|e| match e {
                        StoreError::LeaseLost => RunError::LeaseLost,
                        e => RunError::Store(e),
                    })?;
                Ok(Execution::Executed(value))
            }
            Err(e) => {
                let failure = match classify(&e) {
                    FailureClass::Retryable => Failure::retryable("operation returned an error"),
                    FailureClass::Terminal => Failure::terminal("operation returned an error"),
                };
                let failure = self.policy.settle_failure(&lease, failure);
                match self.store.fail(&lease, failure).await {
                    Ok(()) | Err(StoreError::LeaseLost) => {}
                    Err(store) => {
                        tracing::warn!(key = %key.short(), error = %store, "could not record failure; the lease will expire");
                    }
                }
                Err(RunError::Operation(e))
            }
        }
    }

    async fn replay<T: DeserializeOwned, E>(
        &self,
        key: &StorageKey,
        fence: u64,
        outcome: Outcome,
    ) -> Result<Execution<T>, RunError<E>> {
        let detail = match outcome {
            Outcome::Value(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(Execution::Replayed(v)),
                Err(e) => format!("stored value does not decode as the requested type: {e}"),
            },
            Outcome::Response(_) => "record holds an HTTP response, not a typed value".to_owned(),
            Outcome::Tombstone { reason, .. } => {
                return Err(RunError::Failed {
                    reason: format!("result was not kept: {reason}"),
                });
            }
        };
        tracing::error!(key = %key.short(), %detail, alert = true, "idempotency record corrupted");
        // Only the version this call replayed: a record resolved or
        // re-claimed meanwhile (`Conflict`, `NotFound`) is left alone.
        match self
            .store
            .mark_corrupted(key, Observed::completed(fence), &detail)
            .await
        {
            Ok(()) | Err(StoreError::NotFound | StoreError::Conflict) => {}
            Err(e) => return Err(RunError::Store(e)),
        }
        Err(RunError::Corrupted { detail })
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
    let deadline = wait.map(|w| Instant::now() + w);
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

/// Drives `op` to completion, renewing `lease` every heartbeat. Returns the
/// result and whether the lease was lost meanwhile.
async fn run_with_heartbeat<S, Fut, T, E>(
    store: &S,
    policy: &Policy,
    mut lease: Lease,
    op: Fut,
) -> (Result<T, E>, bool)
where
    S: IdempotencyStore + ?Sized,
    Fut: Future<Output = Result<T, E>>,
{
    let every = policy.heartbeat_interval();
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fenced = false;
    tokio::pin!(op);
    loop {
        tokio::select! {
            biased;
            r = &mut op => return (r, fenced),
            _ = ticker.tick(), if !fenced => match store.renew(&lease).await {
                Ok(renewed) => lease = renewed,
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(key = %lease.key.short(), fence = lease.fence, "lease lost while running; result will not be recorded");
                    fenced = true;
                }
                Err(e) => tracing::warn!(key = %lease.key.short(), error = %e, "lease renewal failed; will retry"),
            },
        }
    }
}

/// Completes, retrying transient store errors a few times.
async fn complete_with_retry<S: IdempotencyStore + ?Sized>(
    store: &S,
    lease: &Lease,
    completion: Completion,
) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(20);
    for _ in 0..2 {
        match store.complete(lease, completion.clone()).await {
            Err(e) if e.is_transient() => {
                tracing::warn!(key = %lease.key.short(), error = %e, "completion failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            other => return other,
        }
    }
    store.complete(lease, completion).await
}

/// Marks the attempt failed (retryable) if the run is dropped mid-operation.
struct CancelGuard<S: IdempotencyStore + Clone + 'static> {
    store: Option<S>,
    lease: Lease,
    policy: Policy,
}

impl<S: IdempotencyStore + Clone + 'static> CancelGuard<S> {
    fn disarm(&mut self) {
        self.store = None;
    }
}

impl<S: IdempotencyStore + Clone + 'static> Drop for CancelGuard<S> {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let lease = self.lease.clone();
        let failure = self.policy.settle_failure(
            &lease,
            Failure::retryable("cancelled: the caller dropped the operation before it finished"),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = store.fail(&lease, failure).await {
                        tracing::warn!(key = %lease.key.short(), error = %e, "could not mark cancelled attempt failed; the lease will expire");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %lease.key.short(), "run dropped outside a Tokio runtime; the lease will expire");
            }
        }
    }
}
