//! The core conformance suite and model-based test, on the default
//! connection mode.

mod common;

idempotency_core::store_conformance_tests!(common::store());
idempotency_core::store_model_test!(common::store());
