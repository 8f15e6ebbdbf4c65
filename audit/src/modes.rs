//! Delivery modes per event type and the [`Auditor`] facade that routes by them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::BufferedSink;
use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::redact::Redactor;
use crate::sink::AuditSink;

/// How events of a type are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Written before the operation completes, in its transaction when there
    /// is one; if the event cannot be written, the operation fails.
    Atomic,
    /// Queued on a [`BufferedSink`]; the operation never waits for the write
    /// and never fails because of it. An event that cannot be written is
    /// dropped and counted.
    #[default]
    FireAndForget,
}

/// Which [`Mode`] each event type uses.
///
/// A rule is an exact type (`promotion.completed`) or a prefix ending in `*`
/// (`promotion.*`). The exact rule wins, then the longest matching prefix,
/// then the default.
///
/// ```
/// use idempotency_audit::{AuditModes, Mode};
/// let modes = AuditModes::new(Mode::FireAndForget)
///     .with("promotion.*", Mode::Atomic)
///     .with("promotion.viewed", Mode::FireAndForget);
/// assert_eq!(modes.mode_for("promotion.completed"), Mode::Atomic);
/// assert_eq!(modes.mode_for("promotion.viewed"), Mode::FireAndForget);
/// assert_eq!(modes.mode_for("idempotency.replayed"), Mode::FireAndForget);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct AuditModes {
    default: Mode,
    exact: HashMap<String, Mode>,
    /// Sorted longest first.
    prefixes: Vec<(String, Mode)>,
}

impl AuditModes {
    /// Every type uses `default` until a rule says otherwise.
    pub fn new(default: Mode) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// Adds a rule for an exact type or a `prefix*` pattern, replacing an
    /// earlier rule for the same pattern.
    pub fn with(mut self, pattern: impl Into<String>, mode: Mode) -> Self {
        let pattern = pattern.into();
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                self.prefixes.retain(|(p, _)| p != prefix);
                self.prefixes.push((prefix.to_owned(), mode));
                self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            }
            None => {
                self.exact.insert(pattern, mode);
            }
        }
        self
    }

    /// The mode for `event_type`.
    pub fn mode_for(&self, event_type: &str) -> Mode {
        if let Some(mode) = self.exact.get(event_type) {
            return *mode;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| event_type.starts_with(p.as_str()))
            .map_or(self.default, |(_, m)| *m)
    }
}

/// A sink that can write an event inside a caller's transaction or
/// connection `C`, so the event commits or rolls back with the business change.
///
/// Implemented by the PostgreSQL sink for `sqlx::PgConnection` and
/// `sqlx::Transaction<'_, Postgres>` (feature `postgres`).
pub trait TransactionalSink<C: ?Sized>: Send + Sync {
    /// What a successful append reports (the PostgreSQL sink: stream, sequence, hash).
    type Receipt: Send;

    /// Appends `event` using `conn`. When `conn` is in a transaction the
    /// event is part of it.
    ///
    /// # Errors
    ///
    /// [`AuditError`] when the event could not be written; in a PostgreSQL
    /// transaction the transaction is then aborted and must be rolled back.
    ///
    /// # Cancel safety
    ///
    /// In a transaction, dropping the future leaves the transaction in an
    /// unknown state: roll it back.
    fn append_in(
        &self,
        conn: &mut C,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<Self::Receipt, AuditError>> + Send;
}

/// What [`Auditor`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded<R = ()> {
    /// Atomic: written, with the sink's receipt.
    Written(R),
    /// Fire-and-forget: queued on the buffer.
    Queued,
    /// Fire-and-forget: the buffer refused it (full or shut down); it was counted.
    Dropped,
}

struct Inner<A> {
    modes: AuditModes,
    atomic: A,
    buffer: BufferedSink,
    redactor: Option<Arc<dyn Redactor>>,
}

