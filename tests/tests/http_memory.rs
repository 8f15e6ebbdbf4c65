//! The HTTP behaviour suite on `MemoryStore`.

use idempotency_core::MemoryStore;

idempotency_tests::http_behaviour_suite!(async { Some(MemoryStore::new()) });
