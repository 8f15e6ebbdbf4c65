//! Cross-process wake-ups for `wait_for_change`.
//!
//! Every script that moves a record out of `Pending` (complete, fail,
//! release, resolve, mark corrupted, the expiry of a lease without attempts
//! left) publishes the record's 32-byte storage key on `<prefix>:changes`.
//! Each store runs one subscriber task (started lazily by the first waiter,
//! on a dedicated connection) that wakes the local waiters of that key.
//!
//! Pub/sub delivers at most once, so waiting is bounded all the same: a
//! waiter re-checks the record at least every `wait_poll_interval`, never
//! sleeps past the lease deadline, polls every 25 ms while the subscriber is
//! not connected, and every waiter is woken when the subscriber
//! (re)subscribes, since notifications may have been lost meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use idempotency_core::StorageKey;
use idempotency_core::cache::InvalidationHub;
use idempotency_core::wait::{BackgroundTask, Waiters};
use redis::Client;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(5);

/// The waiters of one store and the state of its subscription.
pub(crate) struct Hub {
    pub(crate) waiters: Waiters,
    subscribed: AtomicBool,
    /// How many times the subscription was established.
    established: AtomicU64,
    /// Replay caches: every published key is invalidated (a superset of
    /// the completed records that changed), live while subscribed.
    pub(crate) invalidations: InvalidationHub,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            waiters: Waiters::default(),
            subscribed: AtomicBool::new(false),
            established: AtomicU64::new(0),
            invalidations: InvalidationHub::new(4096),
        }
    }
}

impl Hub {
    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(crate) fn established(&self) -> u64 {
        self.established.load(Ordering::Acquire)
    }
}

/// The subscriber task of one store (aborted when the store is dropped).
pub(crate) struct Subscriber {
    pub(crate) hub: Arc<Hub>,
    client: Option<Client>,
    channel: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    task: BackgroundTask,
}

impl Subscriber {
    pub(crate) fn new(
        client: Option<Client>,
        channel: String,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            hub: Arc::default(),
            client,
            channel,
            connect_timeout,
            response_timeout,
            task: BackgroundTask::new(),
        }
    }

    /// Starts (or restarts, e.g. after its runtime went away) the subscriber
    /// task; returns whether it is subscribed right now.
    pub(crate) fn ensure_running(&self) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let started = self.task.ensure_running(|| {
            run(
                client.clone(),
                self.channel.clone(),
                self.hub.clone(),
                self.connect_timeout,
                self.response_timeout,
            )
        });
        if !started {
            return false;
        }
        self.hub.is_subscribed()
    }
}

/// Marks the subscription live while it exists.
struct Live(Arc<Hub>);

impl Live {
    fn new(hub: Arc<Hub>) -> Self {
        hub.established.fetch_add(1, Ordering::AcqRel);
        hub.subscribed.store(true, Ordering::Release);
        // Notifications published while we were not listening are lost:
        // everyone re-checks, and caches start over.
        hub.waiters.wake_all();
        hub.invalidations.set_live(true);
        Self(hub)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.subscribed.store(false, Ordering::Release);
        self.0.invalidations.set_live(false);
        self.0.waiters.wake_all();
    }
}

async fn run(
    client: Client,
    channel: String,
    hub: Arc<Hub>,
    connect_timeout: Duration,
    response_timeout: Duration,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match subscribe(&client, &channel, connect_timeout, response_timeout).await {
            Ok((sink, stream)) => {
                backoff = MIN_BACKOFF;
                let live = Live::new(hub.clone());
                listen(sink, stream, &live.0, response_timeout).await;
                drop(live);
                tracing::debug!(%channel, "redis change subscription lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "redis change subscription failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    client: &Client,
    channel: &str,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
    let pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sink, stream) = pubsub.split();
    tokio::time::timeout(response_timeout, sink.subscribe(channel))
        .await
        .map_err(|_| "subscribe timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((sink, stream))
}

/// Dispatches messages until the connection ends or stops answering pings.
async fn listen(
    mut sink: redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    hub: &Hub,
    response_timeout: Duration,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                if let Ok(bytes) = <[u8; 32]>::try_from(msg.get_payload_bytes()) {
                    let key = StorageKey::from_bytes(bytes);
                    hub.waiters.wake(&key);
                    hub.invalidations.invalidate(&key);
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(response_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
