//! [`ReplayCache`]: an opt-in, in-process cache of completed outcomes in
//! front of any store whose changes reach every process
//! ([`Invalidations`]).
//!
//! A completed record is immutable until it expires or an operator (or a
//! replay that found it unusable) changes it, so its replay can be served
//! from memory: a duplicate then costs a hash lookup instead of a store
//! round trip. The cache stays coherent with the store:
//!
//! | the record … | the cache |
//! |---|---|
//! | is marked corrupted, deleted, or re-claimed, in **any** process | drops the entry when the store's change feed says so ([`Invalidations`]: PostgreSQL `NOTIFY`, Redis pub/sub) |
//! | expires | stops serving it `expiry_margin` before its expiry (the store's clock and this process's clock must agree within that margin) and after `max_age` in any case |
//! | — the change feed is down or lagged | empties itself and fills again only once the feed is back |
//! | is being claimed by **this** process (the claim sent, no answer yet) | holds back its duplicates (same fingerprint) until the answer, then answers them from it: *in flight* if it acquired the record, else the same answer; sends their own claims if it failed or was dropped |
//! | is being executed by **this** process (a claim through the cache acquired it) | answers its duplicates (same fingerprint) *in flight* itself, with the time left on the lease, and wakes the ones waiting ([`claim_with_wait`](crate::claim_with_wait), the layer's `Concurrency::Wait`) when the attempt ends; forgets the attempt when it completes, fails or releases through the cache, when the engine reports its end ([`IdempotencyStore::attempt_ended`]), when its lease runs out, or when the feed reports a change of the record |
//! | is completed by this process through the cache | keeps the outcome it wrote for the duplicates to come (no read back) |
//!
//! What it can serve stale, exactly: between a change committed in the
//! store and its notification reaching this process (on loopback well under
//! a millisecond; the bound is the feed's delivery latency), the previous
//! outcome, or *in flight* for an attempt of this process whose record an
//! operator released or resolved elsewhere. Nothing else: a fill that raced
//! with any invalidation is discarded, a request with another fingerprint
//! is sent to the store, and only `Completed` answers are cached (never
//! failed or corrupted ones). An attempt's *in flight* is this process's own
//! knowledge and never outlasts its lease; a duplicate it answers would have
//! had the same answer from the store (the record is `Pending` under this
//! process's lease), and duplicates in other processes ask the store.

//!
//! Off by default: wrap the store to use it.
//!
//! ```
//! use std::time::Duration;
//! use idempotency_core::cache::{ReplayCache, ReplayCacheConfig};
//! use idempotency_core::MemoryStore;
//!
//! let store = ReplayCache::new(
//!     MemoryStore::new(),
//!     ReplayCacheConfig::default()
//!         .max_bytes(32 * 1024 * 1024)
//!         .max_age(Duration::from_secs(60)),
//! );
//! assert_eq!(store.len(), 0);
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, watch};

use crate::key::KeyMap;
use crate::wait::BackgroundTask;
use crate::{
    Claim, ClaimRequest, Completed, Completion, Failure, Fingerprint, IdempotencyStore, Lease,
    Observed, Record, RecordState, Resolution, StorageKey, StoreError, Timestamp,
};

/// Counter of cache lookups, labelled `result`: `hit` (a cached replay), `in_flight` (a
/// duplicate of an attempt of this process), `shared` (the answer of the same claim on its
/// way), `miss` (sent to the store).
pub const LOOKUPS_TOTAL: &str = "idempotency_replay_cache_lookups_total";
/// Counter of entries dropped because the store said the record changed
/// (or the feed was lost and the cache emptied itself: one per entry).
pub const INVALIDATIONS_TOTAL: &str = "idempotency_replay_cache_invalidations_total";

const SHARDS: usize = 16;
/// Attempts a shard holds before it first sweeps out those past their lease.
const FLIGHTS_SWEPT_FROM: usize = 64;
/// Bookkeeping per entry, beyond the outcome's bytes.
const ENTRY_OVERHEAD: u64 = 160;

/// A store's cross-process change feed for cached outcomes: which keys'
/// completed records changed (marked corrupted, deleted, re-claimed) in any
/// process sharing the store, and whether that news is flowing.
#[derive(Debug)]
pub struct InvalidationFeed {
    keys: broadcast::Receiver<StorageKey>,
    live: watch::Receiver<bool>,
}

