//! Connection backends and the checkout discipline that keeps them
//! cancel-safe.
//!
//! * [`ConnectionMode::Multiplexed`] / [`ConnectionMode::Cluster`]: one
//!   shared connection whose driver task matches every reply to the request
//!   that sent it (a per-request channel), so a caller dropped mid-command
//!   never leaves an unread reply for someone else. A connection that fails
//!   with an I/O error or a timeout is replaced on the next checkout; requests
//!   still in flight on it finish on the old one.
//! * [`ConnectionMode::Pooled`]: a connection checked out of the
//!   `deadpool-redis` pool goes back only if its command ran to completion
//!   with a server reply. If the operation is dropped mid-command, or the
//!   command failed with an I/O error or a timeout, the connection is taken
//!   out of the pool and closed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::{ConnectionMode, RedisConfig};
use crate::error::{ConfigError, connection_survives, map_pool, map_redis};
use idempotency_core::StoreError;

/// How connections are obtained.
pub(crate) enum Backend {
    Shared(Box<Shared>),
    Pooled(deadpool_redis::Pool),
}

/// What a shared connection is made of.
enum Connector {
    Single {
        client: Client,
        config: AsyncConnectionConfig,
    },
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
pub(crate) enum SharedConn {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

/// One connection shared by all operations, replaced when it breaks.
pub(crate) struct Shared {
    connector: Connector,
    current: Mutex<Option<(u64, SharedConn)>>,
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

/// A checked-out connection. Call [`Checkout::finish`] with the command's
/// result; dropping it unfinished (the operation was cancelled) discards a
/// pooled connection.
pub(crate) enum Checkout<'a> {
    Shared {
        owner: &'a Shared,
        generation: u64,
        conn: SharedConn,
    },
    Pooled(PooledCheckout),
}

/// A pooled connection that goes back to the pool only when marked clean.
pub(crate) struct PooledCheckout {
    conn: Option<deadpool_redis::Connection>,
    clean: bool,
}

impl Drop for PooledCheckout {
    fn drop(&mut self) {
        if !self.clean
            && let Some(conn) = self.conn.take()
        {
            // Detach from the pool and close: its state is unknown.
            drop(deadpool_redis::Connection::take(conn));
            metrics::counter!("idempotency_redis_connections_discarded_total").increment(1);
        }
    }
}

impl Backend {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let first = config.urls.first().filter(|u| !u.is_empty());
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        match config.mode {
            ConnectionMode::Multiplexed => {
                let url = first.ok_or(ConfigError::NoUrl)?;
                let client = Client::open(url.as_str())
                    .map_err(|source| ConfigError::InvalidUrl { source })?;
                Ok(Self::Shared(Box::new(Shared::new(Connector::Single {
                    client,
                    config: conn_config,
                }))))
            }
            ConnectionMode::Pooled => {
                let url = first.ok_or(ConfigError::NoUrl)?;
                let manager = deadpool_redis::Manager::new_with_config(url.as_str(), conn_config)
                    .map_err(|source| ConfigError::InvalidUrl { source })?;
                // Creating a connection is bounded by the connection's own
                // connect timeout; the pool adds its own bound on top.
                let create = config.connect_timeout + Duration::from_millis(100);
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(config.pool_size)
                    .wait_timeout(Some(config.pool_wait_timeout))
                    .create_timeout(Some(create))
                    .recycle_timeout(Some(config.response_timeout))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map_err(|source| ConfigError::Pool { source })?;
                Ok(Self::Pooled(pool))
            }
            #[cfg(feature = "cluster")]
            ConnectionMode::Cluster => {
                if config.urls.iter().all(String::is_empty) {
                    return Err(ConfigError::NoUrl);
                }
                let client = redis::cluster::ClusterClient::builder(
                    config
                        .urls
                        .iter()
                        .filter(|u| !u.is_empty())
                        .map(String::as_str),
                )
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.response_timeout)
                .build()
                .map_err(|source| ConfigError::InvalidUrl { source })?;
                Ok(Self::Shared(Box::new(Shared::new(Connector::Cluster(
                    client,
                )))))
            }
        }
    }

