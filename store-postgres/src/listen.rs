//! Cross-process wake-ups: one `LISTEN` connection per store, fanning
//! notifications out to the waiters of each key.
//!
//! The table's triggers `NOTIFY` the store's channel with the record's key
//! (hex) whenever a record leaves `PENDING`. The listener task is started by
//! the first waiter, runs on its own one-connection pool (built from the
//! store pool's connect options, so it never holds one of the application's
//! connections) and reconnects by itself. While it is not listening, waiters
//! fall back to bounded polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use idempotency_core::StorageKey;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How long a waiter gives a starting listener before polling instead.
const READY_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Notifier {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    waiters: Mutex<HashMap<StorageKey, Arc<Notify>>>,
    listening: watch::Sender<bool>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, HashMap<StorageKey, Arc<Notify>>> {
        // Every critical section is a single map operation: a poisoned lock
        // cannot hold a half-made change.
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self, key: &StorageKey) {
        if let Some(n) = self.waiters().get(key) {
            n.notify_waiters();
        }
    }

    /// Notifications may have been missed: everyone re-checks.
    fn wake_all(&self) {
        for n in self.waiters().values() {
            n.notify_waiters();
        }
    }
}

/// A waiter's registration; unregisters on drop (also when the waiting
/// future is cancelled).
pub(crate) struct Registration<'a> {
    shared: &'a Shared,
    key: StorageKey,
    notify: Arc<Notify>,
}

impl Registration<'_> {
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.shared.waiters();
        if let Some(n) = map.get(&self.key) {
            // The map's reference and ours: we are the last waiter.
            if Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2 {
                map.remove(&self.key);
            }
        }
    }
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                waiters: Mutex::new(HashMap::new()),
                listening: watch::Sender::new(false),
            }),
            task: Mutex::new(None),
        }
    }

    /// Registers interest in `key`.
    pub(crate) fn register(&self, key: StorageKey) -> Registration<'_> {
        let notify = self.shared.waiters().entry(key).or_default().clone();
        Registration {
            shared: &self.shared,
            key,
            notify,
        }
    }

    /// Starts the listener if needed and waits (bounded) until it listens.
    /// Returns whether notifications are being received.
    pub(crate) async fn ensure_listening(
        &self,
        pool: &PgPool,
        channel: &str,
        max_wait: Duration,
    ) -> bool {
        {
            let mut task = self
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if task.as_ref().is_none_or(JoinHandle::is_finished) {
                let _ = self.shared.listening.send(false);
                *task = Some(tokio::spawn(listen(
                    Arc::clone(&self.shared),
                    pool.clone(),
                    channel.to_owned(),
                )));
            }
        }
        let mut rx = self.shared.listening.subscribe();
        let wait = max_wait.min(READY_WAIT);
        matches!(
            tokio::time::timeout(wait, rx.wait_for(|listening| *listening)).await,
            Ok(Ok(_))
        )
    }

    /// Number of keys with waiters (for tests and debugging).
    pub(crate) fn waiting_keys(&self) -> usize {
        self.shared.waiters().len()
    }
}

impl Drop for Notifier {
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

async fn listen(shared: Arc<Shared>, store_pool: PgPool, channel: String) {
    let options = (*store_pool.connect_options()).clone();
    drop(store_pool);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match connect(&pool, &channel).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, channel, "cannot listen for record changes; waiters poll meanwhile");
                let _ = shared.listening.send(false);
                shared.wake_all();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Waiters registered so far may have missed notifications while the
        // listener was down: they re-check. Waiters registering from now on
        // re-check after LISTEN took effect, so they miss nothing.
        shared.wake_all();
        let _ = shared.listening.send(true);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(key) = StorageKey::from_hex(n.payload()) {
                        shared.wake(&key);
                    }
                }
                Ok(None) => {
                    // The connection was lost and re-established: whatever was
                    // notified in between is gone.
                    tracing::debug!(channel, "listener reconnected");
                    shared.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, channel, "listener failed; reconnecting");
                    let _ = shared.listening.send(false);
                    shared.wake_all();
                    break;
                }
            }
        }
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}