/// The sending side of an [`InvalidationFeed`], kept by a store.
///
/// A store calls [`invalidate`](Self::invalidate) for every key its change
/// channel reports and [`set_live`](Self::set_live) when the channel
/// connects (`true`) or may have lost messages (`false`).
#[derive(Debug)]
pub struct InvalidationHub {
    keys: broadcast::Sender<StorageKey>,
    live: watch::Sender<bool>,
}

impl InvalidationHub {
    /// A hub buffering up to `capacity` keys per slow subscriber (a
    /// subscriber that falls further behind empties its cache), not live.
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: broadcast::Sender::new(capacity.max(1)),
            live: watch::Sender::new(false),
        }
    }

    /// A hub that is live from the start (a store whose every change is
    /// seen in this process, such as [`MemoryStore`](crate::MemoryStore)).
    pub fn always_live(capacity: usize) -> Self {
        let hub = Self::new(capacity);
        hub.set_live(true);
        hub
    }

    /// Reports that `key`'s completed record changed.
    pub fn invalidate(&self, key: &StorageKey) {
        // No subscriber: nothing is cached.
        let _ = self.keys.send(*key);
    }

    /// Reports whether every change is being heard.
    pub fn set_live(&self, live: bool) {
        self.live.send_replace(live);
    }

    /// Whether every change is being heard.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// A new subscription.
    pub fn subscribe(&self) -> InvalidationFeed {
        InvalidationFeed {
            keys: self.keys.subscribe(),
            live: self.live.subscribe(),
        }
    }
}

/// Optional ability of a store: a change feed that a [`ReplayCache`] can
/// trust. Implemented by the memory, PostgreSQL and Redis stores.
pub trait Invalidations: Send + Sync {
    /// Subscribes to the store's invalidations (starting its change
    /// listener if it has one).
    fn invalidations(&self) -> InvalidationFeed;
}

impl<T: Invalidations + ?Sized> Invalidations for Arc<T> {
    fn invalidations(&self) -> InvalidationFeed {
        (**self).invalidations()
    }
}

/// Settings of a [`ReplayCache`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ReplayCacheConfig {
    max_bytes: u64,
    max_age: Duration,
    expiry_margin: Duration,
}

impl Default for ReplayCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(300),
            expiry_margin: Duration::from_secs(1),
        }
    }
}

impl ReplayCacheConfig {
    /// Upper bound on the cached outcomes' bytes (default 64 MiB); the
    /// oldest entries make room for new ones.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The longest an entry is served after it was read (default 5 min),
    /// whatever its record's retention.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// How long before its record's expiry an entry stops being served
    /// (default 1 s): the tolerated disagreement between the store's clock
    /// and this process's.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }
}

/// A store with an in-process cache of completed outcomes; see the
/// [module docs](self) for what it serves and when it stops.
///
/// Cloning is cheap and shares the cache.
pub struct ReplayCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for ReplayCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for ReplayCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("entries", &self.shared.len())
            .field("live", &self.shared.live.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

struct Shared {
    shards: Box<[Mutex<Shard>]>,
    config: ReplayCacheConfig,
    /// Bumped by every invalidation: a fill that started before a bump is
    /// discarded, so news that overtook a read never leaves a stale entry.
    epoch: AtomicU64,
    /// Whether the feed is flowing; nothing is filled while it is not.
    live: AtomicBool,
    follower: BackgroundTask,
}

#[derive(Default)]
struct Shard {
    map: KeyMap<Entry>,
    /// Attempts this process holds a lease for, by key.
    flights: KeyMap<Flight>,
    /// Claims this process has sent and not yet had answered, by key.
    claiming: KeyMap<Arc<ClaimSlot>>,
    /// Size of `flights` at which attempts past their lease are swept out
    /// (an attempt nobody ended and nobody asked about again).
    sweep_flights_at: usize,
    fifo: VecDeque<(StorageKey, u64)>,
    bytes: u64,
    next_gen: u64,
}

struct Entry {
    fingerprint: Fingerprint,
    completed: Completed,
    fresh_until: Instant,
    bytes: u64,
    generation: u64,
}

/// An attempt this process is executing: while its lease lasts, a
/// duplicate with the same fingerprint is in flight, and is answered here.
struct Flight {
    fingerprint: Fingerprint,
    fence: u64,
    attempt: u32,
    /// This process's view of the lease's end: the lease's length from
    /// just before the claim (or the last renewal) was sent, so no later
    /// than the store's own deadline while the clocks agree.
    until: Instant,
    /// Woken when the attempt ends.
    ended: Arc<Notify>,
}

/// A claim on its way to the store: duplicates (same key and fingerprint)
/// that arrive meanwhile wait for its answer instead of sending their own.
struct ClaimSlot {
    fingerprint: Fingerprint,
    /// The store's answer, when it is one a duplicate shares as it is
    /// (anything but `Acquired`, whose duplicates are in flight instead).
    answer: OnceLock<Claim>,
    done: AtomicBool,
    answered: Notify,
}

impl ClaimSlot {
    async fn answered(&self) {
        let notified = self.answered.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if !self.done.load(Ordering::SeqCst) {
            notified.await;
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.answered.notify_waiters();
    }
}

/// The claim this process sends for a key: answered to its duplicates when
/// it is answered, or given up (they send their own) if it is dropped.
struct Leading<'a> {
    shared: &'a Shared,
    key: StorageKey,
    slot: Arc<ClaimSlot>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut shard = self.shared.shard(&self.key);
        if shard
            .claiming
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            shard.claiming.remove(&self.key);
        }
        drop(shard);
        self.slot.finish();
    }
}

