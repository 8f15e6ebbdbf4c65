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
