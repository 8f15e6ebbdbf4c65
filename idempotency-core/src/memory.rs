//! [`MemoryStore`]: the embedded default store.

use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cache::{InvalidationFeed, InvalidationHub, Invalidations};
use crate::key::{KeyMap, StorageKey};
use crate::record::{
    Completed, Corrupted, Failed, Lease, LeaseToken, Pending, Record, RecordState, Timestamp,
};
use crate::store::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, Failure, IdempotencyStore, Observed,
    PurgeExpired, Resolution, StoreError,
};
use crate::wait::{self, Waiters};

const DEFAULT_SHARDS: usize = 64;
const MIN_SWEEP_LEN: usize = 1024;
/// What every record counts against the byte budget: its key and fingerprint.
const RECORD_BASE_BYTES: u64 = 64;
/// At capacity, expired records are swept before a new claim is refused, at
/// most this often (store clock), so a full store never scans on every claim.
const PRESSURE_SWEEP_EVERY_MS: u64 = 1000;

/// An in-process store: sharded maps, no global lock on the hot path.
///
/// - **Concurrency**: keys are spread over independent shards (64 by
///   default), each behind its own short-lived mutex that is never held across
///   an `.await`.
/// - **Bounded memory**: live records are held to a byte budget
///   ([`MemoryStoreBuilder::max_bytes`], default
///   [`MemoryStore::DEFAULT_MAX_BYTES`], 256 MiB), counting each record's key,
///   fingerprint and stored data (outcome, resource, failure reason,
///   corruption detail), not the allocator's overhead. The budget bounds
///   *new* records: a claim that would create one while the budget is used
///   up fails with [`StoreError::Capacity`] (transient: an HTTP layer answers
///   503). Everything else is always accepted, completions above all, even
///   when they take the store past its budget: an operation that ran never
///   loses its result. Expired, released, resolved and purged records give
///   their bytes back ([`MemoryStore::bytes_used`]). A shard sweeps its
///   expired records whenever it has doubled in size since its last sweep,
///   the whole store is swept (at most once a second) before a claim is
///   refused for capacity, and [`PurgeExpired`] sweeps everything on demand.
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

/// Builds a [`MemoryStore`]: shards and byte budget.
///
/// ```
/// use idempotency_core::MemoryStore;
///
/// let store = MemoryStore::builder().max_bytes(64 * 1024 * 1024).shards(16).build();
/// assert_eq!(store.max_bytes(), Some(64 * 1024 * 1024));
/// let unbounded = MemoryStore::builder().unlimited().build();
/// assert_eq!(unbounded.max_bytes(), None);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    shards: usize,
    max_bytes: Option<u64>,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            shards: DEFAULT_SHARDS,
            max_bytes: Some(MemoryStore::DEFAULT_MAX_BYTES),
        }
    }
}

impl MemoryStoreBuilder {
    /// Number of shards, rounded up to a power of two (default 64).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// The byte budget of the store's records (default
    /// [`MemoryStore::DEFAULT_MAX_BYTES`]): see [`MemoryStore`], "Bounded memory".
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// No byte budget: claims are never refused for capacity. Memory is then
    /// bounded only by what the application sends within the retention.
    pub fn unlimited(mut self) -> Self {
        self.max_bytes = None;
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner::new(self.shards, self.max_bytes)),
        }
    }
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// The waiters of each shard's keys (same index as `shards`).
    waiters: Box<[Waiters]>,
    offset_ms: AtomicU64,
    /// The last fence handed out, by any record.
    fences: AtomicU64,
    budget: Budget,
    /// When (store clock, ms) the store was last swept because it was full.
    pressure_swept_at: AtomicU64,
    /// Replay caches over this store (every change is seen here: always live).
    invalidations: InvalidationHub,
}

impl Default for Inner {
    fn default() -> Self {
        Self::new(DEFAULT_SHARDS, Some(MemoryStore::DEFAULT_MAX_BYTES))
    }
}

impl Inner {
    fn new(shards: usize, max_bytes: Option<u64>) -> Self {
        let n = shards.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            waiters: (0..n).map(|_| Waiters::new()).collect(),
            offset_ms: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            budget: Budget {
                used: AtomicU64::new(0),
                max: max_bytes,
            },
            pressure_swept_at: AtomicU64::new(0),
            invalidations: InvalidationHub::always_live(1024),
        }
    }
}

