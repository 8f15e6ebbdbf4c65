//! Waiting for a record to leave `Pending`: the per-key waiter registry and
//! the bounded wait every store's
//! [`wait_for_change`](crate::IdempotencyStore::wait_for_change) is made of.
//!
//! A store keeps one [`Waiters`] and calls [`Waiters::wake`] whenever it
//! learns that a record may have left `Pending` (its own write, a
//! `NOTIFY`, a pub/sub message), and [`Waiters::wake_all`] when it may have
//! missed such news (a notification connection was lost or re-established).
//! Its `wait_for_change` is [`wait_for_change`] with a re-check of the
//! record, and its notification task lives in a [`BackgroundTask`].
//!
//! # Behaviour
//!
//! - A key's entry lives exactly as long as a [`Waiter`] for it: it is made
//!   by the first [`Waiters::register`] and removed when the last waiter of
//!   the key is dropped (also when the waiting future is cancelled). Nothing
//!   else removes it, so [`Waiters::len`] is the number of keys somebody waits
//!   on, and no entry outlives its waiters.
//! - A wake keeps the entry: a [`Waiter`] stays registered across wakes, so
//!   a second [`Waiter::notified`] on it is woken by the next wake as well.
//! - A wake reaches the [`Notified`] futures created before it (polled or
//!   not), not later ones: register, create the future, *then* re-check the
//!   record, and a change made after the re-check is never missed.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::task::JoinHandle;

use crate::key::{KeyMap, StorageKey};
use crate::store::StoreError;

/// One key's entry: the notification its waiters share and how many they are.
struct Entry {
    notify: Arc<Notify>,
    waiters: usize,
}

/// The waiters of one store, by storage key. See the [module docs](self).
#[derive(Default)]
pub struct Waiters {
    map: Mutex<KeyMap<Entry>>,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("keys", &self.len())
            .finish()
    }
}

impl Waiters {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, KeyMap<Entry>> {
        // Every critical section is one map operation: a poisoned lock
        // cannot hold a half-made change.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers interest in `key`; the waiter unregisters when dropped.
    pub fn register(&self, key: StorageKey) -> Waiter<'_> {
        let mut map = self.map();
        let entry = map.entry(key).or_insert_with(|| Entry {
            notify: Arc::default(),
            waiters: 0,
        });
        entry.waiters += 1;
        let first = entry.waiters == 1;
        let notify = Arc::clone(&entry.notify);
        drop(map);
        Waiter {
            waiters: self,
            key,
            notify,
            first,
        }
    }

    /// Wakes the waiters of `key` (their entry stays while they do).
    pub fn wake(&self, key: &StorageKey) {
        if let Some(e) = self.map().get(key) {
            e.notify.notify_waiters();
        }
    }

    /// Wakes every waiter: news may have been missed, everyone re-checks.
    pub fn wake_all(&self) {
        for e in self.map().values() {
            e.notify.notify_waiters();
        }
    }

    /// The number of keys with at least one waiter.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// A registered interest in one key (see [`Waiters::register`]).
#[must_use = "a waiter unregisters when dropped"]
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    key: StorageKey,
    notify: Arc<Notify>,
    first: bool,
}

impl std::fmt::Debug for Waiter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("key", &self.key).finish()
    }
}

