//! [`BufferedSink`]: a bounded, non-blocking queue in front of a sink.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{AuditError, BatchError};
use crate::event::AuditEvent;
use crate::sink::AuditSink;

/// Name of the counter of dropped events, labelled `reason`
/// (see [`DropReason::as_str`]).
pub const DROPPED_METRIC: &str = "audit_events_dropped_total";

/// Why a [`BufferedSink`] dropped an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue was full when the event arrived.
    Full,
    /// The queued events' approximate size would have gone over the byte
    /// budget ([`BufferConfig::max_bytes`]).
    FullBytes,
    /// The inner sink failed to write it.
    SinkError,
    /// The inner sink refused this event on its own (an invalid stream
    /// name, a field too long, a duplicate id, ...) while writing the rest
    /// of its batch.
    Refused,
    /// The buffer was shut down (or its worker stopped) before the event arrived.
    Closed,
    /// The event was queued, or being written, when the deadline of
    /// [`BufferedSink::shutdown`] passed.
    Abandoned,
}

impl DropReason {
    const ALL: [Self; 6] = [
        Self::Full,
        Self::FullBytes,
        Self::SinkError,
        Self::Refused,
        Self::Closed,
        Self::Abandoned,
    ];

    /// The metric label value: `full`, `full_bytes`, `sink_error`,
    /// `refused`, `closed` or `abandoned`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::FullBytes => "full_bytes",
            Self::SinkError => "sink_error",
            Self::Refused => "refused",
            Self::Closed => "closed",
            Self::Abandoned => "abandoned",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Sizes of a [`BufferedSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BufferConfig {
    /// How many events the queue holds (at least 1). Default 10,000.
    pub capacity: usize,
    /// How many bytes the queued events may take, by their approximate
    /// encoded size (the length of their JSON form, estimated without
    /// encoding them). Default 16 MiB. An event larger than the whole
    /// budget is always dropped.
    pub max_bytes: usize,
    /// How many queued events the worker hands the inner sink at once, with
    /// [`AuditSink::append_batch`] (at least 1). Default 64.
    pub batch_size: usize,
    /// How long [`BufferedSink::shutdown`] waits for the worker to write
    /// what is queued before abandoning the rest. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_bytes: 16 * 1024 * 1024,
            batch_size: 64,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl BufferConfig {
    /// Sets the capacity.
    #[must_use]
    pub const fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the byte budget.
    #[must_use]
    pub const fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets the batch size.
    #[must_use]
    pub const fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets the deadline of [`BufferedSink::shutdown`].
    #[must_use]
    pub const fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "nearly every message is an event; boxing would allocate once per event"
)]
enum Msg {
    /// An event and its approximate size, counted in the byte budget while queued.
    Event(AuditEvent, usize),
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Event(..) => "Event",
            Self::Flush(_) => "Flush",
        })
    }
}

/// What the handles ask of the worker; each step only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Control {
    /// Write what arrives.
    Run,
    /// Refuse new events, write what is queued, then stop.
    Close,
    /// Stop now; count what is not written as abandoned.
    Abandon,
}

#[derive(Debug)]
struct Stats {
    written: AtomicU64,
    /// Approximate bytes of the events in the queue.
    queued_bytes: AtomicUsize,
    /// Dropped events, indexed by [`DropReason::index`].
    dropped: [AtomicU64; DropReason::ALL.len()],
    started: Instant,
    /// Milliseconds after `started` (plus one) of the last warn line; 0 = never.
    last_warn: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Self {
            written: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            dropped: Default::default(),
            started: Instant::now(),
            last_warn: AtomicU64::new(0),
        }
    }

    fn counter(&self, reason: DropReason) -> &AtomicU64 {
        &self.dropped[reason.index()]
    }

    fn dropped(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Takes `bytes` of the budget `max`, unless that would go over it.
    fn reserve(&self, bytes: usize, max: usize) -> bool {
        self.queued_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                q.checked_add(bytes).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Gives `bytes` of the budget back.
    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Counts `n` dropped events; logs a warn line at most once a second.
    fn drop_events(
        &self,
        reason: DropReason,
        n: u64,
        first: Option<&AuditEvent>,
        error: Option<&AuditError>,
    ) {
        if n == 0 {
            return;
        }
        self.counter(reason).fetch_add(n, Ordering::Relaxed);
        metrics::counter!(DROPPED_METRIC, "reason" => reason.as_str()).increment(n);
        if self.may_warn() {
            tracing::warn!(
                target: "audit",
                reason = reason.as_str(),
                dropped = n,
                dropped_total = self.dropped(),
                event_type = first.map(|e| e.event_type.as_str()),
                event_id = first.map(|e| tracing::field::display(e.id)),
                error = error.map(|e| e as &(dyn std::error::Error + 'static)),
                "audit events dropped"
            );
        }
    }

    fn may_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.may_warn_at(now)
    }

    /// Whether a warn line may be written at `now` (milliseconds after
    /// `started`, plus one), and if so records it.
    fn may_warn_at(&self, now: u64) -> bool {
        let last = self.last_warn.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return false;
        }
        self.last_warn
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// What the handles and the worker share.
#[derive(Debug)]
struct Shared {
    stats: Stats,
    control: watch::Sender<Control>,
    /// Its sender is held by the worker: `changed()` fails once the worker
    /// has finished (or its task was dropped).
    done: watch::Receiver<()>,
    shutdown_timeout: Duration,
    max_bytes: usize,
}

/// What [`BufferedSink::shutdown`] found when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether the worker wrote everything queued before the deadline.
    pub completed: bool,
    /// Events abandoned at the deadline (queued, or handed to the inner
    /// sink whose write was cut), counted as [`DropReason::Abandoned`]. A
    /// write cut mid-way may have stored part of its batch.
    pub abandoned: u64,
    /// Events written by the inner sink over the buffer's life.
    pub written: u64,
    /// Events dropped over the buffer's life, for any reason (abandoned included).
    pub dropped: u64,
}

/// Puts events on a bounded queue that a background task drains into an
/// inner sink, so [`append`](AuditSink::append) never waits for the inner
/// sink and never fails.
///
/// The queue is bounded twice: by its event count
/// ([`capacity`](BufferConfig::capacity)) and by the approximate encoded
/// size of the queued events ([`max_bytes`](BufferConfig::max_bytes),
/// default 16 MiB), so a burst of large events cannot exhaust memory.
///
/// An event that cannot be delivered is dropped and counted, never
/// retried: when the queue is full ([`DropReason::Full`], or
/// [`DropReason::FullBytes`] for the byte budget), when the inner
/// sink fails ([`DropReason::SinkError`], every event of the failed batch
/// that was not written), when the inner sink refuses that one event while
/// writing the rest of its batch ([`DropReason::Refused`], see
/// [`BatchError::refused`]), after [`shutdown`](Self::shutdown)
/// ([`DropReason::Closed`]) or when the shutdown deadline passes before it
/// is written ([`DropReason::Abandoned`]); an inner sink that panics counts
/// as failing.
/// Each drop increments the `metrics` counter
/// `audit_events_dropped_total{reason}` and an atomic counter read by
/// [`dropped`](Self::dropped) / [`dropped_by`](Self::dropped_by); a warn
/// line (target `audit`) reports drops, at most once per second per buffer
/// so an overload does not also flood the log.
///
/// Clones share the queue and the counters. The worker stops once every
/// clone is dropped (after writing what is queued) or at [`shutdown`](Self::shutdown).
///
/// ```
/// use idempotency_audit::{AuditEvent, AuditSink, BufferedSink, MemorySink};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let memory = MemorySink::new();
/// let buffer = BufferedSink::new(memory.clone(), 1_000);
/// buffer.append(&AuditEvent::builder("promotion.attempted", "/promotions").build()).await?;
/// buffer.flush().await?;
/// assert_eq!(memory.len(), 1);
/// let report = buffer.shutdown().await;
/// assert!(report.completed);
/// assert_eq!((report.written, report.dropped), (1, 0));
/// # Ok::<_, idempotency_audit::AuditError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct BufferedSink {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl BufferedSink {
    /// A buffer of `capacity` events in front of `inner`, batches of 64.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the worker is spawned on the current one).
    pub fn new<S: AuditSink + 'static>(inner: S, capacity: usize) -> Self {
        Self::with_config(inner, BufferConfig::default().capacity(capacity))
    }