enum Coalesced<'a> {
    /// This claim goes to the store; its duplicates wait for it.
    Lead(Leading<'a>),
    /// A claim of the same request is on its way: wait for it.
    Follow(Arc<ClaimSlot>),
    /// A claim with another fingerprint is on its way: ask the store.
    Alone,
}

impl Shared {
    fn shard(&self, key: &StorageKey) -> MutexGuard<'_, Shard> {
        let i = usize::from(key.as_bytes()[0]) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .map
                    .len()
            })
            .sum()
    }

    fn lookup(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Completed> {
        let mut shard = self.shard(key);
        let entry = shard.map.get(key)?;
        if entry.fresh_until <= Instant::now() {
            let gone = shard.map.remove(key).map_or(0, |e| e.bytes);
            shard.bytes -= gone;
            return None;
        }
        (entry.fingerprint == *fingerprint).then(|| entry.completed.clone())
    }

    fn invalidate(&self, key: &StorageKey) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut shard = self.shard(key);
        if let Some(e) = shard.map.remove(key) {
            shard.bytes -= e.bytes;
            metrics::counter!(INVALIDATIONS_TOTAL).increment(1);
        }
        // The record changed elsewhere (an operator, another process):
        // duplicates go to the store again.
        if let Some(f) = shard.flights.remove(key) {
            f.ended.notify_waiters();
        }
    }

    /// The answer for a duplicate of an attempt this process executes:
    /// in flight, for the time left on the lease.
    fn in_flight(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Option<Claim> {
        let mut shard = self.shard(key);
        let flight = shard.flights.get(key)?;
        let now = Instant::now();
        if flight.until <= now {
            if let Some(f) = shard.flights.remove(key) {
                f.ended.notify_waiters();
            }
            return None;
        }
        (flight.fingerprint == *fingerprint).then(|| Claim::InFlight {
            retry_after: flight.until - now,
            attempt: flight.attempt,
        })
    }

    /// Notes an attempt this process now holds.
    fn take_off(&self, fingerprint: Fingerprint, lease: &Lease, started: Instant) {
        let mut shard = self.shard(&lease.key);
        if shard.flights.len() >= shard.sweep_flights_at.max(FLIGHTS_SWEPT_FROM) {
            let now = Instant::now();
            shard.flights.retain(|_, f| f.until > now);
            shard.sweep_flights_at = (shard.flights.len() * 2).max(FLIGHTS_SWEPT_FROM);
        }
        let old = shard.flights.insert(
            lease.key,
            Flight {
                fingerprint,
                fence: lease.fence,
                attempt: lease.attempt,
                until: started + lease.lease_duration,
                ended: Arc::new(Notify::new()),
            },
        );
        if let Some(old) = old {
            old.ended.notify_waiters();
        }
    }

    /// Moves the end of the attempt holding `lease` (a renewal).
    fn extend(&self, lease: &Lease, started: Instant) {
        let mut shard = self.shard(&lease.key);
        if let Some(f) = shard.flights.get_mut(&lease.key)
            && f.fence == lease.fence
        {
            f.until = started + lease.lease_duration;
        }
    }

    /// Whether the attempt holding `lease` is the one noted for its key.
    fn holds(&self, lease: &Lease) -> bool {
        self.shard(&lease.key)
            .flights
            .get(&lease.key)
            .is_some_and(|f| f.fence == lease.fence)
    }

    /// Ends the attempt holding `lease`, if it is still the one noted;
    /// returns its fingerprint.
    fn land(&self, lease: &Lease) -> Option<Fingerprint> {
        let mut shard = self.shard(&lease.key);
        if shard.flights.get(&lease.key)?.fence != lease.fence {
            return None;
        }
        let f = shard.flights.remove(&lease.key)?;
        f.ended.notify_waiters();
        Some(f.fingerprint)
    }

    /// A wait for the end of this process's attempt on `key`, registered
    /// now (so an end that comes before it is polled is not missed), or
    /// `None` when no attempt of this process holds `key`.
    fn coalesce(&self, key: &StorageKey, fingerprint: &Fingerprint) -> Coalesced<'_> {
        let mut shard = self.shard(key);
        if let Some(slot) = shard.claiming.get(key) {
            return if slot.fingerprint == *fingerprint {
                Coalesced::Follow(Arc::clone(slot))
            } else {
                Coalesced::Alone
            };
        }
        let slot = Arc::new(ClaimSlot {
            fingerprint: *fingerprint,
            answer: OnceLock::new(),
            done: AtomicBool::new(false),
            answered: Notify::new(),
        });
        shard.claiming.insert(*key, Arc::clone(&slot));
        Coalesced::Lead(Leading {
            shared: self,
            key: *key,
            slot,
        })
    }

    fn landing(&self, key: &StorageKey) -> Option<Arc<Notify>> {
        let shard = self.shard(key);
        let flight = shard.flights.get(key)?;
        (flight.until > Instant::now()).then(|| Arc::clone(&flight.ended))
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for s in &*self.shards {
            let mut shard = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = shard.map.len() as u64;
            shard.map.clear();
            shard.fifo.clear();
            shard.bytes = 0;
            if n > 0 {
                metrics::counter!(INVALIDATIONS_TOTAL).increment(n);
            }
        }
    }

    fn insert(
        &self,
        key: StorageKey,
        fingerprint: Fingerprint,
        completed: Completed,
        ttl: Duration,
        epoch: u64,
    ) {
        let bytes = completed.data_bytes() + ENTRY_OVERHEAD;
        let budget = self.config.max_bytes / self.shards.len() as u64;
        if bytes > budget || ttl.is_zero() {
            return;
        }
        let mut shard = self.shard(&key);
        // Checked under the shard lock: an invalidation of this key bumps
        // the epoch before it takes this lock, so it either ran before this
        // check (the fill is discarded) or runs after the insert (and
        // removes it).
        if self.epoch.load(Ordering::SeqCst) != epoch || !self.live.load(Ordering::SeqCst) {
            return;
        }
        if let Some(old) = shard.map.remove(&key) {
            shard.bytes -= old.bytes;
        }
        while shard.bytes + bytes > budget {
            let Some((oldest, generation)) = shard.fifo.pop_front() else {
                break;
            };
            if shard
                .map
                .get(&oldest)
                .is_some_and(|e| e.generation == generation)
                && let Some(e) = shard.map.remove(&oldest)
            {
                shard.bytes -= e.bytes;
            }
        }
        let generation = shard.next_gen;
        shard.next_gen += 1;
        shard.fifo.push_back((key, generation));
        shard.bytes += bytes;
        shard.map.insert(
            key,
            Entry {
                fingerprint,
                completed,
                fresh_until: Instant::now() + ttl,
                bytes,
                generation,
            },
        );
    }
}