/// Routes events by [`Mode`]: atomic ones to a durable sink (in the caller's
/// transaction with [`record_in`](Self::record_in)), fire-and-forget ones
/// through a [`BufferedSink`]. Applies a [`Redactor`] first, if one is set.
///
/// Cheap to clone.
///
/// ```
/// use idempotency_audit::{
///     Actor, AuditEvent, AuditModes, Auditor, BufferedSink, MemorySink, Mode, Outcome, Recorded,
/// };
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let durable = MemorySink::new();
/// let logged = MemorySink::new();
/// let auditor = Auditor::new(
///     AuditModes::new(Mode::FireAndForget).with("promotion.completed", Mode::Atomic),
///     durable.clone(),
///     BufferedSink::new(logged.clone(), 1_000),
/// );
/// let done = AuditEvent::builder("promotion.completed", "/promotions")
///     .actor(Actor::user("u1"))
///     .outcome(Outcome::Created)
///     .build();
/// assert_eq!(auditor.record(done).await?, Recorded::Written(()));
/// let seen = AuditEvent::builder("promotion.viewed", "/promotions").build();
/// assert_eq!(auditor.record(seen).await?, Recorded::Queued);
/// auditor.buffer().flush().await?;
/// assert_eq!((durable.len(), logged.len()), (1, 1));
/// # Ok::<_, idempotency_audit::AuditError>(())
/// # }).unwrap();
/// ```
pub struct Auditor<A> {
    inner: Arc<Inner<A>>,
}

impl<A> Clone for Auditor<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A> std::fmt::Debug for Auditor<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("modes", &self.inner.modes)
            .field("buffer", &self.inner.buffer)
            .field("redactor", &self.inner.redactor.is_some())
            .finish_non_exhaustive()
    }
}

impl<A> Auditor<A> {
    /// An auditor writing atomic events to `atomic` and queueing the others on `buffer`.
    pub fn new(modes: AuditModes, atomic: A, buffer: BufferedSink) -> Self {
        Self {
            inner: Arc::new(Inner {
                modes,
                atomic,
                buffer,
                redactor: None,
            }),
        }
    }

    /// Redacts every event with `redactor` before routing it.
    ///
    /// # Panics
    ///
    /// If this auditor was already cloned (set the redactor while building it).
    #[must_use]
    pub fn with_redactor(mut self, redactor: impl Redactor + 'static) -> Self {
        let inner = Arc::get_mut(&mut self.inner)
            .expect("with_redactor must be called before the auditor is cloned");
        inner.redactor = Some(Arc::new(redactor));
        self
    }

    /// The mode an event type uses.
    pub fn mode_for(&self, event_type: &str) -> Mode {
        self.inner.modes.mode_for(event_type)
    }

    /// The sink for atomic events.
    pub fn atomic_sink(&self) -> &A {
        &self.inner.atomic
    }

    /// The buffer for fire-and-forget events (to flush it, shut it down or read its counters).
    pub fn buffer(&self) -> &BufferedSink {
        &self.inner.buffer
    }

    fn prepare(&self, mut event: AuditEvent) -> (Mode, AuditEvent) {
        if let Some(r) = &self.inner.redactor {
            r.redact(&mut event);
        }
        (self.mode_for(&event.event_type), event)
    }

    /// Redacts and queues on the buffer, whatever the mode.
    #[cfg(feature = "tower")]
    pub(crate) fn queue_redacted(&self, mut event: AuditEvent) -> Recorded<()> {
        if let Some(r) = &self.inner.redactor {
            r.redact(&mut event);
        }
        self.queue(event)
    }

    fn queue(&self, event: AuditEvent) -> Recorded<()> {
        if self.inner.buffer.enqueue(event) {
            Recorded::Queued
        } else {
            Recorded::Dropped
        }
    }