    /// A buffer configured by `config` in front of `inner`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the worker is spawned on the current one).
    pub fn with_config<S: AuditSink + 'static>(inner: S, config: BufferConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let (control, control_rx) = watch::channel(Control::Run);
        let (done_tx, done) = watch::channel(());
        let shared = Arc::new(Shared {
            stats: Stats::new(),
            control,
            done,
            shutdown_timeout: config.shutdown_timeout,
            max_bytes: config.max_bytes,
        });
        let worker = Worker {
            rx,
            control: control_rx,
            shared: Arc::clone(&shared),
            _done: done_tx,
        };
        tokio::spawn(worker.run(inner, config.batch_size.max(1)));
        Self { tx, shared }
    }

    /// Queues an event without waiting; returns whether it was queued. A
    /// refused event is counted as dropped.
    pub fn enqueue(&self, event: AuditEvent) -> bool {
        let stats = &self.shared.stats;
        let bytes = approx_size(&event);
        if !stats.reserve(bytes, self.shared.max_bytes) {
            stats.drop_events(DropReason::FullBytes, 1, Some(&event), None);
            return false;
        }
        let (reason, msg) = match self.tx.try_send(Msg::Event(event, bytes)) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(msg)) => (DropReason::Full, msg),
            Err(mpsc::error::TrySendError::Closed(msg)) => (DropReason::Closed, msg),
        };
        stats.release(bytes);
        let event = match &msg {
            Msg::Event(e, _) => Some(e),
            Msg::Flush(_) => None,
        };
        stats.drop_events(reason, 1, event, None);
        false
    }

    /// Waits until every event queued before this call was handed to the
    /// inner sink (written or dropped).
    ///
    /// # Errors
    ///
    /// [`AuditError::Closed`] after [`shutdown`](Self::shutdown).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing for the queued events.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)
    }

    /// Stops accepting events, writes what is queued and waits until the
    /// worker has finished its last write, for at most the configured
    /// [`shutdown_timeout`](BufferConfig::shutdown_timeout) (default 10 s);
    /// see [`shutdown_within`](Self::shutdown_within).
    ///
    /// # Panics
    ///
    /// On a Tokio runtime without the time driver.
    ///
    /// # Cancel safety
    ///
    /// As [`shutdown_within`](Self::shutdown_within).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shutdown_within(self.shared.shutdown_timeout).await
    }

    /// Stops accepting events (later ones are dropped with
    /// [`DropReason::Closed`]), writes what is queued, and waits until the
    /// worker has finished its last write, for at most `deadline`. When the
    /// deadline passes first, the worker stops at once: the write in
    /// progress is cut (dropped) and every event not written is counted as
    /// [`DropReason::Abandoned`] and reported in one warn line. Calling it
    /// again, from any clone, waits for the same worker.
    ///
    /// # Panics
    ///
    /// On a Tokio runtime without the time driver.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: once called, the worker writes the queue and stops
    /// whether or not this future is awaited; only the deadline is lost.
    pub async fn shutdown_within(&self, deadline: Duration) -> ShutdownReport {
        let advance = |to: Control| {
            self.shared.control.send_if_modified(|c| {
                let later = *c < to;
                if later {
                    *c = to;
                }
                later
            });
        };
        advance(Control::Close);
        let mut done = self.shared.done.clone();
        // `changed` fails only once the worker has finished.
        let in_time = tokio::time::timeout(deadline, done.changed()).await.is_ok();
        if !in_time {
            advance(Control::Abandon);
            // The worker stops at its next poll, counting what it abandons.
            let _ = done.changed().await;
        }
        let abandoned = self.dropped_by(DropReason::Abandoned);
        ShutdownReport {
            // Also when the worker finished just as the deadline passed.
            completed: in_time || abandoned == 0,
            abandoned,
            written: self.written(),
            dropped: self.dropped(),
        }
    }

    /// Events written by the inner sink so far.
    pub fn written(&self) -> u64 {
        self.shared.stats.written.load(Ordering::Relaxed)
    }

    /// Events dropped so far, for any reason.
    pub fn dropped(&self) -> u64 {
        self.shared.stats.dropped()
    }

    /// Events dropped so far for `reason`.
    pub fn dropped_by(&self, reason: DropReason) -> u64 {
        self.shared.stats.counter(reason).load(Ordering::Relaxed)
    }

    /// Approximate bytes of the events waiting in the queue now (see
    /// [`BufferConfig::max_bytes`]).
    pub fn queued_bytes(&self) -> usize {
        self.shared.stats.queued_bytes.load(Ordering::Relaxed)
    }

    /// Events (and flush markers) waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

