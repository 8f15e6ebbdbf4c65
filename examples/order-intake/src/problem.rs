//! The service's error answers: RFC 9457 `application/problem+json`, each
//! with a stable `type` under [`PROBLEM_BASE`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::Status;

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/order-intake/";

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
    /// Extension members.
    pub extra: Vec<(&'static str, Value)>,
    /// A `Location` header (the existing resource of a conflict).
    pub location: Option<String>,
}

impl ApiError {
    /// A problem of `status` with stable `slug` and `title`.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: Vec::new(),
            location: None,
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &'static str, value: Value) -> Self {
        self.extra.push((name, value));
        self
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
        let list: Vec<Value> = errors
            .iter()
            .map(|(pointer, detail)| json!({"pointer": pointer, "detail": detail}))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Request body failed validation",
            format!("{} field(s) failed validation", errors.len()),
        )
        .with("errors", Value::Array(list))
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
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable("the database is unavailable; nothing was changed, retry later")
            }
            _ => {
                tracing::error!(error = %e, "database error");
                Self::internal("a database error occurred; nothing was changed")
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
        if let Some(obj) = body.as_object_mut() {
            for (name, value) in self.extra {
                obj.insert(name.to_owned(), value);
            }
        }
        let mut res = (self.status, body.to_string()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(header::LOCATION, v);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}
