//! Shared test helpers: a store on the shared server, skipped when it is
//! unreachable (failing loudly under CI).

#![allow(dead_code, unreachable_pub)]

pub mod server;

use idempotency_redis::{ConnectionMode, RedisConfig, RedisStore};

pub use idempotency_core::conformance::support::{in_ci, redis_url};

/// A random prefix, so tests never see each other's keys.
pub fn random_prefix() -> String {
    format!("idem-test-{}", uuid::Uuid::new_v4().simple())
}

/// A store with its own prefix and clock, or `None` (after printing why)
/// when Redis is unreachable outside CI.
pub async fn store_with(mode: ConnectionMode) -> Option<RedisStore> {
    let config = RedisConfig::new(redis_url())
        .prefix(random_prefix())
        .mode(mode);
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