/// The bytes held by records, against the budget. Every change of a
/// record's size is applied here while its shard is locked, so the count is
/// exact whatever runs concurrently.
struct Budget {
    used: AtomicU64,
    max: Option<u64>,
}

impl Budget {
    /// Takes `n` bytes for a new record if they fit.
    fn try_reserve(&self, n: u64) -> bool {
        match self.max {
            None => {
                self.used.fetch_add(n, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(n).filter(|total| *total <= max)
                })
                .is_ok(),
        }
    }

    /// A record changed from `before` to `after` bytes (never refused).
    fn adjust(&self, before: u64, after: u64) {
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// What a record counts against the budget.
fn record_bytes(r: &Record) -> u64 {
    let len = |n: usize| n as u64;
    let data = match &r.state {
        RecordState::Pending(_) => 0,
        RecordState::Completed(c) => c.data_bytes(),
        RecordState::Failed(f) => len(f.reason.len()),
        RecordState::Corrupted(c) => len(c.detail.len()),
    };
    RECORD_BASE_BYTES + data
}

/// A new claim found the budget used up.
struct Full;

#[derive(Default)]
struct Shard {
    records: KeyMap<Record>,
    sweep_at: usize,
}

impl Shard {
    fn live(&self, key: &StorageKey, now: Timestamp) -> Option<&Record> {
        self.records.get(key).filter(|r| !r.is_expired(now))
    }

    fn maybe_sweep(&mut self, now: Timestamp, budget: &Budget) {
        if self.records.len() < self.sweep_at.max(MIN_SWEEP_LEN) {
            return;
        }
        self.sweep(now, usize::MAX, budget);
        self.sweep_at = self.records.len() * 2;
    }

    fn sweep(&mut self, now: Timestamp, limit: usize, budget: &Budget) -> usize {
        let mut removed = 0;
        let mut freed = 0;
        self.records.retain(|_, r| {
            if removed < limit && r.is_expired(now) {
                removed += 1;
                freed += record_bytes(r);
                false
            } else {
                true
            }
        });
        budget.adjust(freed, 0);
        removed
    }

    /// Stores `rec` over whatever `key` held, accounting the difference
    /// (never refused: `rec` replaces an admitted record).
    fn replace(&mut self, budget: &Budget, rec: Record) {
        let after = record_bytes(&rec);
        let before = self
            .records
            .insert(rec.key, rec)
            .map_or(0, |r| record_bytes(&r));
        budget.adjust(before, after);
    }

    /// Removes `key`'s record, giving its bytes back.
    fn remove(&mut self, budget: &Budget, key: &StorageKey) -> Option<Record> {
        let rec = self.records.remove(key)?;
        budget.adjust(record_bytes(&rec), 0);
        Some(rec)
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
            .field("bytes_used", &self.bytes_used())
            .field("max_bytes", &self.max_bytes())
            .finish()
    }
}

impl MemoryStore {
    /// The default byte budget: 256 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// A store with the default shards (64) and byte budget (256 MiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder for the number of shards and the byte budget.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// A store with `n` shards (rounded up to a power of two) and the default budget.
    pub fn with_shards(n: usize) -> Self {
        Self::builder().shards(n).build()
    }

    /// Bytes the records hold against the budget (see [`MemoryStore`],
    /// "Bounded memory"); expired records not swept yet still count. For
    /// metrics and tests.
    pub fn bytes_used(&self) -> u64 {
        self.inner.budget.used.load(Ordering::Relaxed)
    }

    /// The byte budget, `None` when unlimited.
    pub fn max_bytes(&self) -> Option<u64> {
        self.inner.budget.max
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

    fn slot(&self, key: &StorageKey) -> usize {
        let b = key.as_bytes();
        let h = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        (h as usize) & (self.inner.shards.len() - 1)
    }

    fn shard(&self, key: &StorageKey) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[self.slot(key)])
    }

    /// Wakes the waiters of `key` (called with its shard locked, after the
    /// change: a waiter re-checking later sees it).
    fn wake(&self, key: &StorageKey) {
        self.inner.waiters[self.slot(key)].wake(key);
    }

    /// The next fence. Called with the key's shard locked, so a later claim
    /// of a key always draws a greater number than an earlier one (the lock
    /// orders the two draws; one atomic's draws are totally ordered).
    fn next_fence(&self) -> u64 {
        self.inner.fences.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A claim; at capacity, sweeps expired records (at most once a
    /// second) and tries once more before refusing.
    fn claim_sync(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        if let Ok(claim) = self.claim_once(req) {
            return Ok(claim);
        }
        if self.sweep_under_pressure()
            && let Ok(claim) = self.claim_once(req)
        {
            return Ok(claim);
        }
        let max = self.inner.budget.max.unwrap_or(u64::MAX);
        Err(StoreError::Capacity {
            detail: format!(
                "the in-memory store holds {} of its {max} bytes; a new record does not fit",
                self.bytes_used()
            ),
        })
    }

    /// Sweeps every shard if the last sweep for capacity is a second old;
    /// returns whether it swept.
    fn sweep_under_pressure(&self) -> bool {
        let now = self.now();
        let last = self.inner.pressure_swept_at.load(Ordering::Relaxed);
        let due = last == 0 || now.as_millis() >= last.saturating_add(PRESSURE_SWEEP_EVERY_MS);
        if !due
            || self
                .inner
                .pressure_swept_at
                .compare_exchange(
                    last,
                    now.as_millis().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        for s in self.inner.shards.iter() {
            lock(s).sweep(now, usize::MAX, &self.inner.budget);
        }
        true
    }

    fn claim_once(&self, req: &ClaimRequest) -> Result<Claim, Full> {
        let now = self.now();
        let budget = &self.inner.budget;
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
            return Ok(Claim::Completed(c.clone()));
        }
        let existing = shard.live(&req.key, now).cloned();
        let Some(mut rec) = existing else {
            // A new record: the expired one it replaces gives its bytes back
            // first, then the new one must fit the budget.
            shard.remove(budget, &req.key);
            if !budget.try_reserve(RECORD_BASE_BYTES) {
                return Err(Full);
            }
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
            debug_assert_eq!(record_bytes(&record), RECORD_BASE_BYTES);
            // Reserved above.
            shard.records.insert(req.key, record);
            shard.maybe_sweep(now, budget);
            return Ok(Claim::Acquired {
                lease,
                kind: ClaimKind::New,
            });
        };

        if let RecordState::Corrupted(c) = &rec.state {
            return Ok(Claim::Corrupted {
                detail: c.detail.clone(),
            });
        }
        if rec.fingerprint != req.fingerprint {
            return Ok(Claim::Mismatch);
        }
        let kind = match &rec.state {
            RecordState::Pending(p) if p.lease_deadline > now => {
                return Ok(Claim::InFlight {
                    retry_after: p.lease_deadline.saturating_since(now),
                    attempt: rec.attempts,
                });
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
                shard.replace(budget, rec);
                self.wake(&req.key);
                return Ok(Claim::Failed(failed));
            }
            RecordState::Pending(_) => ClaimKind::Takeover,
            RecordState::Completed(c) => return Ok(Claim::Completed(c.clone())),
            RecordState::Failed(f) if f.retryable && rec.attempts < max_attempts => {
                ClaimKind::Retry
            }
            RecordState::Failed(f) => return Ok(Claim::Failed(f.clone())),
            RecordState::Corrupted(_) => unreachable!("handled above"),
        };
        rec.fence = self.next_fence();
        rec.attempts += 1;
        let lease = new_lease(rec.fence, rec.attempts);
        rec.state = pending(&lease);
        rec.expires_at = rec.expires_at.max(lease.deadline);
        shard.replace(budget, rec);
        Ok(Claim::Acquired { lease, kind })
    }

    /// Completion or failure: never refused for capacity (the record was
    /// admitted when it was claimed; its result is never lost).
    fn finish(&self, lease: &Lease, state: RecordState) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(&lease.key);
        let rec = shard.owned(lease, now)?;
        let before = record_bytes(rec);
        rec.state = state;
        rec.expires_at = now.saturating_add(lease.retention);
        let after = record_bytes(rec);
        self.inner.budget.adjust(before, after);
        self.wake(&lease.key);
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a record half-written
    // (every mutation is a single insert/assignment), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl IdempotencyStore for MemoryStore {
    /// # Errors
    ///
    /// [`StoreError::Capacity`] when the claim would create a record and
    /// the byte budget is used up (replays, in-flight answers, takeovers and
    /// retries of existing records are never refused).
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        let out = self.claim_sync(req);
        async move { out }
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
                    shard.remove(&self.inner.budget, &lease.key);
                    self.wake(&lease.key);
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
                        let before = record_bytes(r);
                        r.state = RecordState::Corrupted(Corrupted {
                            detail: detail.to_owned(),
                            detected_at: now,
                        });
                        r.expires_at = Timestamp::MAX;
                        self.inner.budget.adjust(before, record_bytes(r));
                        Ok(())
                    } else {
                        Err(StoreError::Conflict)
                    }
                }
                _ => Err(StoreError::NotFound),
            };
            if out.is_ok() {
                self.wake(key);
                self.inner.invalidations.invalidate(key);
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
            let budget = &self.inner.budget;
            match resolution {
                Resolution::Delete => {
                    budget.adjust(record_bytes(&entry.remove()), 0);
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
                    budget.adjust(record_bytes(&before), record_bytes(rec));
                }
            }
            self.wake(key);
            self.inner.invalidations.invalidate(key);
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
            if self.pending_lease_left(&key).is_none() {
                return Ok(());
            }
            let waiters = &self.inner.waiters[self.slot(&key)];
            wait::wait_for_change(waiters, &key, timeout, |_| async {
                Ok(self.pending_lease_left(&key))
            })
            .await
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
            left -= lock(s).sweep(now, left, &self.inner.budget);
        }
        let removed = (batch - left) as u64;
        async move { Ok(removed) }
    }
}

