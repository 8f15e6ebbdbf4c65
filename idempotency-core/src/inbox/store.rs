//! The inbox's store contract: [`InboxStore`], and the decision it makes
//! for a delivery, [`Admission`].

use std::future::Future;

use super::message::InboxMessage;
use crate::store::StoreError;

/// What the store decided about a delivery, inside the delivery's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// First delivery (and, for an ordered message, the next version of its
    /// aggregate): run the handler in this transaction, then commit. The
    /// entry and the aggregate's new version are already written in it.
    Apply,
    /// This consumer already processed the message (applied it, or skipped
    /// it as stale), in a committed transaction. Nothing was written.
    Duplicate,
    /// An ordered message whose version is at or below the aggregate's last
    /// applied one: a newer state is already in. The entry is written as
    /// stale in this transaction; commit it and acknowledge.
    Stale {
        /// The aggregate's last applied version.
        last_applied: u64,
    },
    /// An ordered message whose version is beyond the next expected one: an
    /// earlier version has not been applied yet. Nothing was written; do not
    /// acknowledge, so the broker delivers it again later.
    OutOfOrder {
        /// The version the aggregate waits for (last applied + 1).
        expected: u64,
    },
}

impl Admission {
    /// The decision for a message given what is committed (and staged in the
    /// same transaction): the rules every store follows, for stores that
    /// decide in application code rather than in the database.
    ///
    /// `seen` is whether the consumer already has an entry for the message,
    /// `version` the message's version (`None` when it is not ordered),
    /// `last_applied` the aggregate's last applied version (0 for none).
    pub fn decide(seen: bool, version: Option<u64>, last_applied: u64) -> Self {
        if seen {
            return Self::Duplicate;
        }
        match version {
            None => Self::Apply,
            Some(v) if v <= last_applied => Self::Stale { last_applied },
            Some(v) if v == last_applied.saturating_add(1) => Self::Apply,
            Some(_) => Self::OutOfOrder {
                expected: last_applied.saturating_add(1),
            },
        }
    }
}

/// How a processed message was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// The handler ran and its transaction committed.
    Applied,
    /// Skipped as stale: its version was at or below the last applied one.
    Stale,
}

impl Disposition {
    /// `"APPLIED"` or `"STALE"`: how stores spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "APPLIED",
            Self::Stale => "STALE",
        }
    }

    /// The inverse of [`Disposition::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "APPLIED" => Some(Self::Applied),
            "STALE" => Some(Self::Stale),
            _ => None,
        }
    }
}

/// A store for inbox entries and per-aggregate versions, with transactions
/// that the handler's own effects can share.
///
/// The contract (the suite in `conformance::inbox` checks it):
///
/// - [`admit`](InboxStore::admit) decides, for one `(consumer, message id)`,
///   under locks that last until the transaction ends: a concurrent `admit`
///   of the same message, or of any message of the same ordered aggregate
///   and consumer, waits until this transaction commits or rolls back, and
///   then decides on what was committed. So at most one delivery of a
///   message is ever [`Admission::Apply`]'d in a committed transaction, and
///   the versions of one aggregate are applied one after the other.
/// - Whatever `admit` writes becomes visible only with
///   [`commit`](InboxStore::commit). Dropping the transaction rolls it back,
///   as if the delivery never happened (also when the process dies).
/// - The handler's effects belong in the same transaction, so they and the
///   inbox entry commit together or not at all.
/// - A duplicate is decided before the version: a redelivery of an applied
///   message is [`Admission::Duplicate`], never [`Admission::Stale`].
pub trait InboxStore: Send + Sync {
    /// A transaction: the store's, and the handler's. Dropped uncommitted, it
    /// rolls back.
    type Tx: Send;

    /// Begins a transaction.
    ///
    /// # Errors
    ///
    /// When the store fails or cannot be reached.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Decides what to do with `msg`, writing the entry (and the aggregate's
    /// version) in `tx` when it is applied or stale.
    ///
    /// # Errors
    ///
    /// When the store fails; roll the transaction back and let the message
    /// be delivered again.
    fn admit(
        &self,
        tx: &mut Self::Tx,
        msg: &InboxMessage,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;

    /// Commits `tx`.
    ///
    /// # Errors
    ///
    /// When the commit fails or its result is unknown (the connection broke):
    /// do not acknowledge; a redelivery finds the entry if it was committed
    /// after all.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How `consumer` recorded `message_id`, if it processed it (committed).
    ///
    /// # Errors
    ///
    /// When the store fails or cannot be reached.
    fn entry(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<Disposition>, StoreError>> + Send;

    /// The last version of `aggregate` that `consumer` applied (committed),
    /// if any.
    ///
    /// # Errors
    ///
    /// When the store fails or cannot be reached.
    fn last_version(
        &self,
        consumer: &str,
        aggregate: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

impl<T: InboxStore> InboxStore for std::sync::Arc<T> {
    type Tx = T::Tx;

    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send {
        (**self).begin()
    }

    fn admit(
        &self,
        tx: &mut Self::Tx,
        msg: &InboxMessage,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send {
        (**self).admit(tx, msg)
    }

    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).commit(tx)
    }

    fn entry(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<Disposition>, StoreError>> + Send {
        (**self).entry(consumer, message_id)
    }

    fn last_version(
        &self,
        consumer: &str,
        aggregate: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        (**self).last_version(consumer, aggregate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(Admission::decide(true, Some(1), 0), Admission::Duplicate);
        assert_eq!(Admission::decide(true, None, 0), Admission::Duplicate);
        assert_eq!(Admission::decide(false, None, 7), Admission::Apply);
        assert_eq!(Admission::decide(false, Some(1), 0), Admission::Apply);
        assert_eq!(Admission::decide(false, Some(4), 3), Admission::Apply);
        assert_eq!(
            Admission::decide(false, Some(3), 3),
            Admission::Stale { last_applied: 3 }
        );
        assert_eq!(
            Admission::decide(false, Some(1), 3),
            Admission::Stale { last_applied: 3 }
        );
        assert_eq!(
            Admission::decide(false, Some(5), 3),
            Admission::OutOfOrder { expected: 4 }
        );
    }

    #[test]
    fn dispositions_round_trip() {
        for d in [Disposition::Applied, Disposition::Stale] {
            assert_eq!(Disposition::parse(d.as_str()), Some(d));
        }
        assert_eq!(Disposition::parse("applied"), None);
    }
}