impl AuditSink for BufferedSink {
    /// Queues the event; never waits and never fails (a refused event is counted).
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.enqueue(event.clone());
        Ok(())
    }

    async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
        for event in events {
            self.enqueue(event.clone());
        }
        Ok(())
    }
}

/// The background task draining the queue into the inner sink.
struct Worker {
    rx: mpsc::Receiver<Msg>,
    control: watch::Receiver<Control>,
    shared: Arc<Shared>,
    /// Dropped when the worker ends, however it ends: what
    /// [`BufferedSink::shutdown`] waits for.
    _done: watch::Sender<()>,
}

/// Resolves once the control has moved past `seen`, with the new value.
async fn control_past(control: &mut watch::Receiver<Control>, seen: Control) -> Control {
    let next = control.wait_for(|c| *c > seen).await.map(|c| *c);
    match next {
        Ok(c) => c,
        // No handle is left to ask for anything.
        Err(_) => std::future::pending().await,
    }
}

impl Worker {
    async fn run<S: AuditSink>(mut self, inner: S, batch_size: usize) {
        let stats = &self.shared.stats;
        // Messages received and not yet handled, in reverse order (popped
        // from the end), so that a cut write leaves them countable.
        let mut msgs = Vec::with_capacity(batch_size);
        let mut events = Vec::with_capacity(batch_size);
        let mut seen = Control::Run;
        loop {
            let received = tokio::select! {
                biased;
                c = control_past(&mut self.control, seen) => {
                    seen = c;
                    if c == Control::Abandon {
                        break;
                    }
                    // What is already queued is still received and written.
                    self.rx.close();
                    continue;
                }
                n = self.rx.recv_many(&mut msgs, batch_size) => n,
            };
            if received == 0 {
                // Closed and drained: everything was handed over.
                return;
            }
            msgs.reverse();
            let handled = async {
                while let Some(msg) = msgs.pop() {
                    match msg {
                        Msg::Event(e, bytes) => {
                            stats.release(bytes);
                            events.push(e);
                        }
                        Msg::Flush(done) => {
                            write(&inner, &mut events, stats).await;
                            let _ = done.send(());
                        }
                    }
                }
                write(&inner, &mut events, stats).await;
            };
            let abandoned = tokio::select! {
                biased;
                _ = control_past(&mut self.control, Control::Close) => true,
                () = handled => false,
            };
            if abandoned {
                break;
            }
        }
        // The shutdown deadline passed: count what is not written.
        self.rx.close();
        let mut abandoned = events.len();
        let queued = msgs
            .drain(..)
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()));
        for msg in queued {
            if let Msg::Event(_, bytes) = msg {
                stats.release(bytes);
                abandoned += 1;
            }
        }
        let abandoned = abandoned as u64;
        stats
            .counter(DropReason::Abandoned)
            .fetch_add(abandoned, Ordering::Relaxed);
        metrics::counter!(DROPPED_METRIC, "reason" => DropReason::Abandoned.as_str())
            .increment(abandoned);
        tracing::warn!(
            target: "audit",
            abandoned,
            written = stats.written.load(Ordering::Relaxed),
            "audit buffer shutdown deadline passed: events not yet written were abandoned"
        );
    }
}

