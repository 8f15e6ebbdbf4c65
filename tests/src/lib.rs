//! Cross-crate integration tests: the HTTP behaviour suite, written once and
//! run against every store, plus multi-instance and fault tests.
//!
//! Run the HTTP suite for a store from a test file:
//!
//! ```text
//! use idempotency_core::MemoryStore;
//!
//! idempotency_tests::http_behaviour_suite!(async { Some(MemoryStore::new()) });
//! ```
//!
//! The argument is an async block yielding `Option<S>`: `None` means the
//! store's service is unreachable (and `CI` is not set), and each test prints
//! a skip line and returns. Every behaviour is also a plain `pub async fn` in
//! [`http_suite`], to call from anywhere.

pub mod app;
pub mod http_suite;

pub use app::{Answer, Req, TestApp, random_key};
pub use http_suite::SuiteStore;

/// Expands to one `#[tokio::test]` per HTTP behaviour, each running the
/// behaviour of [`http_suite`] of the same name on the store yielded by
/// `$store` (an async block yielding `Option<S>`; `None` skips).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[macro_export]
macro_rules! http_behaviour_suite {
    ($store:expr) => {
        $crate::http_behaviour_suite!(@tests $store;
            first_call_executes_unmarked,
            replay_is_byte_identical_and_marked,
            location_and_201_are_replayed,
            set_cookie_is_not_replayed,
            different_body_is_422,
            different_method_is_422,
            different_route_is_422,
            concurrent_duplicates_execute_once,
            wait_mode_returns_first_response,
            invalid_keys_are_400,
            quoted_and_bare_are_the_same_key,
            get_passes_through,
            users_are_scoped,
            retention_expiry_reexecutes,
            server_errors_release_for_retry,
            business_4xx_is_replayed,
            auth_and_rate_limit_never_consume_a_key,
            no_store_is_kept_and_release_key_releases,
            chunked_body_over_cap_is_413,
            oversized_response_becomes_tombstone,
            client_disconnect_executes_once,
        );
    };
    (@tests $store:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(store) = $store.await else {
                    println!("skipping: store unreachable ({})", stringify!($name));
                    return;
                };
                $crate::http_suite::$name(store).await;
            }
        )*
    };
}
