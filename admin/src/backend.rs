//! The store the records are in, PostgreSQL or Redis, through the stores'
//! public APIs only: [`AdminStore`] to read, [`IdempotencyStore::resolve`]
//! and [`PurgeExpired`] to change.

use idempotency_core::{
    AdminRecord, AdminStore, IdempotencyStore, ListFilter, Listing, PurgeExpired, Record,
    Resolution, StorageKey, StoreError,
};
use idempotency_postgres::PostgresStore;
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};
use serde_json::{Value, json};

use crate::cli::{StoreArgs, StoreKind};
use crate::exit::{Failure, chain};

/// A connected (lazily: nothing is sent before the first command) store.
pub(crate) enum Backend {
    Postgres(PostgresStore),
    Redis(RedisStore),
}

impl Backend {
    /// Builds the store the arguments name. No I/O.
    pub(crate) fn open(args: &StoreArgs) -> Result<Self, Failure> {
        match args.store {
            None => Err(Failure::Usage(
                "say which store holds the records: --store postgres or --store redis \
                 (or IDEMPOTENCY_STORE)"
                    .into(),
            )),
            Some(StoreKind::Postgres) => {
                let url = args.database_url.as_deref().ok_or_else(|| {
                    Failure::Usage("--store postgres needs --database-url (or DATABASE_URL)".into())
                })?;
                PostgresStore::builder()
                    .schema(&args.schema)
                    .max_connections(2)
                    .acquire_timeout(args.connect_timeout)
                    .connect_lazy(url)
                    .map(Self::Postgres)
                    .map_err(|e| Failure::Usage(chain(&e)))
            }
            Some(StoreKind::Redis) => {
                let urls: Vec<&String> = args.redis_url.iter().filter(|u| !u.is_empty()).collect();
                if urls.is_empty() {
                    return Err(Failure::Usage(
                        "--store redis needs --redis-url (or REDIS_URL)".into(),
                    ));
                }
                let config = if args.cluster {
                    RedisConfig::cluster(urls.iter().map(|u| u.as_str()))
                } else if urls.len() > 1 {
                    return Err(Failure::Usage(
                        "several --redis-url values are the seed nodes of a cluster: add --cluster"
                            .into(),
                    ));
                } else {
                    RedisConfig::new(urls[0].as_str())
                };
                let config = config
                    .prefix(&args.prefix)
                    .connect_timeout(args.connect_timeout)
                    .response_timeout(args.connect_timeout);
                RedisStore::new(config)
                    .map(Self::Redis)
                    .map_err(|e| Failure::Usage(chain(&e)))
            }
        }
    }

    /// `postgres` or `redis`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
        }
    }

    /// Where the records are, for output and audit events (never a URL:
    /// it may hold a password).
    pub(crate) fn location(&self) -> Value {
        match self {
            Self::Postgres(s) => json!({"store": "postgres", "schema": s.schema()}),
            Self::Redis(s) => json!({
                "store": "redis",
                "prefix": s.config().key_prefix(),
                "cluster": matches!(s.config().connection_mode(), ConnectionMode::Cluster),
            }),
        }
    }

    /// `postgres/<schema>` or `redis/<prefix>`: the subject of a purge event.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Postgres(s) => format!("postgres/{}", s.schema()),
            Self::Redis(s) => format!("redis/{}", s.config().key_prefix()),
        }
    }

    pub(crate) async fn inspect(
        &self,
        key: &StorageKey,
    ) -> Result<Option<AdminRecord>, StoreError> {
        match self {
            Self::Postgres(s) => s.inspect(key).await,
            Self::Redis(s) => s.inspect(key).await,
        }
    }

    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<Listing, StoreError> {
        match self {
            Self::Postgres(s) => s.list(filter).await,
            Self::Redis(s) => s.list(filter).await,
        }
    }

    pub(crate) async fn count_expired(&self) -> Result<u64, StoreError> {
        match self {
            Self::Postgres(s) => s.count_expired().await,
            Self::Redis(s) => s.count_expired().await,
        }
    }

    pub(crate) async fn purge_expired(&self, batch: usize) -> Result<u64, StoreError> {
        match self {
            Self::Postgres(s) => s.purge_expired(batch).await,
            Self::Redis(s) => s.purge_expired(batch).await,
        }
    }

    pub(crate) async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        match self {
            Self::Postgres(s) => s.resolve(key, resolution).await,
            Self::Redis(s) => s.resolve(key, resolution).await,
        }
    }
}
