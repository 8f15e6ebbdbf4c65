//! The service's error answers: RFC 9457 `application/problem+json`,
//! each with a stable `type` under [`PROBLEM_BASE`].

use axum::http::StatusCode;
use example_support::problem::{database_unavailable, field_errors};

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/job-creation/";

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

    /// 400: `x-correlation-id` is not 1 to 128 visible ASCII characters, or
    /// is sent twice (the value is not echoed: it is unbounded).
    pub fn invalid_correlation_id() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-correlation-id",
            "Invalid x-correlation-id",
            "x-correlation-id must be one header of 1 to 128 visible ASCII characters",
        )
    }

    /// 413: the body is over the limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the body may be at most {limit} bytes"),
        )
    }

    /// 404: the path names no funnel: slugs are 1 to 63 of `a-z`, `0-9`
    /// and `-`, starting with a letter or digit.
    pub fn funnel_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "funnel-not-found",
            "Funnel not found",
            "this is not a funnel slug: 1 to 63 of a-z, 0-9 and -, starting with a letter or digit",
        )
    }

    /// 404: no such assessment in this funnel (or the id is not a UUID).
    pub fn assessment_not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "assessment-not-found",
            "Assessment not found",
            detail,
        )
    }

    /// 404: no such processing job (or the id is not a UUID).
    pub fn job_not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "processing-job-not-found",
            "Processing job not found",
            detail,
        )
    }

    /// 404: no route matches.
    pub fn no_route(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such route", detail)
    }

    /// 405: the path is routed, the method is not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not take this method",
        )
    }

    /// 503: the database failed or timed out.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "Database unavailable",
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
            Self::unavailable("the database is unavailable; retry later")
        } else {
            Self::internal("a database error occurred")
        }
    }
}