/// Stops serving when the follower ends, however it ends (a panic included):
/// a cache nobody keeps coherent must not answer.
struct Stopped(Weak<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(s) = self.0.upgrade() {
            s.live.store(false, Ordering::SeqCst);
            s.clear();
        }
    }
}

/// Follows the store's feed until the cache is dropped or the feed closes.
async fn follow(shared: Weak<Shared>, mut feed: InvalidationFeed) {
    let _stopped = Stopped(shared.clone());
    let live = *feed.live.borrow_and_update();
    match shared.upgrade() {
        Some(s) => {
            s.clear();
            s.live.store(live, Ordering::SeqCst);
        }
        None => return,
    }
    loop {
        tokio::select! {
            key = feed.keys.recv() => {
                let Some(s) = shared.upgrade() else { return };
                match key {
                    Ok(key) => s.invalidate(&key),
                    Err(broadcast::error::RecvError::Lagged(_)) => s.clear(),
                    Err(broadcast::error::RecvError::Closed) => {
                        s.live.store(false, Ordering::SeqCst);
                        s.clear();
                        return;
                    }
                }
            }
            changed = feed.live.changed() => {
                let Some(s) = shared.upgrade() else { return };
                let live = changed.is_ok() && *feed.live.borrow_and_update();
                // Up or down, news may have been missed in between.
                s.live.store(false, Ordering::SeqCst);
                s.clear();
                s.live.store(live, Ordering::SeqCst);
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

impl<S> ReplayCache<S> {
    /// A cache in front of `inner`.
    pub fn new(inner: S, config: ReplayCacheConfig) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                config,
                epoch: AtomicU64::new(0),
                live: AtomicBool::new(false),
                follower: BackgroundTask::new(),
            }),
        }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Cached outcomes (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attempts this process holds a lease for, as far as the cache saw
    /// (their duplicates here are answered here).
    pub fn local_attempts(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .flights
                    .len()
            })
            .sum()
    }

    /// Whether the store's change feed is flowing (nothing is cached while
    /// it is not).
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl<S: IdempotencyStore + Invalidations + Clone + 'static> ReplayCache<S> {
    /// Starts following the store's feed (once; again if the task ended).
    fn follow(&self) {
        // Live means the follower runs (it clears the flag on every way
        // out but an abort, which only dropping the cache does): no lock on
        // the hot path.
        if self.shared.live.load(Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let inner = self.inner.clone();
        self.shared
            .follower
            .ensure_running(move || follow(weak, inner.invalidations()));
    }

    /// Reads the record's expiry and caches the replay the store answered.
    async fn fill(&self, req: &ClaimRequest, completed: &Completed, epoch: u64) {
        if !self.shared.live.load(Ordering::SeqCst) {
            return;
        }
        let Ok(Some(record)) = self.inner.get(&req.key).await else {
            return;
        };
        let same = matches!(&record.state, RecordState::Completed(c) if c.fence == completed.fence);
        if !same || record.fingerprint != req.fingerprint {
            return;
        }
        let ttl = time_left(record.expires_at, self.shared.config.expiry_margin)
            .min(self.shared.config.max_age);
        self.shared
            .insert(req.key, req.fingerprint, completed.clone(), ttl, epoch);
    }
}

/// Wall-clock time until `expires_at`, less `margin`.
fn time_left(expires_at: Timestamp, margin: Duration) -> Duration {
    expires_at
        .saturating_since(Timestamp::now_system())
        .saturating_sub(margin)
}

impl<S: IdempotencyStore + Invalidations + Clone + 'static> IdempotencyStore for ReplayCache<S> {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.follow();
        if let Some(completed) = self.shared.lookup(&req.key, &req.fingerprint) {
            metrics::counter!(LOOKUPS_TOTAL, "result" => "hit").increment(1);
            return Ok(Claim::Completed(completed));
        }
        if let Some(in_flight) = self.shared.in_flight(&req.key, &req.fingerprint) {
            metrics::counter!(LOOKUPS_TOTAL, "result" => "in_flight").increment(1);
            return Ok(in_flight);
        }
        let leading = match self.shared.coalesce(&req.key, &req.fingerprint) {
            Coalesced::Lead(leading) => Some(leading),
            Coalesced::Follow(slot) => {
                // The same request is being claimed: its answer is this one's.
                slot.answered().await;
                if let Some(completed) = self.shared.lookup(&req.key, &req.fingerprint) {
                    metrics::counter!(LOOKUPS_TOTAL, "result" => "hit").increment(1);
                    return Ok(Claim::Completed(completed));
                }
                if let Some(in_flight) = self.shared.in_flight(&req.key, &req.fingerprint) {
                    metrics::counter!(LOOKUPS_TOTAL, "result" => "in_flight").increment(1);
                    return Ok(in_flight);
                }
                if let Some(answer) = slot.answer.get() {
                    metrics::counter!(LOOKUPS_TOTAL, "result" => "shared").increment(1);
                    return Ok(answer.clone());
                }
                // The claim failed or was given up: ask the store.
                None
            }
            Coalesced::Alone => None,
        };
        metrics::counter!(LOOKUPS_TOTAL, "result" => "miss").increment(1);
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let started = Instant::now();
        let claim = self.inner.claim(req).await?;
        match &claim {
            Claim::Acquired { lease, .. } => self.shared.take_off(req.fingerprint, lease, started),
            other => {
                if let Some(leading) = &leading {
                    let _ = leading.slot.answer.set(other.clone());
                }
            }
        }
        // The duplicates that waited find the attempt in flight, or share
        // the answer.
        drop(leading);
        if let Claim::Completed(completed) = &claim {
            self.fill(req, completed, epoch).await;
        }
        Ok(claim)
    }

    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        // The outcome this process writes is the record's from now on: kept
        // for the duplicates to come, unless news of any change arrives
        // while it is written.
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        // Copied only for an attempt this process holds (whose fingerprint
        // is known) while the feed is live: nothing else could be kept.
        let keep =
            (self.shared.live.load(Ordering::SeqCst) && self.shared.holds(lease)).then(|| {
                (
                    completion.outcome.clone(),
                    completion.resource.clone(),
                    Instant::now(),
                )
            });
        self.inner.complete(lease, completion).await?;
        let fingerprint = self.shared.land(lease);
        if let (Some(fingerprint), Some((outcome, resource, started))) = (fingerprint, keep) {
            // Retention counts from the store's write, which came after `started`.
            let ttl = lease
                .retention
                .saturating_sub(started.elapsed())
                .saturating_sub(self.shared.config.expiry_margin)
                .min(self.shared.config.max_age);
            let completed = Completed {
                outcome,
                resource,
                completed_at: Timestamp::now_system(),
                fence: lease.fence,
            };
            self.shared
                .insert(lease.key, fingerprint, completed, ttl, epoch);
        }
        Ok(())
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        let out = self.inner.fail(lease, failure).await;
        self.shared.land(lease);
        out
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let out = self.inner.release(lease).await;
        self.shared.land(lease);
        out
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let started = Instant::now();
        let renewed = self.inner.renew(lease).await;
        match &renewed {
            Ok(renewed) => self.shared.extend(renewed, started),
            Err(_) => {
                self.shared.land(lease);
            }
        }
        renewed
    }

    fn get(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.inner.get(key)
    }

    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.shared.invalidate(key);
        let out = self.inner.mark_corrupted(key, observed, detail).await;
        self.shared.invalidate(key);
        out
    }

    async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        let out = self.inner.resolve(key, resolution).await;
        self.shared.invalidate(key);
        out
    }

    async fn wait_for_change(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        // A duplicate of this process's own attempt waits here for its end.
        let Some(ended) = self.shared.landing(key) else {
            return self.inner.wait_for_change(key, timeout).await;
        };
        let notified = ended.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        // Ended between the lookup and the registration: no wait.
        if self
            .shared
            .landing(key)
            .is_none_or(|now| !Arc::ptr_eq(&now, &ended))
        {
            return Ok(());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }

    fn attempt_ended(&self, lease: &Lease) {
        self.shared.land(lease);
        self.inner.attempt_ended(lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    fn completed(fence: u64) -> Completed {
        Completed {
            outcome: Outcome::Value(bytes::Bytes::from_static(b"v")),
            resource: None,
            completed_at: Timestamp::now_system(),
            fence,
        }
    }

    fn live() -> ReplayCache<()> {
        let cache = ReplayCache::new((), ReplayCacheConfig::default().max_bytes(16 * 1024));
        cache.shared.live.store(true, Ordering::SeqCst);
        cache
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_discarded() {
        let cache = live();
        let key = StorageKey::from_segments(&[b"k".as_slice()]);
        let fp = Fingerprint::of_bytes("t", b"");
        let epoch = cache.shared.epoch.load(Ordering::SeqCst);
        // The store's news about the key arrives while the fill's read is
        // under way: the fill must not resurrect what it read.
        cache.shared.invalidate(&key);
        cache
            .shared
            .insert(key, fp, completed(1), Duration::from_secs(60), epoch);
        assert!(cache.is_empty());
        let epoch = cache.shared.epoch.load(Ordering::SeqCst);
        cache
            .shared
            .insert(key, fp, completed(1), Duration::from_secs(60), epoch);
        assert_eq!(cache.len(), 1);
        assert!(cache.shared.lookup(&key, &fp).is_some());
        assert!(
            cache
                .shared
                .lookup(&key, &Fingerprint::of_bytes("t", b"other"))
                .is_none(),
            "another fingerprint is the store's to answer"
        );
    }

    #[test]
    fn nothing_is_filled_while_the_feed_is_down() {
        let cache = live();
        cache.shared.live.store(false, Ordering::SeqCst);
        let key = StorageKey::from_segments(&[b"k".as_slice()]);
        let epoch = cache.shared.epoch.load(Ordering::SeqCst);
        let fp = Fingerprint::of_bytes("t", b"");
        cache
            .shared
            .insert(key, fp, completed(1), Duration::from_secs(60), epoch);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest() {
        // 16 KiB over 16 shards: 1 KiB a shard, about five entries each.
        let cache = live();
        let fp = Fingerprint::of_bytes("t", b"");
        for i in 0..2000u32 {
            let key = StorageKey::from_segments(&[i.to_be_bytes().as_slice()]);
            let epoch = cache.shared.epoch.load(Ordering::SeqCst);
            cache
                .shared
                .insert(key, fp, completed(1), Duration::from_secs(60), epoch);
        }
        let per_entry = ENTRY_OVERHEAD + 1;
        let most = (16 * 1024 / 16 / per_entry as usize) * 16;
        assert!(cache.len() <= most, "{} entries", cache.len());
        assert!(cache.len() >= most / 2, "{} entries", cache.len());
        let bytes: u64 = cache
            .shared
            .shards
            .iter()
            .map(|s| s.lock().unwrap().bytes)
            .sum();
        assert!(bytes <= 16 * 1024);
        // The newest key is still there.
        let newest = StorageKey::from_segments(&[1999u32.to_be_bytes().as_slice()]);
        assert!(cache.shared.lookup(&newest, &fp).is_some());
    }

    #[test]
    fn an_expired_entry_is_dropped_on_lookup() {
        let cache = live();
        let key = StorageKey::from_segments(&[b"k".as_slice()]);
        let fp = Fingerprint::of_bytes("t", b"");
        let epoch = cache.shared.epoch.load(Ordering::SeqCst);
        cache
            .shared
            .insert(key, fp, completed(1), Duration::from_millis(1), epoch);
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.shared.lookup(&key, &fp).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn attempts_past_their_lease_are_swept_out() {
        let cache = live();
        let fp = Fingerprint::of_bytes("t", b"");
        let lease = |i: u32| Lease {
            // One shard: the first byte of the key picks it.
            key: StorageKey::from_bytes({
                let mut k = [0u8; 32];
                k[1..5].copy_from_slice(&i.to_be_bytes());
                k
            }),
            token: crate::LeaseToken::new(),
            fence: 1,
            attempt: 1,
            deadline: Timestamp::now_system(),
            lease_duration: Duration::from_millis(10),
            retention: Duration::from_secs(60),
        };
        // Claimed long ago, never ended, never asked about again.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        for i in 0..1000 {
            cache.shared.take_off(fp, &lease(i), long_ago);
        }
        assert!(
            cache.local_attempts() <= FLIGHTS_SWEPT_FROM,
            "{} attempts kept",
            cache.local_attempts()
        );
        // A live one stays.
        let live_one = Lease {
            lease_duration: Duration::from_secs(60),
            ..lease(5000)
        };
        cache.shared.take_off(fp, &live_one, Instant::now());
        assert!(cache.shared.in_flight(&live_one.key, &fp).is_some());
    }

    #[test]
    fn time_left_keeps_the_margin() {
        let in_ten = Timestamp::now_system().saturating_add(Duration::from_secs(10));
        let left = time_left(in_ten, Duration::from_secs(1));
        assert!(
            left <= Duration::from_secs(9) && left > Duration::from_secs(8),
            "{left:?}"
        );
        let past = Timestamp::from_millis(1);
        assert_eq!(time_left(past, Duration::ZERO), Duration::ZERO);
    }
}
