//! The service's error answers: RFC 9457 `application/problem+json`,
//! each with a stable `type` under [`PROBLEM_BASE`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Base of the `type` URI of every problem the service answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/job-creation/";

/// An error answer of the service.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Last segment of the `type` URI.
    pub slug: &'static str,
    /// The problem's title (the same for every occurrence of the type).
    pub title: &'static str,
    /// What happened this time.
    pub detail: String,
    /// Extension members (`errors` for validation failures).
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        Self {
            status,
            slug,
            title,
            detail,
            extra: None,
        }
    }

    /// 400: the body is not JSON, or not a JSON object.
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "Request body is not valid JSON",
            detail.into(),
        )
    }

    /// 422: the body is JSON but breaks the rules; `errors` lists each
    /// broken rule as `{pointer, detail}`.
    pub fn validation(errors: Vec<(String, String)>) -> Self {
        let list: Vec<Value> = errors
            .iter()
            .map(|(pointer, detail)| json!({"pointer": pointer, "detail": detail}))
            .collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Request body failed validation",
            format!("{} field(s) failed validation", errors.len()),
        );
        e.extra = Some(("errors", Value::Array(list)));
        e
    }

    /// 400: `x-correlation-id` is not 1 to 128 visible ASCII characters, or
    /// is sent twice (the value is not echoed: it is unbounded).
    pub fn invalid_correlation_id() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-correlation-id",
            "Invalid x-correlation-id",
            "x-correlation-id must be one header of 1 to 128 visible ASCII characters".into(),
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
            "this is not a funnel slug: 1 to 63 of a-z, 0-9 and -, starting with a letter or digit"
                .into(),
        )
    }

    /// 404: no such assessment in this funnel (or the id is not a UUID).
    pub fn assessment_not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "assessment-not-found",
            "Assessment not found",
            detail.into(),
        )
    }

    /// 404: no such processing job (or the id is not a UUID).
    pub fn job_not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "processing-job-not-found",
            "Processing job not found",
            detail.into(),
        )
    }

    /// 404: no route matches.
    pub fn no_route(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such route",
            detail.into(),
        )
    }

    /// 405: the path is routed, the method is not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not take this method".into(),
        )
    }

    /// 503: the database failed or timed out.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "Database unavailable",
            detail.into(),
        )
    }

    /// 500: anything else (logged with its cause).
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail.into(),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable("the database is unavailable; retry later")
            }
            _ => {
                tracing::error!(error = %e, "database error");
                Self::internal("a database error occurred")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some((name, value)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.insert(name.to_owned(), value);
        }
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}
