//! [`AuditError`].

use std::error::Error as StdError;

/// A boxed error source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why an audit event could not be written, or an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink could not be reached (connection refused, pool timed out, ...).
    #[error("audit sink unavailable")]
    Unavailable {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The sink's backend refused or failed the write.
    #[error("audit sink backend error")]
    Backend {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// An event with this id is already stored.
    #[error("audit event {id} is already stored")]
    Duplicate {
        /// The event id.
        id: uuid::Uuid,
    },
    /// A stream name is empty, too long or holds control characters.
    #[error("invalid audit stream name: {reason}")]
    InvalidStream {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A field of the event is longer than the sink can store (e.g. a
    /// PostgreSQL index entry holds at most about 2.7 kB).
    #[error("audit event field {field} is longer than {max} bytes")]
    FieldTooLong {
        /// The field's JSON name (`type`, `subject`, `correlation_id`).
        field: &'static str,
        /// The longest accepted value, in bytes.
        max: usize,
    },
    /// Some events of a batch were refused on their own (see
    /// [`BatchError::refused`]); the batch's other events were written.
    #[error("{refused} of {total} audit events of the batch were refused")]
    Refused {
        /// How many events were refused.
        refused: usize,
        /// How many events the batch had.
        total: usize,
    },
    /// A database schema name is not a plain lowercase identifier.
    #[error(
        "invalid schema name {name:?}: use 1 to 63 of [a-z0-9_], not starting with a digit or pg_"
    )]
    InvalidSchema {
        /// The rejected name.
        name: String,
    },
    /// An applied migration differs from the one this version of the crate ships.
    #[error("audit migration {version} ({name}) was changed after it was applied")]
    MigrationChanged {
        /// Migration version.
        version: i64,
        /// Migration name.
        name: String,
    },
    /// A database role name is not a plain lowercase identifier of at most
    /// 63 bytes (a role name derived from a long schema name can be too
    /// long: name the roles with `PostgresSink::with_roles`).
    #[error(
        "invalid role name {name:?}: use 1 to 63 of [a-z0-9_], not starting with a digit or pg_"
    )]
    InvalidRole {
        /// The rejected name.
        name: String,
    },
    /// The audit roles do not exist (or the migrating role is not a member
    /// of the owner role) and the migrating role may not create them: an
    /// administrator runs `PostgresSink::roles_sql` once, then migrate again.
    #[error(
        "audit roles missing: {missing:?}; {user} may not create roles or grant membership: run the SQL of PostgresSink::roles_sql as a role with CREATEROLE, then migrate again"
    )]
    RolesMissing {
        /// What is missing: role names, or `member of <owner>`.
        missing: Vec<String>,
        /// The migrating role (`current_user`).
        user: String,
    },
    /// The sink was shut down.
    #[error("audit sink is closed")]
    Closed,
    /// Some sinks of a [`FanOut`](crate::FanOut) failed (the others wrote the event).
    #[error("{failed} of {total} audit sinks failed")]
    FanOut {
        /// How many sinks failed.
        failed: usize,
        /// How many sinks there are.
        total: usize,
        /// The first failure.
        #[source]
        source: Box<AuditError>,
    },
}

impl AuditError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        Self::Backend { source: e.into() }
    }

    /// Wraps a connectivity error.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable { source: e.into() }
    }
}

/// A batch append did not write every event.
///
/// Of a batch of `total` events, `written` were written, the events in
/// [`refused`](Self::refused) were refused one by one (the batch went on
/// past them), and the remaining `total - written - refused.len()` were not
/// written because of [`source`](Self::source), which stopped the batch.
/// Without refusals the written events are the first `written` ones (what
/// the default [`AuditSink::append_batch`](crate::AuditSink::append_batch) does).
///
/// ```
/// use idempotency_audit::{AuditError, BatchError};
/// let e = BatchError::new(2, AuditError::Closed);
/// assert_eq!((e.written, e.unwritten(5)), (2, 3));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("audit batch: {written} events written, {} refused", refused.len())]
#[non_exhaustive]
pub struct BatchError {
    /// How many events of the batch were written.
    pub written: usize,
    /// The events refused on their own, in batch order.
    pub refused: Vec<RefusedEvent>,
    /// Why the batch stopped; [`AuditError::Refused`] when nothing stopped
    /// it and only [`refused`](Self::refused) events are missing.
    #[source]
    pub source: AuditError,
}

impl BatchError {
    /// The batch stopped after writing `written` events, because of `source`.
    pub fn new(written: usize, source: AuditError) -> Self {
        Self {
            written,
            refused: Vec::new(),
            source,
        }
    }

    /// `written` events were written and `refused` refused one by one; nothing
    /// stopped the batch.
    pub fn with_refusals(written: usize, refused: Vec<RefusedEvent>) -> Self {
        let source = AuditError::Refused {
            refused: refused.len(),
            total: written + refused.len(),
        };
        Self {
            written,
            refused,
            source,
        }
    }

    /// Events of a batch of `total` that were neither written nor refused:
    /// those the stopping error left unwritten.
    pub fn unwritten(&self, total: usize) -> usize {
        total.saturating_sub(self.written + self.refused.len())
    }
}

/// One event of a batch that a sink refused on its own.
#[derive(Debug)]
#[non_exhaustive]
pub struct RefusedEvent {
    /// Its position in the batch.
    pub index: usize,
    /// Why it was refused.
    pub source: AuditError,
}

impl RefusedEvent {
    /// The event at `index` was refused because of `source`.
    pub fn new(index: usize, source: AuditError) -> Self {
        Self { index, source }
    }
}
