//! Builds the idempotency store `IDEMPOTENCY_STORE` names (checked by
//! [`Settings`]).

use idempotency_core::{BoxError, DynStore, MemoryStore};

use crate::settings::{Settings, StoreKind};

/// The store of `settings`: `memory` (the default), `postgres` over
/// `DATABASE_URL`, or `redis` over `REDIS_URL`.
///
/// # Errors
///
/// A store that cannot be set up or reached.
pub(crate) async fn from_settings(settings: &Settings) -> Result<DynStore, BoxError> {
    match settings.store {
        StoreKind::Memory => Ok(DynStore::new(MemoryStore::new())),
        StoreKind::Postgres => {
            // PostgresStore over DATABASE_URL, in its own schema
            // (`idempotency`), migrated at start-up (safe from every replica
            // at once), with a reaper deleting expired records every minute.
            let url = settings
                .database_url
                .as_deref()
                .ok_or("IDEMPOTENCY_STORE=postgres needs DATABASE_URL")?;
            let store = idempotency_postgres::PostgresStore::builder().connect_lazy(url)?;
            store.migrate().await?;
            store
                .spawn_reaper(std::time::Duration::from_secs(60), 1_000)
                .detach();
            Ok(DynStore::new(store))
        }
        StoreKind::Redis => {
            // RedisStore over REDIS_URL (default redis://127.0.0.1:6379), one
            // multiplexed connection; refuse to start if Redis does not answer.
            let url = &settings.redis_url;
            let store = idempotency_redis::RedisStore::new(idempotency_redis::RedisConfig::new(
                url.clone(),
            ))?;
            store
                .ping()
                .await
                .map_err(|e| format!("Redis at {url} does not answer: {e}"))?;
            Ok(DynStore::new(store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_the_default() {
        let settings = Settings::from_env(&[], |_| None).unwrap();
        assert!(from_settings(&settings).await.is_ok());
    }
}
