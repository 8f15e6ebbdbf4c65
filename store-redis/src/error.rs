//! Errors: building a store ([`ConfigError`]) and mapping Redis failures
//! into [`StoreError`].

use idempotency_core::StoreError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a [`RedisStore`](crate::RedisStore) could not be built from its
/// configuration. Building does no I/O, so this is never about reachability.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL could not be parsed.
    #[error("invalid Redis URL")]
    InvalidUrl {
        /// The parser's error.
        #[source]
        source: RedisError,
    },
    /// No URL was given.
    #[error("no Redis URL configured")]
    NoUrl,
    /// The key prefix is empty or contains `{` / `}`.
    #[error("invalid key prefix {0:?}: it must be non-empty and contain no braces")]
    InvalidPrefix(String),
    /// The connection pool could not be built.
    #[error("cannot build the connection pool")]
    Pool {
        /// The pool's error.
        #[source]
        source: deadpool_redis::BuildError,
    },
}

/// Why a store-side read could not be turned into a record (the record is
/// then marked corrupted).
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct ProtocolError(pub(crate) &'static str);

/// Maps a Redis error: timeouts to [`StoreError::Timeout`], connectivity and
/// "server not ready" conditions to [`StoreError::Unavailable`], anything
/// else to [`StoreError::Backend`].
pub(crate) fn map_redis(e: RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout {
            source: Some(Box::new(e)),
        };
    }
    let unavailable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unavailable {
        StoreError::unavailable(e)
    } else {
        StoreError::backend(e)
    }
}

/// Maps a pool checkout error: a full pool, a connect timeout or a refused
/// connection all mean Redis cannot be reached right now.
pub(crate) fn map_pool(e: deadpool_redis::PoolError) -> StoreError {
    match e {
        deadpool_redis::PoolError::Backend(e) => match map_redis(e) {
            StoreError::Backend { source } => StoreError::Unavailable { source },
            other => other,
        },
        other => StoreError::unavailable(other),
    }
}

/// Whether a connection that produced this error may be used again: server
/// replies (script errors, `NOSCRIPT`, ...) leave it in a known state; I/O
/// failures and timeouts do not.
pub(crate) fn connection_survives(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && !e.is_io_error()
        && !e.is_timeout()
}
