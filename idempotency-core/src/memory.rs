//! [`MemoryStore`]: the embedded default store.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::key::StorageKey;
use crate::record::{
    Completed, Corrupted, Failed, Lease, LeaseToken, Pending, Record, RecordState, Timestamp,
};
use crate::store::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, Failure, IdempotencyStore, Observed,
    PurgeExpired, Resolution, StoreError,
};

const DEFAULT_SHARDS: usize = 64;
const MIN_SWEEP_LEN: usize = 1024;

/// An in-process store: sharded maps, no global lock on the hot path.
///
/// - **Concurrency**: keys are spread over independent shards (64 by
///   default), each behind its own short-lived mutex that is never held across
///   an `.await`.
/// - **Bounded memory**: a shard sweeps its expired records whenever it has
///   doubled in size since its last sweep, so expired records never pile up;
///   [`PurgeExpired`] sweeps everything on demand.
/// - **Waiters**: [`IdempotencyStore::wait_for_change`] parks on a per-key
///   notification that completion, failure, release and resolution fire, and
///   wakes by itself when the lease runs out.
/// - **Fencing**: fences come from one counter for the whole store, so a
///   key's fence strictly increases with every claim for as long as the
///   store lives, across release, expiry and operator resolution (a record
///   created after its predecessor is gone still gets a greater fence).
/// - **Scope**: one process. Several processes need a shared store
///   (PostgreSQL or Redis).
///
/// Cloning is cheap and shares the records.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    offset_ms: AtomicU64,
    /// The last fence handed out, by any record.
    fences: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }
}

