//! The core conformance suite and model-based test, on a `deadpool-redis` pool.

mod common;

use idempotency_redis::ConnectionMode;

idempotency_core::store_conformance_tests!(common::store_with(ConnectionMode::Pooled));
idempotency_core::store_model_test!(common::store_with(ConnectionMode::Pooled));
