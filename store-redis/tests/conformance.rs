//! The core conformance suite and model-based test, on the default
//! connection mode, every claim reading the record first (`TIME` + `HMGET`).

mod common;

use idempotency_core::peek::ReadFirst;
use idempotency_redis::ConnectionMode;

idempotency_core::store_conformance_tests!(common::store_reading(
    ConnectionMode::Multiplexed,
    ReadFirst::Always
));
idempotency_core::store_model_test!(common::store_reading(
    ConnectionMode::Multiplexed,
    ReadFirst::Always
));
