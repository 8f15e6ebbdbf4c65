//! The store conformance suite and the model-based lifecycle test, on `MemoryStore`.
#![cfg(feature = "conformance")]

use idempotency_core::MemoryStore;

idempotency_core::store_conformance_tests!(async { Some(MemoryStore::new()) });
idempotency_core::store_model_test!(async { Some(MemoryStore::new()) });

mod one_shard {
    //! The same suite with a single shard: every key contends for one lock.
    use idempotency_core::MemoryStore;
    idempotency_core::store_conformance_tests!(async { Some(MemoryStore::with_shards(1)) });
}

mod admin {
    //! The operator abilities (`AdminStore`, `PurgeExpired`).
    use idempotency_core::MemoryStore;
    use idempotency_core::conformance::admin;

    #[tokio::test]
    async fn inspect_reads_every_state_and_expired_records() {
        admin::inspect_reads_every_state_and_expired_records(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn list_orders_filters_and_counts() {
        admin::list_orders_filters_and_counts(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn count_and_purge_expired() {
        admin::count_and_purge_expired(&MemoryStore::new()).await;
    }
}