/// Operator reads: a copy of the record, expired or not; a listing or a
/// count walks every shard, one lock at a time.
impl crate::admin::AdminStore for MemoryStore {
    fn inspect(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<crate::admin::AdminRecord>, StoreError>> + Send {
        let now = self.now();
        let found = lock(&self.inner.shards[self.slot(key)])
            .records
            .get(key)
            .cloned();
        async move { Ok(found.map(|r| crate::admin::AdminRecord::new(r, now))) }
    }

    fn list(
        &self,
        filter: &crate::admin::ListFilter,
    ) -> impl Future<Output = Result<crate::admin::Listing, StoreError>> + Send {
        let now = self.now();
        let mut matched = Vec::new();
        for s in self.inner.shards.iter() {
            matched.extend(
                lock(s)
                    .records
                    .values()
                    .map(|r| crate::admin::AdminRecord::new(r.clone(), now))
                    .filter(|r| filter.matches(r)),
            );
        }
        let listing = crate::admin::Listing::from_matches(matched, filter.limit);
        async move { Ok(listing) }
    }

    fn count_expired(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let now = self.now();
        let n: usize = self
            .inner
            .shards
            .iter()
            .map(|s| {
                lock(s)
                    .records
                    .values()
                    .filter(|r| r.is_expired(now))
                    .count()
            })
            .sum();
        async move { Ok(n as u64) }
    }
}

impl ClockControl for MemoryStore {
    fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.inner.offset_ms.fetch_add(ms, Ordering::Relaxed);
        // Caches keep time by the process's clock: records that expired at
        // the store's new time must not be served, so they start over.
        self.inner.invalidations.set_live(false);
        self.inner.invalidations.set_live(true);
    }
}

