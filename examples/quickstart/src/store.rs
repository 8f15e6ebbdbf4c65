//! Chooses the idempotency store from `IDEMPOTENCY_STORE` at run time.

use idempotency_core::{BoxError, DynStore, MemoryStore};

/// Why the store named by the environment cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StoreConfigError {
    /// `IDEMPOTENCY_STORE` names no known store.
    #[error("IDEMPOTENCY_STORE={0:?} is not one of: memory, postgres, redis")]
    Unknown(String),
}

/// The store named by `IDEMPOTENCY_STORE` (`memory`, the default, `postgres`
/// with `DATABASE_URL`, or `redis` with `REDIS_URL`). `var` reads the
/// environment (a parameter so tests need not touch the process environment).
///
/// # Errors
///
/// An unknown store name, a store not wired in, or a store that cannot be
/// reached.
pub(crate) async fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<DynStore, BoxError> {
    let kind = var("IDEMPOTENCY_STORE").unwrap_or_else(|| "memory".to_owned());
    match kind.trim().to_ascii_lowercase().as_str() {
        "memory" | "" => Ok(DynStore::new(MemoryStore::new())),
        "postgres" => {
            // PostgresStore over DATABASE_URL, in its own schema
            // (`idempotency`), migrated at start-up (safe from every replica
            // at once), with a reaper deleting expired records every minute.
            let url = var("DATABASE_URL").ok_or(
                "IDEMPOTENCY_STORE=postgres needs DATABASE_URL (postgres://user@host:5432/db)",
            )?;
            let store = idempotency_postgres::PostgresStore::builder().connect_lazy(&url)?;
            store.migrate().await?;
            store
                .spawn_reaper(std::time::Duration::from_secs(60), 1_000)
                .detach();
            Ok(DynStore::new(store))
        }
        "redis" => {
            // RedisStore over REDIS_URL (default redis://127.0.0.1:6379), one
            // multiplexed connection; refuse to start if Redis does not answer.
            let url = var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
            let store = idempotency_redis::RedisStore::new(idempotency_redis::RedisConfig::new(
                url.clone(),
            ))?;
            store
                .ping()
                .await
                .map_err(|e| format!("Redis at {url} does not answer: {e}"))?;
            Ok(DynStore::new(store))
        }
        other => Err(StoreConfigError::Unknown(other.to_owned()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_the_default() {
        assert!(from_env(|_| None).await.is_ok());
        let memory = |k: &str| (k == "IDEMPOTENCY_STORE").then(|| "Memory".to_owned());
        assert!(from_env(memory).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_stores_are_refused_by_name() {
        let var = |k: &str| (k == "IDEMPOTENCY_STORE").then(|| "mongo".to_owned());
        let err = from_env(var).await.unwrap_err();
        assert!(err.to_string().contains("\"mongo\""), "{err}");
    }
}