    /// Records an event outside any transaction: an atomic event is written
    /// to the atomic sink before this returns; a fire-and-forget one is queued.
    ///
    /// # Errors
    ///
    /// Only for atomic events: the atomic sink's [`AuditError`]. The caller
    /// should fail its operation.
    ///
    /// # Cancel safety
    ///
    /// As the atomic sink's [`append`](AuditSink::append); queueing is immediate.
    pub async fn record(&self, event: AuditEvent) -> Result<Recorded<()>, AuditError>
    where
        A: AuditSink,
    {
        let (mode, event) = self.prepare(event);
        match mode {
            Mode::Atomic => self
                .inner
                .atomic
                .append(&event)
                .await
                .map(Recorded::Written),
            Mode::FireAndForget => Ok(self.queue(event)),
        }
    }

    /// Records an event as part of the caller's transaction `conn`: an
    /// atomic event is written through `conn` (it commits or rolls back with
    /// the business change); a fire-and-forget one is queued at once,
    /// whatever becomes of the transaction.
    ///
    /// # Errors
    ///
    /// Only for atomic events: the sink's [`AuditError`]. Propagate it so the
    /// transaction rolls back.
    ///
    /// # Cancel safety
    ///
    /// As [`TransactionalSink::append_in`]: roll the transaction back.
    pub async fn record_in<C>(
        &self,
        conn: &mut C,
        event: AuditEvent,
    ) -> Result<Recorded<A::Receipt>, AuditError>
    where
        C: ?Sized + Send,
        A: TransactionalSink<C>,
    {
        let (mode, event) = self.prepare(event);
        match mode {
            Mode::Atomic => self
                .inner
                .atomic
                .append_in(conn, &event)
                .await
                .map(Recorded::Written),
            Mode::FireAndForget => Ok(match self.queue(event) {
                Recorded::Queued => Recorded::Queued,
                _ => Recorded::Dropped,
            }),
        }
    }
}

/// An auditor is itself a sink: each event is routed by its mode.
impl<A: AuditSink> AuditSink for Auditor<A> {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.record(event.clone()).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::test_sinks::Failing;
    use crate::{MemorySink, PointerRedactor};

    /// A "transaction" that keeps written events until it is committed.
    #[derive(Default)]
    struct Tx {
        pending: Vec<AuditEvent>,
    }

    /// Writes into a [`Tx`], or fails when told to.
    struct TxSink {
        fail: bool,
    }

    impl TransactionalSink<Tx> for TxSink {
        type Receipt = usize;
        async fn append_in(&self, tx: &mut Tx, event: &AuditEvent) -> Result<usize, AuditError> {
            if self.fail {
                return Err(AuditError::backend("insert refused"));
            }
            tx.pending.push(event.clone());
            Ok(tx.pending.len())
        }
    }

    #[test]
    fn exact_beats_longest_prefix_beats_default() {
        let modes = AuditModes::default()
            .with("a.*", Mode::Atomic)
            .with("a.b.*", Mode::FireAndForget)
            .with("a.b.c", Mode::Atomic)
            .with("*", Mode::FireAndForget);
        assert_eq!(modes.mode_for("a.x"), Mode::Atomic);
        assert_eq!(modes.mode_for("a.b.x"), Mode::FireAndForget);
        assert_eq!(modes.mode_for("a.b.c"), Mode::Atomic);
        assert_eq!(modes.mode_for("z"), Mode::FireAndForget);
        let replaced = modes.with("a.*", Mode::FireAndForget);
        assert_eq!(replaced.mode_for("a.x"), Mode::FireAndForget);
        assert_eq!(
            AuditModes::new(Mode::Atomic).mode_for("anything"),
            Mode::Atomic
        );
    }