impl Waiter<'_> {
    /// A future that completes at the next wake of this key (or of all keys)
    /// made after this call, whether or not it has been polled by then.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Whether this waiter made its key's entry: nobody else in this
    /// registry waited on the key when it registered.
    pub fn is_first(&self) -> bool {
        self.first
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        if let Some(e) = map.get_mut(&self.key) {
            e.waiters -= 1;
            if e.waiters == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The bounded wait of a store's `wait_for_change`: registers in `waiters`,
/// then re-checks with `lease_left` (`None`: the record is no longer a live
/// `Pending`, return at once; `Some(left)`: the lease runs `left` longer),
/// then waits for a wake of `key`, at most `timeout` and never more than
/// 1 ms past the lease deadline.
///
/// `lease_left` is told whether this is the key's first waiter in
/// `waiters`: a store that must tell its server somebody waits (the
/// PostgreSQL store marks the record, so that only watched records are
/// notified) does so for the first waiter only, and the others of the same
/// process read. When the re-check finds the record no longer live, the
/// key's other waiters are woken to re-check too, so a waiter that relied
/// on the first one's mark is never left waiting for news the mark came too
/// late to produce.
///
/// A store whose notifications may be lost or not yet flowing caps `timeout`
/// itself with its polling interval.
///
/// # Errors
///
/// Whatever `lease_left` returns.
///
/// # Cancel safety
///
/// Cancel safe: a dropped wait only unregisters its waiter.
pub async fn wait_for_change<F, Fut>(
    waiters: &Waiters,
    key: &StorageKey,
    timeout: Duration,
    lease_left: F,
) -> Result<(), StoreError>
where
    F: FnOnce(bool) -> Fut,
    Fut: Future<Output = Result<Option<Duration>, StoreError>>,
{
    let waiter = waiters.register(*key);
    let notified = waiter.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    // Registered before re-checking, so a change racing with this call is
    // never missed.
    let Some(left) = lease_left(waiter.is_first()).await? else {
        waiters.wake(key);
        return Ok(());
    };
    let bound = timeout.min(left.saturating_add(Duration::from_millis(1)));
    let _ = tokio::time::timeout(bound, notified).await;
    Ok(())
}

/// The task that feeds a store's [`Waiters`] (a `LISTEN` connection, a
/// pub/sub subscription): started by the first waiter, started again if it
/// ended (its runtime went away, it panicked), aborted when dropped with the
/// store.
#[derive(Debug, Default)]
pub struct BackgroundTask {
    task: Mutex<Option<JoinHandle<()>>>,
}

impl BackgroundTask {
    /// No task yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns the future `start` makes on the current runtime unless the
    /// task is running. `start` is called with the slot locked, so two
    /// callers never start two tasks. Returns `false` when there is no
    /// runtime to spawn on (and nothing runs).
    pub fn ensure_running<F, Fut>(&self, start: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return false;
            };
            *task = Some(runtime.spawn(start()));
        }
        true
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> StorageKey {
        StorageKey::from_segments(&[i.to_be_bytes()])
    }

    #[tokio::test]
    async fn waking_a_key_wakes_only_its_waiters() {
        let waiters = Waiters::new();
        let a = waiters.register(key(1));
        let a2 = waiters.register(key(1));
        let b = waiters.register(key(2));
        let na = a.notified();
        let na2 = a2.notified();
        let nb = b.notified();
        tokio::pin!(na, na2, nb);
        waiters.wake(&key(1));
        let short = Duration::from_millis(20);
        assert!(tokio::time::timeout(short, na).await.is_ok());
        assert!(tokio::time::timeout(short, na2).await.is_ok());
        assert!(tokio::time::timeout(short, nb).await.is_err(), "other key");
    }

    #[tokio::test]
    async fn a_waiter_stays_registered_across_wakes() {
        let waiters = Waiters::new();
        let a = waiters.register(key(1));
        for _ in 0..3 {
            let n = a.notified();
            waiters.wake(&key(1));
            assert!(
                tokio::time::timeout(Duration::from_millis(20), n)
                    .await
                    .is_ok()
            );
        }
        assert_eq!(waiters.len(), 1);
    }

    #[tokio::test]
    async fn wake_all_wakes_every_key() {
        let waiters = Waiters::new();
        let a = waiters.register(key(1));
        let b = waiters.register(key(2));
        let (na, nb) = (a.notified(), b.notified());
        waiters.wake_all();
        let short = Duration::from_millis(20);
        assert!(tokio::time::timeout(short, na).await.is_ok());
        assert!(tokio::time::timeout(short, nb).await.is_ok());
    }

    #[test]
    fn entries_are_removed_with_their_last_waiter() {
        let waiters = Waiters::new();
        let a = waiters.register(key(1));
        let a2 = waiters.register(key(1));
        let b = waiters.register(key(2));
        assert_eq!(waiters.len(), 2);
        waiters.wake(&key(1));
        assert_eq!(waiters.len(), 2, "a wake keeps the entry");
        drop(a);
        assert_eq!(waiters.len(), 2);
        drop(a2);
        assert_eq!(waiters.len(), 1);
        drop(b);
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_wait_unregisters() {
        let waiters = Waiters::new();
        let k = key(1);
        let wait = wait_for_change(&waiters, &k, Duration::from_secs(60), |_| async {
            Ok(Some(Duration::from_secs(60)))
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), wait)
                .await
                .is_err()
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn the_wait_returns_at_once_when_the_record_left_pending() {
        let waiters = Waiters::new();
        let k = key(1);
        let wait = wait_for_change(&waiters, &k, Duration::from_secs(60), |_| async {
            Ok(None)
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .is_ok()
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_wake_after_the_recheck_ends_the_wait() {
        let waiters = Arc::new(Waiters::new());
        let (checked_tx, checked_rx) = tokio::sync::oneshot::channel();
        let w = Arc::clone(&waiters);
        let wait = tokio::spawn(async move {
            wait_for_change(&w, &key(1), Duration::from_secs(60), |_| async move {
                let _ = checked_tx.send(());
                Ok(Some(Duration::from_secs(60)))
            })
            .await
        });
        checked_rx.await.unwrap();
        waiters.wake(&key(1));
        let done = tokio::time::timeout(Duration::from_secs(5), wait).await;
        assert!(matches!(done, Ok(Ok(Ok(())))));
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn the_wait_is_bounded_by_the_lease() {
        let waiters = Waiters::new();
        let k = key(1);
        let wait = wait_for_change(&waiters, &k, Duration::from_secs(60), |_| async {
            Ok(Some(Duration::from_millis(5)))
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_background_task_runs_once_and_is_aborted_with_its_slot() {
        let slot = BackgroundTask::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..3 {
            let tx = tx.clone();
            assert!(slot.ensure_running(move || async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            }));
        }
        drop(tx);
        drop(slot);
        // Every sender is gone once the one running task was aborted.
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(closed, Ok(None)));
    }

    #[test]
    fn a_background_task_needs_a_runtime() {
        assert!(!BackgroundTask::new().ensure_running(|| async {}));
    }

    #[test]
    fn concurrent_register_and_wake_leave_no_entry_behind() {
        let waiters = Arc::new(Waiters::new());
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let waiters = Arc::clone(&waiters);
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        let k = key(i % 4);
                        if (i + t) % 3 == 0 {
                            waiters.wake(&k);
                        } else if (i + t) % 7 == 0 {
                            waiters.wake_all();
                        } else {
                            let w = waiters.register(k);
                            let n = w.notified();
                            drop(n);
                            drop(w);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(waiters.is_empty());
    }
}