impl Inner {
    fn with_shards(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            offset_ms: AtomicU64::new(0),
            fences: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Shard {
    records: HashMap<StorageKey, Record>,
    waiters: HashMap<StorageKey, Arc<Notify>>,
    sweep_at: usize,
}

impl Shard {
    fn live(&self, key: &StorageKey, now: Timestamp) -> Option<&Record> {
        self.records.get(key).filter(|r| !r.is_expired(now))
    }

    fn wake(&mut self, key: &StorageKey) {
        if let Some(n) = self.waiters.remove(key) {
            n.notify_waiters();
        }
    }

    fn maybe_sweep(&mut self, now: Timestamp) {
        if self.records.len() < self.sweep_at.max(MIN_SWEEP_LEN) {
            return;
        }
        self.sweep(now, usize::MAX);
        self.sweep_at = self.records.len() * 2;
    }

    fn sweep(&mut self, now: Timestamp, limit: usize) -> usize {
        let mut removed = 0;
        self.records.retain(|_, r| {
            if removed < limit && r.is_expired(now) {
                removed += 1;
                false
            } else {
                true
            }
        });
        let records = &self.records;
        self.waiters
            .retain(|k, n| records.contains_key(k) && Arc::strong_count(n) > 1);
        removed
    }

    /// The owned record if `lease` still owns it (same token and fence, not expired).
    fn owned(&mut self, lease: &Lease, now: Timestamp) -> Result<&mut Record, StoreError> {
        match self.records.get_mut(&lease.key) {
            Some(r)
                if r.fence == lease.fence
                    && !r.is_expired(now)
                    && matches!(&r.state, RecordState::Pending(p) if p.token == lease.token) =>
            {
                Ok(r)
            }
            _ => Err(StoreError::LeaseLost),
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("records", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// A store with the default number of shards.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with `n` shards (rounded up to a power of two).
    pub fn with_shards(n: usize) -> Self {
        Self {
            inner: Arc::new(Inner::with_shards(n)),
        }
    }

    /// Number of records held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).records.len())
            .sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_millis(
            Timestamp::now_system()
                .as_millis()
                .saturating_add(self.inner.offset_ms.load(Ordering::Relaxed)),
        )
    }

    fn shard(&self, key: &StorageKey) -> MutexGuard<'_, Shard> {
        let b = key.as_bytes();
        let h = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let idx = (h as usize) & (self.inner.shards.len() - 1);
        lock(&self.inner.shards[idx])
    }

    /// The next fence. Called with the key's shard locked, so a later claim
    /// of a key always draws a greater number than an earlier one (the lock
    /// orders the two draws; one atomic's draws are totally ordered).
    fn next_fence(&self) -> u64 {
        self.inner.fences.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn claim_sync(&self, req: &ClaimRequest) -> Claim {
        let now = self.now();
        let mut shard = self.shard(&req.key);
        let max_attempts = req.max_attempts.max(1);
        let new_lease = |fence: u64, attempt: u32| Lease {
            key: req.key,
            token: LeaseToken::new(),
            fence,
            attempt,
            deadline: now.saturating_add(req.lease),
            lease_duration: req.lease,
            retention: req.retention,
        };
        let pending = |lease: &Lease| {
            RecordState::Pending(Pending {
                token: lease.token,
                lease_deadline: lease.deadline,
            })
        };

        // A replay, the common case, copies only the stored outcome.
        if let Some(rec) = shard.live(&req.key, now)
            && rec.fingerprint == req.fingerprint
            && let RecordState::Completed(c) = &rec.state
        {
            return Claim::Completed(c.clone());
        }
        let existing = shard.live(&req.key, now).cloned();
        let Some(mut rec) = existing else {
            let lease = new_lease(self.next_fence(), 1);
            let record = Record {
                key: req.key,
                fingerprint: req.fingerprint,
                fence: lease.fence,
                attempts: 1,
                created_at: now,
                expires_at: now.saturating_add(req.retention),
                state: pending(&lease),
            };
            shard.records.insert(req.key, record);
            shard.maybe_sweep(now);
            return Claim::Acquired {
                lease,
                kind: ClaimKind::New,
            };
        };

        if let RecordState::Corrupted(c) = &rec.state {
            return Claim::Corrupted {
                detail: c.detail.clone(),
            };
        }
        if rec.fingerprint != req.fingerprint {
            return Claim::Mismatch;
        }
        let kind = match &rec.state {
            RecordState::Pending(p) if p.lease_deadline > now => {
                return Claim::InFlight {
                    retry_after: p.lease_deadline.saturating_since(now),
                    attempt: rec.attempts,
                };
            }
            RecordState::Pending(_) if rec.attempts >= max_attempts => {
                let failed = Failed {
                    reason: format!(
                        "lease expired on attempt {} of {max_attempts}: no attempts left",
                        rec.attempts
                    ),
                    retryable: false,
                    failed_at: now,
                };
                rec.state = RecordState::Failed(failed.clone());
                rec.expires_at = now.saturating_add(req.retention);
                shard.records.insert(req.key, rec);
                shard.wake(&req.key);
                return Claim::Failed(failed);
            }
            RecordState::Pending(_) => ClaimKind::Takeover,
            RecordState::Completed(c) => return Claim::Completed(c.clone()),
            RecordState::Failed(f) if f.retryable && rec.attempts < max_attempts => {
                ClaimKind::Retry
            }
            RecordState::Failed(f) => return Claim::Failed(f.clone()),
            RecordState::Corrupted(_) => unreachable!("handled above"),
        };
        rec.fence = self.next_fence();
        rec.attempts += 1;
        let lease = new_lease(rec.fence, rec.attempts);
        rec.state = pending(&lease);
        rec.expires_at = rec.expires_at.max(lease.deadline);
        shard.records.insert(req.key, rec);
        Claim::Acquired { lease, kind }
    }

    fn finish(&self, lease: &Lease, state: RecordState) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(&lease.key);
        let rec = shard.owned(lease, now)?;
        rec.state = state;
        rec.expires_at = now.saturating_add(lease.retention);
        shard.wake(&lease.key);
        Ok(())
    }
}

impl MemoryStore {
    fn pending_lease_left(&self, key: &StorageKey) -> Option<Duration> {
        let now = self.now();
        match self.shard(key).live(key, now).map(|r| &r.state) {
            Some(RecordState::Pending(p)) if p.lease_deadline > now => {
                Some(p.lease_deadline.saturating_since(now))
            }
            _ => None,
        }
    }

    fn pending_waiter(&self, key: &StorageKey) -> Option<Arc<Notify>> {
        self.pending_lease_left(key)?;
        Some(self.shard(key).waiters.entry(*key).or_default().clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a record half-written
    // (every mutation is a single insert/assignment), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IdempotencyStore for MemoryStore {
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        let out = self.claim_sync(req);
        async move { Ok(out) }
    }

    fn complete(
        &self,
        lease: &Lease,
        completion: Completion,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let state = RecordState::Completed(Completed {
            outcome: completion.outcome,
            resource: completion.resource,
            completed_at: self.now(),
            fence: lease.fence,
        });
        let out = self.finish(lease, state);
        async move { out }
    }

    fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let state = RecordState::Failed(Failed {
            reason: failure.reason,
            retryable: failure.retryable,
            failed_at: self.now(),
        });
        let out = self.finish(lease, state);
        async move { out }
    }

    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send {
        let now = self.now();
        let out = {
            let mut shard = self.shard(&lease.key);
            match shard.owned(lease, now) {
                Ok(_) => {
                    shard.records.remove(&lease.key);
                    shard.wake(&lease.key);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        async move { out }
    }

    fn renew(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        let now = self.now();
        let out = {
            let mut shard = self.shard(&lease.key);
            shard.owned(lease, now).map(|rec| {
                let deadline = now.saturating_add(lease.lease_duration);
                rec.state = RecordState::Pending(Pending {
                    token: lease.token,
                    lease_deadline: deadline,
                });
                rec.expires_at = rec.expires_at.max(deadline);
                Lease {
                    deadline,
                    ..lease.clone()
                }
            })
        };
        async move { out }
    }

    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let now = self.now();
        let out = self.shard(key).live(key, now).cloned();
        async move { Ok(out) }
    }

    fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let now = self.now();
        let out = {
            let mut shard = self.shard(key);
            let out = match shard.records.get_mut(key) {
                Some(r) if !r.is_expired(now) => {
                    if Observed::of(r) == observed {
                        r.state = RecordState::Corrupted(Corrupted {
                            detail: detail.to_owned(),
                            detected_at: now,
                        });
                        r.expires_at = Timestamp::MAX;
                        Ok(())
                    } else {
                        Err(StoreError::Conflict)
                    }
                }
                _ => Err(StoreError::NotFound),
            };
            if out.is_ok() {
                shard.wake(key);
            }
            out
        };
        async move { out }
    }

    fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> impl Future<Output = Result<Record, StoreError>> + Send {
        let now = self.now();
        let out = (|| {
            let mut shard = self.shard(key);
            let Entry::Occupied(mut entry) = shard.records.entry(*key) else {
                return Err(StoreError::NotFound);
            };
            if entry.get().is_expired(now) {
                return Err(StoreError::NotFound);
            }
            match &entry.get().state {
                RecordState::Corrupted(_) | RecordState::Pending(_) => {}
                other => {
                    return Err(StoreError::InvalidState {
                        operation: "resolve",
                        state: other.name(),
                    });
                }
            }
            let before = entry.get().clone();
            match resolution {
                Resolution::Delete => {
                    entry.remove();
                }
                Resolution::Fail(failure) => {
                    let rec = entry.get_mut();
                    rec.state = RecordState::Failed(Failed {
                        reason: failure.reason,
                        retryable: failure.retryable,
                        failed_at: now,
                    });
                    // Operator-resolved failures stay at least a day, like any failure.
                    rec.expires_at = now.saturating_add(Duration::from_secs(24 * 60 * 60));
                }
            }
            shard.wake(key);
            Ok(before)
        })();
        async move { out }
    }

    fn wait_for_change(
        &self,
        key: &StorageKey,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = *key;
        async move {
            let Some(notify) = self.pending_waiter(&key) else {
                return Ok(());
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Registered before re-checking, so a completion racing with this
            // call is never missed.
            let Some(lease_left) = self.pending_lease_left(&key) else {
                return Ok(());
            };
            let wait = timeout.min(lease_left + Duration::from_millis(1));
            let _ = tokio::time::timeout(wait, notified).await;
            Ok(())
        }
    }
}

impl PurgeExpired for MemoryStore {
    fn purge_expired(&self, batch: usize) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let now = self.now();
        let mut left = batch;
        for s in self.inner.shards.iter() {
            if left == 0 {
                break;
            }
            left -= lock(s).sweep(now, left);
        }
        let removed = (batch - left) as u64;
        async move { Ok(removed) }
    }
}

impl ClockControl for MemoryStore {
    fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.inner.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
