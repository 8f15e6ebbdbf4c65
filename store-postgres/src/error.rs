//! Error mapping: sqlx errors into the core's [`StoreError`], and setup errors.

use idempotency_core::StoreError;

/// Errors from building or migrating a [`PostgresStore`](crate::PostgresStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The schema name is not a plain lowercase identifier.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchema {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The connection URL cannot be parsed.
    #[error("invalid database URL")]
    InvalidUrl {
        /// The parser's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration that was already applied differs from the one embedded in
    /// this build: the database was migrated by a different version of the
    /// migration file.
    #[error("migration {version} ({description}) was modified after it was applied")]
    MigrationModified {
        /// The migration's version.
        version: i64,
        /// Its description.
        description: &'static str,
    },
    /// The database failed or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SQLSTATE codes that mean "the database could not be reached or is going away".
fn is_unavailable_code(code: &str) -> bool {
    // Class 08: connection exception. 57P01 admin_shutdown, 57P02
    // crash_shutdown, 57P03 cannot_connect_now, 53300 too_many_connections.
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// SQLSTATE codes that mean "the statement ran out of time".
fn is_timeout_code(code: &str) -> bool {
    // 57014 query_canceled (statement_timeout), 55P03 lock_not_available (lock_timeout).
    matches!(code, "57014" | "55P03")
}

/// Maps a sqlx error into a [`StoreError`], keeping it as the source.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::unavailable(e),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if is_timeout_code(&code) {
                StoreError::Timeout {
                    source: Some(Box::new(e)),
                }
            } else if is_unavailable_code(&code) {
                StoreError::unavailable(e)
            } else {
                StoreError::backend(e)
            }
        }
        _ => StoreError::backend(e),
    }
}

/// A row that violates the table's invariants (which its constraints should
/// have prevented).
#[derive(Debug, thiserror::Error)]
#[error("unexpected row: {0}")]
pub(crate) struct UnexpectedRow(pub(crate) String);

/// Claims kept losing races against concurrent writers.
#[derive(Debug, thiserror::Error)]
#[error("claim did not settle after {0} rounds of concurrent changes")]
pub(crate) struct ClaimContention(pub(crate) u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(is_unavailable_code("08006"));
        assert!(is_unavailable_code("57P01"));
        assert!(!is_unavailable_code("23505"));
        assert!(is_timeout_code("57014"));
        assert!(!is_timeout_code("40001"));
    }

    #[test]
    fn pool_errors_are_unavailable_and_keep_their_source() {
        let e = map_sqlx(sqlx::Error::PoolTimedOut);
        assert!(matches!(e, StoreError::Unavailable { .. }));
        assert!(std::error::Error::source(&e).is_some());
        let e = map_sqlx(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(e, StoreError::Unavailable { .. }));
        let e = map_sqlx(sqlx::Error::RowNotFound);
        assert!(matches!(e, StoreError::Backend { .. }));
    }
}
