//! The HTTP behaviour suite on `RedisStore` (`REDIS_URL`), each test under a
//! key prefix of its own so clock moves never touch another test's records.

use idempotency_core::conformance::support;
use idempotency_redis::{RedisConfig, RedisStore};

async fn store() -> Option<RedisStore> {
    let url = support::redis_url();
    let prefix = format!("idem-http-{}", uuid::Uuid::new_v4().simple());
    let store =
        RedisStore::new(RedisConfig::new(url.clone()).prefix(prefix)).expect("valid config");
    match store.ping().await {
        Ok(()) => Some(store),
        Err(e) if support::in_ci() => {
            panic!("Redis at {url} unreachable under CI: {e}")
        }
        Err(_) => {
            println!("skipping: redis unreachable");
            None
        }
    }
}

idempotency_tests::http_behaviour_suite!(store());
