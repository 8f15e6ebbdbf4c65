//! Cross-process wake-ups: one `LISTEN` connection per store, fanning
//! notifications out to the waiters of each key.
//!
//! The table's triggers `NOTIFY` the store's channel with the record's key
//! (hex) whenever a watched record leaves `PENDING` (migration 3) and
//! whenever a completed record stops counting before its expiry (migration
//! 5); every key heard wakes its waiters and invalidates it in the replay
//! caches following this store. The listener task is started by
//! the first waiter, runs on its own one-connection pool (built from the
//! store pool's connect options, so it never holds one of the application's
//! connections) and reconnects by itself. While it is not listening, waiters
//! fall back to bounded polling.

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::StorageKey;
use idempotency_core::cache::InvalidationHub;
use idempotency_core::wait::{BackgroundTask, Waiters};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;

/// How long a waiter gives a starting listener before polling instead.
const READY_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Notifier {
    shared: Arc<Shared>,
    task: BackgroundTask,
}

struct Shared {
    waiters: Waiters,
    listening: watch::Sender<bool>,
    /// Replay caches: every notified key is invalidated, and they are live
    /// exactly while the listener listens.
    hub: InvalidationHub,
}

impl Shared {
    fn set_listening(&self, listening: bool) {
        self.listening.send_replace(listening);
        self.hub.set_live(listening);
    }
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                waiters: Waiters::new(),
                listening: watch::Sender::new(false),
                hub: InvalidationHub::new(4096),
            }),
            task: BackgroundTask::new(),
        }
    }

    /// The waiters this listener wakes.
    pub(crate) fn waiters(&self) -> &Waiters {
        &self.shared.waiters
    }

    /// The replay caches' feed (see `idempotency_core::cache`); starts the
    /// listener if needed.
    pub(crate) fn invalidations(
        &self,
        pool: &PgPool,
        channel: &str,
    ) -> idempotency_core::cache::InvalidationFeed {
        let feed = self.shared.hub.subscribe();
        self.task.ensure_running(|| {
            self.shared.set_listening(false);
            listen(Arc::clone(&self.shared), pool.clone(), channel.to_owned())
        });
        feed
    }

    /// Starts the listener if needed and waits (bounded) until it listens.
    /// Returns whether notifications are being received.
    pub(crate) async fn ensure_listening(
        &self,
        pool: &PgPool,
        channel: &str,
        max_wait: Duration,
    ) -> bool {
        let started = self.task.ensure_running(|| {
            self.shared.set_listening(false);
            listen(Arc::clone(&self.shared), pool.clone(), channel.to_owned())
        });
        if !started {
            return false;
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
        self.shared.waiters.len()
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
                shared.set_listening(false);
                shared.waiters.wake_all();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Waiters registered so far may have missed notifications while the
        // listener was down: they re-check. Waiters registering from now on
        // re-check after LISTEN took effect, so they miss nothing.
        shared.waiters.wake_all();
        shared.set_listening(true);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(key) = StorageKey::from_hex(n.payload()) {
                        shared.waiters.wake(&key);
                        shared.hub.invalidate(&key);
                    }
                }
                Ok(None) => {
                    // The connection was lost and re-established: whatever was
                    // notified in between is gone.
                    tracing::debug!(channel, "listener reconnected");
                    shared.waiters.wake_all();
                    shared.set_listening(false);
                    shared.set_listening(true);
                }
                Err(error) => {
                    tracing::warn!(%error, channel, "listener failed; reconnecting");
                    shared.set_listening(false);
                    shared.waiters.wake_all();
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
