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
//! | [`openapi`] | the problem body schemas, problem examples and headers of the documents; [`docs_endpoints!`] declares the documentation's handlers |
//! | [`ops`] | the bodies of `/readyz` and `/metrics` |
//! | [`routes`] | a router that lists every `(method, path)` it serves, for the OpenAPI test |
//! | `openapi_checks` (feature `testing`) | the checks the services' OpenAPI tests share |
//! | [`faults`] | crash and stop points, and an effect journal, for the fault suite; inert unless `EXAMPLE_CRASH_AT`, `EXAMPLE_STOP_AT` or `EXAMPLE_EFFECT_LOG` is set |
//! | `testing` (feature `testing`) | run a service binary on a free port, talk HTTP to it, stop it |

pub mod docs;
pub mod faults;
pub mod migrate;
pub mod openapi;
#[cfg(feature = "testing")]
pub mod openapi_checks;
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
