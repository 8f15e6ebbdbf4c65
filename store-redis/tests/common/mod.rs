//! Shared test helpers: a store on the shared server, skipped when it is
//! unreachable (failing loudly under CI).

#![allow(dead_code, unreachable_pub)]

pub mod server;

use idempotency_core::peek::ReadFirst;
use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};

pub use idempotency_core::conformance::support::{in_ci, redis_url};

/// A random prefix, so tests never see each other's keys.
pub fn random_prefix() -> String {
    format!("idem-test-{}", uuid::Uuid::new_v4().simple())
}

/// A store with its own prefix and clock, or `None` (after printing why)
/// when Redis is unreachable outside CI.
pub async fn store_with(mode: ConnectionMode) -> Option<RedisStore> {
    store_reading(mode, ReadFirst::default()).await
}

/// [`store_with`], reading before claiming as `read_first` says.
pub async fn store_reading(mode: ConnectionMode, read_first: ReadFirst) -> Option<RedisStore> {
    let config = RedisConfig::new(redis_url())
        .prefix(random_prefix())
        .mode(mode)
        .read_first(read_first);
    let store = RedisStore::new(config).expect("valid config");
    match store.ping().await {
        Ok(()) => Some(store),
        Err(e) if in_ci() => panic!("Redis at {} is unreachable under CI: {e}", redis_url()),
        Err(_) => {
            println!("skipping: redis unreachable");
            None
        }
    }
}

pub async fn store() -> Option<RedisStore> {
    store_with(ConnectionMode::default()).await
}
