//! The service's error answers: RFC 9457 `application/problem+json`
//! ([`example_support::Problem`]), each with a stable `type` under
//! [`PROBLEM_BASE`]; one constructor per situation.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use example_support::Problem;
use example_support::problem::{database_unavailable, field_errors};
use serde_json::{Value, json};

use crate::domain::Status;

/// Base of the `type` URI of every problem the service answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/order-intake/";

/// An error answer of the service (boxed: results stay small).
#[derive(Debug, Clone)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    /// A problem of `status` with stable `slug` and `title`.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Problem::new(
            PROBLEM_BASE,
            status,
            slug,
            title,
            detail,
        )))
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(self, name: &'static str, value: Value) -> Self {
        Self(Box::new(self.0.with(name, value)))
    }

    /// Sets the `Location` header.
    #[must_use]
    pub fn at(self, location: impl Into<String>) -> Self {
        Self(Box::new(self.0.at(location)))
    }

    /// 400: the body is not a JSON object.
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "Request body is not valid JSON",
            detail,
        )
    }

    /// 422: the body breaks the rules; `errors` lists `{pointer, detail}`.
    pub fn validation(errors: Vec<(String, String)>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Request body failed validation",
            format!("{} field(s) failed validation", errors.len()),
        )
        .with("errors", field_errors(&errors))
    }

    /// 400: a query parameter or header is unusable.
    pub fn bad_request(slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, title, detail)
    }

    /// 409: the lifecycle has no edge from `from` to `to`.
    pub fn illegal_transition(from: Status, to: Status) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "illegal-transition",
            "Illegal order transition",
            format!("an order in state {from} cannot become {to}"),
        )
        .with("from", json!(from.as_str()))
        .with("to", json!(to.as_str()))
    }

    /// 404: no such thing.
    pub fn not_found(what: &'static str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("there is no {what} {id}"),
        )
    }

    /// 503: a service behind this one failed; nothing was changed.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// 500: anything else (logged with its cause).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if database_unavailable(&e) {
            Self::unavailable("the database is unavailable; nothing was changed, retry later")
        } else {
            Self::internal("a database error occurred; nothing was changed")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}
