//! [`RedisConfig`]: where Redis is, how to talk to it, how long to wait.

use std::time::Duration;

use idempotency_core::peek::ReadFirst;

/// How the store holds its connections to Redis.
///
/// Both single-server modes are cancel-safe and reconnect by themselves;
/// see the crate documentation for the measurements behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConnectionMode {
    /// One multiplexed connection shared by every operation (requests are
    /// pipelined and matched to their replies by a driver task), replaced
    /// when it breaks. One round trip per operation.
    #[default]
    Multiplexed,
    /// A `deadpool-redis` pool: each operation checks out a connection of its
    /// own. The pool health-checks a connection (`PING`) on every checkout,
    /// so an operation costs two round trips; a connection whose command did
    /// not finish (dropped future, timeout, I/O error) is discarded, never
    /// returned to the pool.
    Pooled,
    /// Redis Cluster: the URLs are seed nodes; commands are routed by the
    /// key's hash slot (every script touches one record's keys, all in
    /// its slot).
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    Cluster,
}

/// Configuration of a [`RedisStore`](crate::RedisStore).
///
/// ```
/// use std::time::Duration;
/// use idempotency_redis::{ConnectionMode, RedisConfig};
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .prefix("orders-idem")
///     .mode(ConnectionMode::Pooled)
///     .pool_size(32)
///     .connect_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_millis(250));
/// assert_eq!(config.key_prefix(), "orders-idem");
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) mode: ConnectionMode,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) pool_wait_timeout: Duration,
    pub(crate) wait_poll_interval: Duration,
    pub(crate) read_first: ReadFirst,
}

impl RedisConfig {
    /// Default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "idem";
    /// Default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default response timeout (per command).
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default pool size ([`ConnectionMode::Pooled`]).
    pub const DEFAULT_POOL_SIZE: usize = 32;
    /// Default time to wait for a free pooled connection.
    pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default upper bound between two re-checks of a waited-on record.
    pub const DEFAULT_WAIT_POLL_INTERVAL: Duration = Duration::from_secs(1);

    /// A single server (or, with [`ConnectionMode::Cluster`], one seed node),
    /// e.g. `redis://127.0.0.1:6379` or `redis://:password@host:6379/2`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            mode: ConnectionMode::default(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            response_timeout: Self::DEFAULT_RESPONSE_TIMEOUT,
            pool_wait_timeout: Self::DEFAULT_POOL_WAIT_TIMEOUT,
            wait_poll_interval: Self::DEFAULT_WAIT_POLL_INTERVAL,
            read_first: ReadFirst::Adaptive,
        }
    }

    /// A Redis Cluster, given its seed nodes ([`ConnectionMode::Cluster`]).
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = nodes.into_iter().map(Into::into).collect();
        Self {
            urls,
            mode: ConnectionMode::Cluster,
            ..Self::new(String::new())
        }
    }

    /// Reads `REDIS_URL` (default `redis://127.0.0.1:6379`).
    pub fn from_env() -> Self {
        Self::new(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        )
    }

    /// Key prefix: records live at `<prefix>:{<64-hex storage key>}`, change
    /// notifications go to `<prefix>:changes`. It may not contain `{` or `}`
    /// (the braces of the key are its Redis Cluster hash tag).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How connections are held.
    #[must_use]
    pub fn mode(mut self, mode: ConnectionMode) -> Self {
        self.mode = mode;
        self
    }

    /// Maximum pooled connections ([`ConnectionMode::Pooled`]).
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long establishing a connection may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may wait for its reply.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long an operation may wait for a free pooled connection.
    #[must_use]
    pub fn pool_wait_timeout(mut self, timeout: Duration) -> Self {
        self.pool_wait_timeout = timeout;
        self
    }

    /// Upper bound between two re-checks of a record while
    /// [`wait_for_change`](idempotency_core::IdempotencyStore::wait_for_change)
    /// waits for a notification (a safety net for lost notifications).
    #[must_use]
    pub fn wait_poll_interval(mut self, interval: Duration) -> Self {
        self.wait_poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Whether a claim first reads the record with plain commands
    /// (`TIME` and `HMGET`, pipelined: one round trip, no Lua) and answers a
    /// replay, an in-flight duplicate or a fingerprint mismatch from that
    /// read; the `claim` script runs only when the read says it must.
    /// Default [`ReadFirst::Adaptive`]: read first while most recent claims
    /// were such answers (see [`idempotency_core::peek`]). In
    /// [`ConnectionMode::Cluster`](crate::ConnectionMode) a claim never
    /// reads first: `TIME` would come from an arbitrary node, not the
    /// record's.
    #[must_use]
    pub fn read_first(mut self, read_first: ReadFirst) -> Self {
        self.read_first = read_first;
        self
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The URLs (one server, or the cluster's seed nodes).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The connection mode.
    pub fn connection_mode(&self) -> ConnectionMode {
        self.mode
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::from_env()
    }
}
