//! The core store conformance suite and the model-based lifecycle test, on
//! PostgreSQL (each case in a schema of its own).

mod common;

idempotency_core::store_conformance_tests!(async { common::store().await });
idempotency_core::store_model_test!(async { common::store().await });