    /// Checks a connection out.
    pub(crate) async fn checkout(&self) -> Result<Checkout<'_>, StoreError> {
        match self {
            Self::Shared(shared) => shared.checkout().await,
            Self::Pooled(pool) => {
                // Boxed: the pool's future (which may connect) is large, and
                // every operation's future would otherwise carry it inline.
                let conn = Box::pin(pool.get()).await.map_err(map_pool)?;
                Ok(Checkout::Pooled(PooledCheckout {
                    conn: Some(conn),
                    clean: false,
                }))
            }
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        match self {
            #[cfg(feature = "cluster")]
            Self::Shared(shared) => matches!(shared.connector, Connector::Cluster(_)),
            _ => false,
        }
    }

    /// Pool statistics (pooled mode only).
    pub(crate) fn pool_status(&self) -> Option<deadpool_redis::Status> {
        match self {
            Self::Pooled(pool) => Some(pool.status()),
            Self::Shared(_) => None,
        }
    }
}

impl Shared {
    fn new(connector: Connector) -> Self {
        Self {
            connector,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<(u64, SharedConn)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn checkout(&self) -> Result<Checkout<'_>, StoreError> {
        if let Some((generation, conn)) = self.current() {
            return Ok(Checkout::Shared {
                owner: self,
                generation,
                conn,
            });
        }
        // Rare, and its future is large: kept off the operations' futures.
        Box::pin(self.connect()).await
    }

    /// Connects, one connect at a time; the others wait for it and share the result.
    async fn connect(&self) -> Result<Checkout<'_>, StoreError> {
        let _connecting = self.connecting.lock().await;
        if let Some((generation, conn)) = self.current() {
            return Ok(Checkout::Shared {
                owner: self,
                generation,
                conn,
            });
        }
        let conn = match &self.connector {
            Connector::Single { client, config } => SharedConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map_err(|e| into_unavailable(map_redis(e)))?,
            ),
            #[cfg(feature = "cluster")]
            Connector::Cluster(client) => SharedConn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| into_unavailable(map_redis(e)))?,
            ),
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((generation, conn.clone()));
        Ok(Checkout::Shared {
            owner: self,
            generation,
            conn,
        })
    }

    /// Drops the shared connection if it is still the one that failed.
    fn invalidate(&self, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
            metrics::counter!("idempotency_redis_connections_discarded_total").increment(1);
        }
    }
}

/// A failure to connect is "unavailable", even when it is a timeout.
fn into_unavailable(e: StoreError) -> StoreError {
    match e {
        StoreError::Timeout {
            source: Some(source),
        }
        | StoreError::Backend { source } => StoreError::Unavailable { source },
        other => other,
    }
}

impl Checkout<'_> {
    /// Records how the command ended: a connection that got a reply (even an
    /// error reply) is healthy; one that failed with an I/O error or timed
    /// out is discarded (pooled) or replaced (shared).
    pub(crate) fn finish<T>(mut self, result: &RedisResult<T>) {
        let healthy = match result {
            Ok(_) => true,
            Err(e) => connection_survives(e),
        };
        match &mut self {
            Self::Shared {
                owner, generation, ..
            } => {
                if !healthy {
                    owner.invalidate(*generation);
                }
            }
            Self::Pooled(p) => p.clean = healthy,
        }
    }
}

impl ConnectionLike for Checkout<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Shared { conn, .. } => match conn {
                SharedConn::Single(c) => c.req_packed_command(cmd),
                #[cfg(feature = "cluster")]
                SharedConn::Cluster(c) => c.req_packed_command(cmd),
            },
            Self::Pooled(p) => match p.conn.as_mut() {
                Some(c) => c.req_packed_command(cmd),
                None => Box::pin(async { Err(closed()) }),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Shared { conn, .. } => match conn {
                SharedConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
                #[cfg(feature = "cluster")]
                SharedConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            },
            Self::Pooled(p) => match p.conn.as_mut() {
                Some(c) => c.req_packed_commands(pipeline, offset, count),
                None => Box::pin(async { Err(closed()) }),
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Shared { conn, .. } => match conn {
                SharedConn::Single(c) => c.get_db(),
                #[cfg(feature = "cluster")]
                SharedConn::Cluster(c) => c.get_db(),
            },
            Self::Pooled(p) => p.conn.as_ref().map_or(0, ConnectionLike::get_db),
        }
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "connection already returned",
    ))
}