/// The approximate length of the event's JSON form, computed without
/// encoding it: its strings and JSON values plus a fixed allowance for the
/// id, the time, the field names and the punctuation.
fn approx_size(e: &AuditEvent) -> usize {
    /// `id`, `time`, `schema_version` and the names of the fields.
    const FIXED: usize = 160;
    let text = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 20);
    let actor = e
        .actor
        .as_ref()
        .map_or(0, |a| 40 + a.id.len() + text(&a.role) + text(&a.tenant));
    let json = |v: &Option<Value>| v.as_ref().map_or(0, json_size);
    FIXED
        + e.event_type.len()
        + e.source.len()
        + text(&e.subject)
        + actor
        + e.outcome.as_ref().map_or(0, |o| o.as_str().len() + 12)
        + text(&e.reason)
        + text(&e.correlation_id)
        + text(&e.trace_id)
        + text(&e.span_id)
        + text(&e.key_hash)
        + e.attributes
            .iter()
            .map(|(k, v)| k.len() + 4 + json_size(v))
            .sum::<usize>()
        + json(&e.before)
        + json(&e.after)
}

/// The approximate length of a JSON value's text (walked with a stack, not
/// recursion, whatever the depth).
fn json_size(v: &Value) -> usize {
    let mut size = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        size += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 20,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a);
                2 + a.len()
            }
            Value::Object(m) => {
                stack.extend(m.values());
                2 + m.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
    }
    size
}

