//! The service's error answers: RFC 9457 `application/problem+json`, each
//! with a stable `type` under [`PROBLEM_BASE`].

use axum::http::StatusCode;
use example_support::problem::{database_unavailable, field_errors};
use serde_json::json;

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/appointments/";

example_support::service_error! {
    /// An error answer of the service: a `Problem` under [`PROBLEM_BASE`],
    /// one constructor per situation.
    pub struct ApiError under PROBLEM_BASE;
}

impl ApiError {
    /// 400: the body is not JSON, or not a JSON object.
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "Request body is not valid JSON",
            detail,
        )
    }

    /// 422: the body is JSON but breaks the rules; `errors` lists each
    /// broken rule as `{pointer, detail}`.
    pub fn validation(errors: Vec<(String, String)>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Request body failed validation",
            format!("{} field(s) failed validation", errors.len()),
        )
        .with("errors", field_errors(&errors))
    }

    /// 400: a required query parameter is missing or empty.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing-parameter",
            "A required query parameter is missing",
            format!("the query parameter {name} is required"),
        )
    }

    /// 401: no usable `Authorization: Bearer <user>:<role>`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    /// 403: the caller's role lacks `permission`.
    pub fn forbidden(permission: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Permission missing",
            format!("this action requires the {permission} permission"),
        )
        .with("permission", json!(permission))
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

    /// 503: the database failed; nothing was changed.
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
