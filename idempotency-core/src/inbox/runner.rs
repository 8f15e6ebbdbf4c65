//! Process one delivery once: [`Inbox::process`] runs the handler in the
//! inbox's transaction and says what happened as a [`Delivery`].

use std::future::Future;
use std::pin::Pin;

use tracing::Instrument;

use super::message::InboxMessage;
use super::store::{Admission, InboxStore};
use crate::store::StoreError;

/// Counter of processed deliveries, by `consumer` and `outcome`
/// ([`Delivery::outcome`], or `failed` when the handler failed and `error`
/// when the store did).
pub const INBOX_MESSAGES_TOTAL: &str = "idempotency_inbox_messages_total";

/// The future a handler returns: it borrows the transaction it runs in.
pub type HandlerFuture<'t, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>;

/// What became of a delivery. Every variant but
/// [`OutOfOrder`](Delivery::OutOfOrder) is final: acknowledge the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery<T> {
    /// The handler ran, and its effects and the entry committed together.
    Applied(T),
    /// Processed before (applied or skipped as stale); the handler did not run.
    Duplicate,
    /// Its version was at or below the aggregate's last applied one; the
    /// handler did not run, the message is recorded as stale.
    Stale {
        /// The aggregate's last applied version.
        last_applied: u64,
    },
    /// Its version is beyond the next expected one; the handler did not run
    /// and nothing was recorded. Leave it unacknowledged (or ask for a
    /// delayed redelivery): it applies once the versions before it have.
    OutOfOrder {
        /// The version the aggregate waits for.
        expected: u64,
    },
}

impl<T> Delivery<T> {
    /// Whether the broker may forget the message: true for everything but
    /// [`Delivery::OutOfOrder`].
    pub fn should_ack(&self) -> bool {
        !matches!(self, Self::OutOfOrder { .. })
    }

    /// `applied`, `duplicate`, `stale` or `out_of_order`: the `outcome`
    /// label of [`INBOX_MESSAGES_TOTAL`].
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Applied(_) => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale { .. } => "stale",
            Self::OutOfOrder { .. } => "out_of_order",
        }
    }
}

/// Why a delivery was not processed. Either way nothing was committed (or,
/// for a failed commit, it is unknown whether it was): do not acknowledge;
/// the redelivery is decided on what the store holds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError<E> {
    /// The handler failed; its transaction was rolled back.
    #[error("message handler failed")]
    Handler(#[source] E),
    /// The store failed (or the commit's result is unknown).
    #[error(transparent)]
    Store(StoreError),
}

/// Runs message handlers once per `(consumer, message id)` over an
/// [`InboxStore`], in version order per aggregate for ordered messages.
///
/// ```
/// use idempotency_core::{Delivery, Inbox, InboxMessage, MemoryInbox};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inbox = Inbox::new(MemoryInbox::new());
/// let msg = InboxMessage::new("billing", "evt-1").unwrap().ordered("order-7", 1).unwrap();
///
/// let first = inbox
///     .process(&msg, |_tx| Box::pin(async { Ok::<_, std::io::Error>("charged") }))
///     .await
///     .unwrap();
/// assert_eq!(first, Delivery::Applied("charged"));
///
/// // The broker delivers it again: the handler does not run.
/// let again = inbox
///     .process(&msg, |_tx| Box::pin(async { Ok::<_, std::io::Error>(unreachable!()) }))
///     .await
///     .unwrap();
/// assert_eq!(again, Delivery::Duplicate);
/// assert!(again.should_ack());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox<S> {
    store: S,
}

impl<S: InboxStore> Inbox<S> {
    /// An inbox over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Processes one delivery of `msg`.
    ///
    /// Begins a transaction, asks the store to [admit](InboxStore::admit) the
    /// message, and on [`Admission::Apply`] runs `handler` with the
    /// transaction, so that its effects commit together with the inbox
    /// entry. A stale message's entry is committed without running the
    /// handler; a duplicate or out-of-order one changes nothing.
    ///
    /// Counts the result in [`INBOX_MESSAGES_TOTAL`] and records it on the
    /// `inbox.process` span.
    ///
    /// # Errors
    ///
    /// [`InboxError::Handler`] when the handler fails (rolled back),
    /// [`InboxError::Store`] when the store does. Leave the message
    /// unacknowledged in both cases.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the commit drops the transaction, which
    /// rolls back: the message is processed by a later delivery. Dropped
    /// during the commit, the commit may or may not have happened; the next
    /// delivery finds out (it is a duplicate if it did).
    pub async fn process<T, E, F>(
        &self,
        msg: &InboxMessage,
        handler: F,
    ) -> Result<Delivery<T>, InboxError<E>>
    where
        F: for<'t> FnOnce(&'t mut S::Tx) -> HandlerFuture<'t, T, E>,
    {
        let span = tracing::debug_span!(
            "inbox.process",
            inbox.consumer = msg.consumer(),
            inbox.message_id = msg.message_id(),
            inbox.aggregate = msg.aggregate(),
            inbox.version = msg.version(),
            inbox.outcome = tracing::field::Empty,
        );
        let result = self
            .process_inner(msg, handler)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(delivery) => delivery.outcome(),
            Err(InboxError::Handler(_)) => "failed",
            Err(InboxError::Store(_)) => "error",
        };
        span.record("inbox.outcome", outcome);
        metrics::counter!(
            INBOX_MESSAGES_TOTAL,
            "consumer" => msg.consumer().to_owned(),
            "outcome" => outcome,
        )
        .increment(1);
        result
    }

    async fn process_inner<T, E, F>(
        &self,
        msg: &InboxMessage,
        handler: F,
    ) -> Result<Delivery<T>, InboxError<E>>
    where
        F: for<'t> FnOnce(&'t mut S::Tx) -> HandlerFuture<'t, T, E>,
    {
        let mut tx = self.store.begin().await.map_err(InboxError::Store)?;
        let admission = self
            .store
            .admit(&mut tx, msg)
            .await
            .map_err(InboxError::Store)?;
        match admission {
            Admission::Apply => {
                let value = handler(&mut tx).await.map_err(InboxError::Handler)?;
                self.store.commit(tx).await.map_err(InboxError::Store)?;
                Ok(Delivery::Applied(value))
            }
            Admission::Stale { last_applied } => {
                self.store.commit(tx).await.map_err(InboxError::Store)?;
                Ok(Delivery::Stale { last_applied })
            }
            Admission::Duplicate => Ok(Delivery::Duplicate),
            Admission::OutOfOrder { expected } => Ok(Delivery::OutOfOrder { expected }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_acks() {
        let cases: [(Delivery<()>, &str, bool); 4] = [
            (Delivery::Applied(()), "applied", true),
            (Delivery::Duplicate, "duplicate", true),
            (Delivery::Stale { last_applied: 2 }, "stale", true),
            (Delivery::OutOfOrder { expected: 3 }, "out_of_order", false),
        ];
        for (d, label, ack) in cases {
            assert_eq!(d.outcome(), label);
            assert_eq!(d.should_ack(), ack, "{label}");
        }
    }
}