async fn write<S: AuditSink>(inner: &S, events: &mut Vec<AuditEvent>, stats: &Stats) {
    if events.is_empty() {
        return;
    }
    let total = events.len();
    // A panicking sink loses its batch, not the worker.
    let result = AssertUnwindSafe(inner.append_batch(events))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(BatchError::new(
                0,
                AuditError::backend("the inner audit sink panicked"),
            ))
        });
    match result {
        Ok(()) => {
            stats.written.fetch_add(total as u64, Ordering::Relaxed);
        }
        Err(e) => {
            let written = e.written.min(total);
            stats.written.fetch_add(written as u64, Ordering::Relaxed);
            if let Some(first) = e.refused.first() {
                stats.drop_events(
                    DropReason::Refused,
                    e.refused.len() as u64,
                    events.get(first.index),
                    Some(&first.source),
                );
            }
            // Without refusals the written events are the first `written`.
            let unwritten = e.unwritten(total);
            let first_unwritten = if e.refused.is_empty() {
                events.get(written)
            } else {
                None
            };
            stats.drop_events(
                DropReason::SinkError,
                unwritten as u64,
                first_unwritten,
                Some(&e.source),
            );
        }
    }
    events.clear();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::MemorySink;
    use crate::sink::test_sinks::{Failing, Gated};

    fn event(n: usize) -> AuditEvent {
        AuditEvent::builder("t", "/s").attribute("n", n).build()
    }

    #[tokio::test]
    async fn delivers_in_order_and_flushes() {
        let mem = MemorySink::new();
        let buffer = BufferedSink::with_config(mem.clone(), BufferConfig::default().batch_size(3));
        let events: Vec<_> = (0..10).map(event).collect();
        for e in &events {
            buffer.append(e).await.unwrap();
        }
        buffer.append_batch(&events[..2]).await.unwrap();
        buffer.flush().await.unwrap();
        let mut expected = events.clone();
        expected.extend_from_slice(&events[..2]);
        assert_eq!(mem.events(), expected);
        assert_eq!(buffer.written(), 12);
        assert_eq!(buffer.dropped(), 0);
        assert_eq!(buffer.queued(), 0);
        assert_eq!(buffer.capacity(), 10_000);
    }

    #[test]
    fn overflow_is_counted_in_metrics_and_atomics() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let gated = Gated::closed();
                let buffer = BufferedSink::with_config(
                    gated.clone(),
                    BufferConfig::default().capacity(4).batch_size(1),
                );
                // The worker has not run yet (current-thread runtime, no await):
                // the queue takes 4, the other 6 are refused.
                let accepted = (0..10).filter(|&n| buffer.enqueue(event(n))).count();
                assert_eq!(accepted, 4);
                assert_eq!(buffer.dropped(), 6);
                assert_eq!(buffer.dropped_by(DropReason::Full), 6);
                assert_eq!(buffer.queued(), 4);

                gated.gate.add_permits(4);
                buffer.flush().await.unwrap();
                assert_eq!(gated.inner.len(), 4);
                assert_eq!(buffer.written(), 4);
                let kept: Vec<_> = gated
                    .inner
                    .events()
                    .iter()
                    .map(|e| e.attributes["n"].clone())
                    .collect();
                assert_eq!(kept, [0, 1, 2, 3]);
            });
        });
        let text = handle.render();
        assert!(
            text.contains(r#"audit_events_dropped_total{reason="full"} 6"#),
            "{text}"
        );
    }

    #[test]
    fn the_byte_budget_bounds_the_queue_and_counts_what_it_drops() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let big = |n: usize| {
                    AuditEvent::builder("t", "/s")
                        .attribute("n", n)
                        .attribute("blob", "x".repeat(10_000))
                        .build()
                };
                let one = approx_size(&big(0));
                let json = big(0).canonical_json().len();
                assert!(
                    (json..json + 200).contains(&one),
                    "approximates the JSON: {one} for {json}"
                );
                let gated = Gated::closed();
                let buffer = BufferedSink::with_config(
                    gated.clone(),
                    BufferConfig::default()
                        .capacity(1_000)
                        .max_bytes(50_000)
                        .batch_size(1),
                );
                // The worker has not run yet (current-thread runtime, no
                // await): the budget takes four 10 kB events, not six.
                let accepted = (0..6).filter(|&n| buffer.enqueue(big(n))).count();
                assert_eq!(accepted, 4);
                assert_eq!(buffer.dropped_by(DropReason::FullBytes), 2);
                assert_eq!(buffer.dropped_by(DropReason::Full), 0);
                assert_eq!(buffer.queued(), 4);
                assert_eq!(buffer.queued_bytes(), 4 * one);
                // A small event still fits the rest of the budget.
                assert!(buffer.enqueue(event(6)));
                // An event larger than the whole budget never does.
                let huge = AuditEvent::builder("t", "/s")
                    .after(serde_json::json!({"blob": "x".repeat(60_000)}))
                    .build();
                assert!(!buffer.enqueue(huge));
                assert_eq!(buffer.dropped_by(DropReason::FullBytes), 3);

                gated.gate.add_permits(100);
                buffer.flush().await.unwrap();
                assert_eq!(buffer.written(), 5);
                assert_eq!(buffer.queued_bytes(), 0, "written events free the budget");
                assert_eq!((0..4).filter(|&n| buffer.enqueue(big(n))).count(), 4);
                buffer.flush().await.unwrap();
                assert_eq!(gated.inner.len(), 9);
            });
        });
        let text = handle.render();
        assert!(
            text.contains(r#"audit_events_dropped_total{reason="full_bytes"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn inner_failures_are_counted_and_never_reach_the_caller() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let failing = Arc::new(Failing::default());
                let buffer = BufferedSink::with_config(
                    Arc::clone(&failing),
                    BufferConfig::default().batch_size(4),
                );
                for n in 0..10 {
                    buffer.append(&event(n)).await.unwrap();
                }
                buffer.flush().await.unwrap();
                assert_eq!(buffer.dropped_by(DropReason::SinkError), 10);
                assert_eq!(buffer.dropped(), 10);
                assert_eq!(buffer.written(), 0);
                // The default batch stops at the first failure: one call per batch of 4, 4, 2.
                assert_eq!(failing.calls.load(Ordering::SeqCst), 3);
            });
        });
        assert!(
            handle
                .render()
                .contains(r#"audit_events_dropped_total{reason="sink_error"} 10"#)
        );
    }

    #[tokio::test]
    async fn partial_batches_count_only_the_unwritten_rest() {
        /// Writes the first `ok` events it ever sees, then fails.
        struct FailAfter {
            ok: std::sync::atomic::AtomicUsize,
            mem: MemorySink,
        }
        impl AuditSink for FailAfter {
            async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
                if self
                    .ok
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    self.mem.append(event).await
                } else {
                    Err(AuditError::backend("full disk"))
                }
            }
        }
        let mem = MemorySink::new();
        let sink = FailAfter {
            ok: 3.into(),
            mem: mem.clone(),
        };
        let buffer = BufferedSink::with_config(sink, BufferConfig::default().batch_size(5));
        // Hand the worker all five at once.
        let events: Vec<_> = (0..5).map(event).collect();
        buffer.append_batch(&events).await.unwrap();
        buffer.flush().await.unwrap();
        assert_eq!(buffer.written(), 3);
        assert_eq!(buffer.dropped_by(DropReason::SinkError), 2);
        assert_eq!(mem.len(), 3);
    }

    #[tokio::test]
    async fn a_panicking_inner_sink_loses_its_batch_not_the_worker() {
        /// Panics on events whose attribute `n` is odd.
        struct PanicsOnOdd(MemorySink);
        impl AuditSink for PanicsOnOdd {
            async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
                assert!(
                    event.attributes["n"].as_u64().unwrap().is_multiple_of(2),
                    "odd event"
                );
                self.0.append(event).await
            }
        }
        let mem = MemorySink::new();
        let buffer = BufferedSink::with_config(
            PanicsOnOdd(mem.clone()),
            BufferConfig::default().batch_size(1),
        );
        for n in 0..6 {
            buffer.append(&event(n)).await.unwrap();
        }
        buffer.flush().await.unwrap();
        assert_eq!(mem.len(), 3);
        assert_eq!(buffer.written(), 3);
        assert_eq!(buffer.dropped_by(DropReason::SinkError), 3);
    }

    #[tokio::test]
    async fn shutdown_writes_the_queue_then_refuses() {
        let mem = MemorySink::new();
        let buffer = BufferedSink::new(mem.clone(), 100);
        for n in 0..5 {
            assert!(buffer.enqueue(event(n)));
        }
        let other = buffer.clone();
        buffer.shutdown().await;
        assert_eq!(mem.len(), 5);
        assert!(!other.enqueue(event(5)));
        assert_eq!(other.dropped_by(DropReason::Closed), 1);
        assert!(matches!(other.flush().await, Err(AuditError::Closed)));
        other.shutdown().await;
    }

    /// Writes each batch after a delay: a write that really awaits.
    struct Slow {
        mem: MemorySink,
        delay: Duration,
    }

    impl AuditSink for Slow {
        async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
            self.append_batch(std::slice::from_ref(event))
                .await
                .map_err(|e| e.source)
        }

        async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
            tokio::time::sleep(self.delay).await;
            self.mem.append_batch(events).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_returns_only_after_the_last_write() {
        let mem = MemorySink::new();
        let slow = Slow {
            mem: mem.clone(),
            delay: Duration::from_millis(100),
        };
        let buffer = BufferedSink::with_config(slow, BufferConfig::default().batch_size(4));
        for n in 0..10 {
            assert!(buffer.enqueue(event(n)));
        }
        let started = tokio::time::Instant::now();
        let report = buffer.shutdown().await;
        assert_eq!(
            mem.len(),
            10,
            "every event is written when shutdown returns"
        );
        assert_eq!(
            report,
            ShutdownReport {
                completed: true,
                abandoned: 0,
                written: 10,
                dropped: 0
            }
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "three batches"
        );
        // Again, from a clone: the worker is gone, nothing changes.
        assert_eq!(buffer.clone().shutdown().await, report);
        assert!(!buffer.enqueue(event(10)));
        assert_eq!(buffer.dropped_by(DropReason::Closed), 1);
    }

    #[test]
    fn a_passed_shutdown_deadline_abandons_and_counts_what_is_not_written() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                // A sink that never finishes a write.
                let gated = Gated::closed();
                let buffer = BufferedSink::with_config(
                    gated.clone(),
                    BufferConfig::default()
                        .batch_size(4)
                        .shutdown_timeout(Duration::from_secs(2)),
                );
                for n in 0..10 {
                    assert!(buffer.enqueue(event(n)));
                }
                let started = tokio::time::Instant::now();
                let report = buffer.shutdown().await;
                assert_eq!(started.elapsed(), Duration::from_secs(2), "the deadline");
                assert_eq!(
                    report,
                    ShutdownReport {
                        completed: false,
                        abandoned: 10,
                        written: 0,
                        dropped: 10
                    }
                );
                assert_eq!(buffer.dropped_by(DropReason::Abandoned), 10);
                assert!(gated.inner.is_empty());
                // The worker has stopped: nothing more is accepted.
                assert!(!buffer.enqueue(event(10)));
                assert_eq!(buffer.dropped_by(DropReason::Closed), 1);
                assert!(matches!(buffer.flush().await, Err(AuditError::Closed)));
            });
        });
        assert!(
            handle
                .render()
                .contains(r#"audit_events_dropped_total{reason="abandoned"} 10"#)
        );
    }

    #[tokio::test]
    async fn dropping_every_handle_still_writes_the_queue() {
        let gated = Gated::closed();
        let buffer = BufferedSink::new(gated.clone(), 100);
        for n in 0..3 {
            buffer.enqueue(event(n));
        }
        drop(buffer);
        gated.gate.add_permits(3);
        for _ in 0..100 {
            if gated.inner.len() == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(gated.inner.len(), 3);
    }

    #[test]
    fn warn_lines_are_rate_limited() {
        let stats = Stats::new();
        assert!(stats.may_warn_at(5));
        assert!(!stats.may_warn_at(5));
        assert!(!stats.may_warn_at(1_004));
        assert!(stats.may_warn_at(1_005));
        assert!(!stats.may_warn_at(1_500));
        assert!(stats.may_warn_at(60_000));
    }
}