    #[tokio::test]
    async fn atomic_failures_fail_the_operation_and_fire_and_forget_ones_do_not() {
        let buffer = BufferedSink::new(Failing::default(), 16);
        let auditor = Auditor::new(
            AuditModes::new(Mode::FireAndForget).with("money.*", Mode::Atomic),
            Failing::default(),
            buffer.clone(),
        );
        let err = auditor
            .record(AuditEvent::builder("money.moved", "/m").build())
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }));
        for _ in 0..5 {
            let r = auditor
                .record(AuditEvent::builder("page.viewed", "/m").build())
                .await
                .unwrap();
            assert_eq!(r, Recorded::Queued);
        }
        buffer.flush().await.unwrap();
        assert_eq!(buffer.dropped(), 5);
        // As a sink, the auditor routes the same way.
        assert!(
            auditor
                .append(&AuditEvent::builder("money.moved", "/m").build())
                .await
                .is_err()
        );
        auditor
            .append(&AuditEvent::builder("page.viewed", "/m").build())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn record_in_writes_atomic_events_through_the_transaction() {
        let logged = MemorySink::new();
        let auditor = Auditor::new(
            AuditModes::new(Mode::Atomic).with("page.viewed", Mode::FireAndForget),
            TxSink { fail: false },
            BufferedSink::new(logged.clone(), 16),
        );
        let mut tx = Tx::default();
        let r = auditor
            .record_in(&mut tx, AuditEvent::builder("money.moved", "/m").build())
            .await
            .unwrap();
        assert_eq!(r, Recorded::Written(1));
        let r = auditor
            .record_in(&mut tx, AuditEvent::builder("page.viewed", "/m").build())
            .await
            .unwrap();
        assert_eq!(r, Recorded::Queued);
        auditor.buffer().flush().await.unwrap();
        assert_eq!(tx.pending.len(), 1);
        assert_eq!(logged.len(), 1);

        let failing = Auditor::new(
            AuditModes::new(Mode::Atomic),
            TxSink { fail: true },
            auditor.buffer().clone(),
        );
        let mut tx = Tx::default();
        assert!(
            failing
                .record_in(&mut tx, AuditEvent::builder("money.moved", "/m").build())
                .await
                .is_err()
        );
        assert!(tx.pending.is_empty());
    }

    #[tokio::test]
    async fn full_buffer_reports_dropped_without_failing() {
        let gated = crate::sink::test_sinks::Gated::closed();
        let buffer = BufferedSink::with_config(
            gated,
            crate::BufferConfig::default().capacity(1).batch_size(1),
        );
        let auditor = Auditor::new(AuditModes::default(), MemorySink::new(), buffer.clone());
        let mut results = Vec::new();
        for _ in 0..3 {
            results.push(
                auditor
                    .record(AuditEvent::builder("x", "/m").build())
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(results[0], Recorded::Queued);
        assert!(results[1..].iter().all(|r| *r == Recorded::Dropped));
        let mut tx = Tx::default();
        let auditor = Auditor::new(
            AuditModes::default(),
            TxSink { fail: false },
            buffer.clone(),
        );
        assert_eq!(
            auditor
                .record_in(&mut tx, AuditEvent::builder("x", "/m").build())
                .await
                .unwrap(),
            Recorded::Dropped
        );
        assert_eq!(buffer.dropped(), 3);
    }

    #[tokio::test]
    async fn redactor_runs_before_either_route() {
        let durable = MemorySink::new();
        let logged = MemorySink::new();
        let auditor = Auditor::new(
            AuditModes::new(Mode::FireAndForget).with("secret.changed", Mode::Atomic),
            durable.clone(),
            BufferedSink::new(logged.clone(), 16),
        )
        .with_redactor(PointerRedactor::new(["/*/pin"]).unwrap());
        let snapshot = serde_json::json!({"pin": 1234});
        auditor
            .record(
                AuditEvent::builder("secret.changed", "/s")
                    .after(snapshot.clone())
                    .build(),
            )
            .await
            .unwrap();
        auditor
            .record(
                AuditEvent::builder("secret.viewed", "/s")
                    .before(snapshot)
                    .build(),
            )
            .await
            .unwrap();
        auditor.buffer().flush().await.unwrap();
        assert_eq!(
            durable.events()[0].after.as_ref().unwrap()["pin"],
            crate::REDACTED
        );
        assert_eq!(
            logged.events()[0].before.as_ref().unwrap()["pin"],
            crate::REDACTED
        );
        assert_eq!(auditor.atomic_sink().len(), 1);
        assert!(format!("{auditor:?}").contains("redactor: true"));
    }
}