impl Invalidations for MemoryStore {
    fn invalidations(&self) -> InvalidationFeed {
        self.inner.invalidations.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::record::{Outcome, StoredResponse};

    impl MemoryStore {
        /// The budget recomputed from the records themselves.
        fn recount(&self) -> u64 {
            self.inner
                .shards
                .iter()
                .map(|s| lock(s).records.values().map(record_bytes).sum::<u64>())
                .sum()
        }
    }

    fn req(key: StorageKey) -> ClaimRequest {
        ClaimRequest {
            key,
            fingerprint: Fingerprint::of_bytes("budget", b""),
            lease: Duration::from_secs(10),
            retention: Duration::from_secs(60),
            max_attempts: 3,
        }
    }

    fn response(n: usize) -> Completion {
        Completion::new(Outcome::Response(StoredResponse {
            status: 201,
            headers: vec![("location".into(), Bytes::from_static(b"/things/1"))],
            body: Bytes::from(vec![7u8; n]),
            trailers: Vec::new(),
        }))
        .with_resource("/things/1")
    }

    /// Many tasks claim, complete, fail, renew, release, mark and resolve
    /// records at once, several on the same keys; the budget always equals
    /// what the records hold, and comes back to zero once they are gone.
    #[test]
    fn the_byte_count_stays_exact_under_concurrency() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::builder().shards(4).unlimited().build();
            let shared: Arc<Vec<StorageKey>> = Arc::new(
                (0..8u8)
                    .map(|i| StorageKey::from_segments(&[b"shared".as_slice(), &[i]]))
                    .collect(),
            );
            let mut tasks = Vec::new();
            for t in 0..16u32 {
                let (store, shared) = (store.clone(), shared.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..500u32 {
                        let key = if i % 3 == 0 {
                            shared[(i as usize + t as usize) % shared.len()]
                        } else {
                            StorageKey::from_segments(&[t.to_be_bytes(), i.to_be_bytes()])
                        };
                        let Ok(Claim::Acquired { lease, .. }) = store.claim(&req(key)).await else {
                            continue;
                        };
                        let _ = match (i + t) % 6 {
                            0 => store.release(&lease).await,
                            1 => {
                                store
                                    .complete(&lease, response((i as usize * 37) % 3000))
                                    .await
                            }
                            2 => {
                                store
                                    .fail(&lease, Failure::retryable("x".repeat(i as usize % 50)))
                                    .await
                            }
                            3 => {
                                let lease = store.renew(&lease).await.unwrap_or(lease);
                                store.complete(&lease, response(10)).await
                            }
                            4 => {
                                let observed =
                                    Observed::new(crate::store::StateKind::Pending, lease.fence);
                                store.mark_corrupted(&key, observed, "stuck").await
                            }
                            _ => store.resolve(&key, Resolution::Delete).await.map(drop),
                        };
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert!(store.bytes_used() > 0);
            assert_eq!(store.bytes_used(), store.recount());

            // Corrupted records never expire: an operator resolves them.
            for key in shared.iter() {
                let _ = store.resolve(key, Resolution::Delete).await;
            }
            let corrupted: Vec<StorageKey> = store
                .inner
                .shards
                .iter()
                .flat_map(|s| {
                    lock(s)
                        .records
                        .values()
                        .filter(|r| matches!(r.state, RecordState::Corrupted(_)))
                        .map(|r| r.key)
                        .collect::<Vec<_>>()
                })
                .collect();
            for key in corrupted {
                store.resolve(&key, Resolution::Delete).await.unwrap();
            }
            store.advance(Duration::from_secs(25 * 3600));
            store.purge_expired(usize::MAX).await.unwrap();
            assert_eq!(store.len(), 0);
            assert_eq!(store.bytes_used(), 0, "every byte was given back");
        });
    }

    #[test]
    fn record_sizes_count_key_fingerprint_and_data() {
        let key = StorageKey::from_segments(&[b"k"]);
        let mut rec = Record {
            key,
            fingerprint: Fingerprint::of_bytes("x", b""),
            fence: 1,
            attempts: 1,
            created_at: Timestamp::from_millis(0),
            expires_at: Timestamp::MAX,
            state: RecordState::Pending(Pending {
                token: LeaseToken::new(),
                lease_deadline: Timestamp::MAX,
            }),
        };
        assert_eq!(record_bytes(&rec), 64);
        rec.state = RecordState::Completed(Completed {
            outcome: Outcome::Response(StoredResponse {
                status: 200,
                headers: vec![("etag".into(), Bytes::from_static(b"\"1\""))],
                body: Bytes::from_static(b"hello"),
                trailers: Vec::new(),
            }),
            resource: Some("/r".into()),
            completed_at: Timestamp::from_millis(0),
            fence: 1,
        });
        assert_eq!(record_bytes(&rec), 64 + 4 + 3 + 5 + 2);
        rec.state = RecordState::Failed(Failed {
            reason: "boom".into(),
            retryable: true,
            failed_at: Timestamp::from_millis(0),
        });
        assert_eq!(record_bytes(&rec), 68);
    }
}
