//! The core conformance suite and model-based test, on a `deadpool-redis`
//! pool, every claim the `claim` script alone (no read first).

mod common;

use idempotency_core::peek::ReadFirst;
use idempotency_redis::ConnectionMode;

idempotency_core::store_conformance_tests!(common::store_reading(
    ConnectionMode::Pooled,
    ReadFirst::Never
));
idempotency_core::store_model_test!(common::store_reading(
    ConnectionMode::Pooled,
    ReadFirst::Never
));
