//! Cross-crate integration tests: the HTTP behaviour suite, written once and
//! run against every store, plus multi-instance and fault tests.
