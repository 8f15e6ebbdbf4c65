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

/// A batch append failed part way.
///
/// `events[..written]` were written; the rest were not.
#[derive(Debug, thiserror::Error)]
#[error("audit batch failed after {written} events")]
pub struct BatchError {
    /// How many events, from the start of the batch, were written.
    pub written: usize,
    /// Why the rest were not.
    #[source]
    pub source: AuditError,
}
