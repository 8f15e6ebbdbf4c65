//! The background reaper.

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::PurgeExpired;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::PostgresStore;

/// Most batches deleted in one round before the task yields to the next tick.
const MAX_BATCHES_PER_ROUND: usize = 1_000;

/// Handle on a background reaper started by [`PostgresStore::spawn_reaper`].
///
/// Dropping it stops the task (a batch in progress is rolled back or
/// committed as a whole); [`Reaper::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct Reaper {
    stop: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Reaper {
    pub(crate) fn spawn(store: PostgresStore, period: Duration, batch: usize) -> Self {
        let stop = Arc::new(Notify::new());
        let stopped = Arc::clone(&stop);
        let period = period.max(Duration::from_millis(1));
        let batch = batch.max(1);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.notified() => return,
                    _ = ticker.tick() => {}
                }
                let mut total = 0;
                for _ in 0..MAX_BATCHES_PER_ROUND {
                    match store.purge_expired(batch).await {
                        Ok(n) => {
                            total += n;
                            if n < batch as u64 {
                                break;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, schema = store.schema(), "reaper batch failed");
                            break;
                        }
                    }
                }
                if total > 0 {
                    tracing::debug!(
                        reaped = total,
                        schema = store.schema(),
                        "reaped expired records"
                    );
                }
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the reaper and waits for it to finish its current batch.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future still stops the reaper.
    pub async fn shutdown(mut self) {
        // A stored permit: the task stops at its next turn even if it is
        // in the middle of a batch now.
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Lets the reaper run for as long as the runtime does, without a handle
    /// (for services that reap until they exit).
    pub fn detach(mut self) {
        // Dropping a join handle detaches its task; nobody can signal a stop.
        drop(self.task.take());
    }

    /// Whether the task has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
