//! Run any async operation once per key: [`Idempotent`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Attempt, OwnedAttempt, SettleError, claim_with_wait, with_timeout};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::metered::{MeteredStore, measure};
use crate::policy::Policy;
use crate::record::Outcome;
use crate::store::{Claim, Completion, Failure, IdempotencyStore, Observed, StoreError};

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
    /// marked failed (retryable or terminal as classified) or released
    /// ([`FailureClass::Release`]).
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

/// What a failed operation leaves behind for the next call with its key.
///
/// | class | the record | the next call with the key |
/// |---|---|---|
/// | [`Retryable`](Self::Retryable) | `Failed`, retryable | executes again as the next attempt; once the policy's max attempts are used up, gets [`RunError::Failed`] |
/// | [`Terminal`](Self::Terminal) | `Failed`, terminal | gets [`RunError::Failed`], for the record's retention |
/// | [`Release`](Self::Release) | absent (released; the fence still only grows) | executes afresh as attempt 1: no attempt is used up |
///
/// `Release` is for an operation that refused before it changed anything
/// (a business rule said no, the input is not valid yet): the refusal is
/// not an outcome worth replaying, and a later call — after the state it
/// depends on changed — must be allowed to run. An operation that may have
/// left an effect must not release: the next call would run it again from
/// the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureClass {
    /// A later call may execute again (until max attempts).
    Retryable,
    /// Every later call gets [`RunError::Failed`].
    Terminal,
    /// Nothing happened: the record is released and a later call executes
    /// afresh, without using up an attempt.
    Release,
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
    /// 3. Otherwise runs `op` under the lease engine ([`OwnedAttempt`]): the
    ///    lease is renewed every heartbeat until the outcome is written, then
    ///    it stores its value (`Completed`) or its error (`Failed`, retrying
    ///    a failed write with backoff while the lease is renewed),
    ///    retryable or terminal per `classify` (the last allowed attempt is
    ///    always terminal), or releases the record when `classify` says
    ///    [`FailureClass::Release`].
    ///
    /// # Errors
    ///
    /// See [`RunError`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, by design of what cancellation means here; but a
    /// dropped call never leaves the record `Pending` behind (with a Tokio
    /// runtime):
    ///
    /// | dropped while | `op` | the record |
    /// |---|---|---|
    /// | claiming or waiting | never started | unchanged (a lease granted in that instant simply expires) |
    /// | `op` runs | dropped at its current `.await` | `Failed` *retryable* ("cancelled"), written by a spawned task, so the next call runs the operation again (counting an attempt) at once |
    /// | the result is being written | finished | the result is still written, by a spawned task that goes on renewing the lease and retrying (the next call replays it) |
    /// | after the write | finished | as a completed call left it |
    ///
    /// Whatever `op` had already done before a drop is not undone: operations
    /// that must never be cut half-way should be spawned as their own task
    /// (the HTTP layer does this), or complete in the same database
    /// transaction as their effect ([`Attempt::mark_completed`]). Outside a
    /// Tokio runtime nothing can be spawned: the record stays `Pending` until
    /// its lease expires, then a later call takes it over.
    ///
    /// # Completing in the operation's own transaction
    ///
    /// An operation whose effect lives in the same database as the store can
    /// complete the record itself with [`Attempt::lease`] (the PostgreSQL
    /// store's `complete_in`) and then call [`Attempt::mark_completed`]: the
    /// runner then writes nothing and returns [`Execution::Executed`].
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
        let wait = self.policy.wait_timeout();
        let operation = if wait.is_some() {
            "claim_wait"
        } else {
            "claim"
        };
        let claim = measure(
            operation,
            with_timeout(
                self.policy.claim_budget(),
                claim_with_wait(&self.store, &req, wait),
            ),
        )
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

        let store = MeteredStore::new(self.store.clone());
        let mut owned = OwnedAttempt::new(store, self.policy.clone(), lease, kind);
        let attempt = owned.attempt().clone();
        let result = owned.run(op(attempt.clone())).await;
        // Checked before the lease: an operation that completed the record in
        // its own transaction did so under its fence, whatever a renewal
        // queued behind that transaction's row lock answered meanwhile (it
        // finds the record settled, which reads as a lost lease).
        if attempt.is_completed() {
            owned.finish();
            return result.map(Execution::Executed).map_err(RunError::Operation);
        }
        if owned.is_lost() {
            owned.finish();
            return Err(RunError::LeaseLost);
        }
        match result {
            Ok(value) => {
                let completion = match serde_json::to_vec(&value) {
                    Ok(bytes) => Completion::new(Outcome::Value(Bytes::from(bytes))),
                    Err(e) => {
                        let failure = Failure::terminal(format!("result not serialisable: {e}"));
                        let _ = owned.fail(failure).await;
                        return Err(RunError::Codec(e));
                    }
                };
                owned.complete(completion).await.map_err(|e| match e {
                    SettleError::LeaseLost => RunError::LeaseLost,
                    SettleError::Store(e) => RunError::Store(e),
                })?;
                Ok(Execution::Executed(value))
            }
            Err(e) => {
                let failure = match classify(&e) {
                    FailureClass::Retryable => Failure::retryable("operation returned an error"),
                    FailureClass::Terminal => Failure::terminal("operation returned an error"),
                    FailureClass::Release => {
                        // As with a failure that cannot be recorded: a
                        // release that cannot be written was logged by the
                        // engine (the lease then expires and the next call
                        // takes the record over); the operation's error is
                        // the answer.
                        let _ = owned.release().await;
                        return Err(RunError::Operation(e));
                    }
                };
                // A failure that cannot be recorded was logged by the engine
                // with what happens next; the operation's error is the answer.
                let _ = owned.fail(failure).await;
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
        let timeout = self.policy.store_timeout_duration();
        let observed = Observed::completed(fence);
        let mark = self.store.mark_corrupted(key, observed, &detail);
        match measure("mark_corrupted", with_timeout(timeout, mark)).await {
            Ok(()) | Err(StoreError::NotFound | StoreError::Conflict) => {}
            Err(e) => return Err(RunError::Store(e)),
        }
        Err(RunError::Corrupted { detail })
    }
}
