//! What the example services share, and nothing more: each piece is a
//! function or a small type the service calls, never a framework it plugs
//! into. A service keeps its own routes, state, settings table and
//! problem types; this crate holds the mechanics they had in common.
//!
//! | module | what it does |
//! |---|---|
//! | [`settings`] | read and check start-up settings; every failure is one line naming the setting |
//! | [`shutdown`] | the future that completes on SIGTERM or Ctrl-C |
//! | [`migrate`] | versioned SQL migrations in one transaction under an advisory lock, with checksums |
//! | [`problem`] | RFC 9457 `application/problem+json` answers with stable `type` URIs; [`service_error!`] declares a service's error type over them |
//! | [`docs`] | `/openapi.json` and the vendored Swagger UI of `/docs` |
//! | [`ops`] | the bodies of `/readyz` and `/metrics` |
//! | [`routes`] | a router that lists every `(method, path)` it serves, for the OpenAPI test |
//! | [`faults`] | crash and stop points, and an effect journal, for the fault suite; inert unless `EXAMPLE_CRASH_AT`, `EXAMPLE_STOP_AT` or `EXAMPLE_EFFECT_LOG` is set |
//! | `testing` (feature `testing`) | run a service binary on a free port, talk HTTP to it, stop it |

pub mod docs;
pub mod faults;
pub mod migrate;
pub mod ops;
pub mod problem;
pub mod routes;
pub mod settings;
pub mod shutdown;
#[cfg(feature = "testing")]
pub mod testing;

pub use problem::Problem;

/// What [`service_error!`] expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use axum;
    pub use serde_json;
}
