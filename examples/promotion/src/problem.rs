//! The service's own error answers: RFC 9457 `application/problem+json`,
//! each with a stable `type` under [`PROBLEM_BASE`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/promotion/";

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

    /// 400: a required query parameter is missing or empty.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "missing-parameter",
            "A required query parameter is missing",
            format!("the query parameter {name} is required"),
        )
    }

    /// 404: no such estimate.
    pub fn estimate_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "estimate-not-found",
            "Estimate not found",
            format!("there is no estimate {id}"),
        )
    }

    /// 404: the path names no estimate: estimate ids are `E-` and 1 to 19
    /// digits (the offending value is not echoed: it is unbounded).
    pub fn not_an_estimate_id() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "estimate-not-found",
            "Estimate not found",
            "this is not an estimate id: estimate ids are E- and 1 to 19 digits".into(),
        )
    }

    /// 404: the path names no snapshot version of `id`: versions are whole
    /// numbers from 1 to 2147483647 without sign or leading zeros.
    pub fn not_a_snapshot_version(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "snapshot-not-found",
            "Estimate snapshot not found",
            format!(
                "estimate {id} has no such snapshot version: versions are whole numbers \
                 from 1 to 2147483647, without sign or leading zeros"
            ),
        )
    }

    /// 404: the estimate has no such snapshot version.
    pub fn snapshot_not_found(id: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "snapshot-not-found",
            "Estimate snapshot not found",
            format!("estimate {id} has no snapshot version {version}"),
        )
    }

    /// 422: the snapshot is not finalized, so it cannot be promoted.
    pub fn snapshot_not_finalized(id: &str, version: i32, status: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "snapshot-not-finalized",
            "Estimate snapshot is not finalized",
            format!(
                "snapshot {version} of estimate {id} is {status}; only a FINALIZED snapshot can be promoted"
            ),
        )
    }

    /// 409: the estimate's current snapshot is not a draft.
    pub fn snapshot_not_draft(id: &str, version: i32, status: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "snapshot-not-draft",
            "Estimate snapshot is not a draft",
            format!("snapshot {version} of estimate {id} is {status}"),
        )
    }

    /// 404: the path names no work order: ids are `WO-` and 1 to 19 digits.
    pub fn not_a_work_order_id() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "work-order-not-found",
            "Work order not found",
            "this is not a work order id: work order ids are WO- and 1 to 19 digits".into(),
        )
    }

    /// 404: no such work order.
    pub fn work_order_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "work-order-not-found",
            "Work order not found",
            format!("there is no work order {id}"),
        )
    }

    /// 404: no promotion record for this snapshot.
    pub fn promotion_not_found(id: &str, version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "promotion-not-found",
            "Promotion record not found",
            format!("snapshot {version} of estimate {id} has no promotion record"),
        )
    }

    /// 409: an operator resolution was asked for a record that is not corrupted.
    pub fn not_corrupted(state: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "promotion-not-corrupted",
            "Promotion record is not corrupted",
            format!("the promotion record is {state}; only a CORRUPTED record can be resolved"),
        )
    }

    /// 409: this attempt lost its lease (another attempt took the promotion
    /// over); nothing of it was kept.
    pub fn superseded() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "promotion-superseded",
            "Promotion attempt was superseded",
            "another attempt took this promotion over; nothing of this attempt was kept. Retry to get its result".into(),
        )
    }

    /// 401: the admin token is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Admin credentials required",
            "send Authorization: Bearer <PROMOTION_ADMIN_TOKEN>".into(),
        )
    }

    /// 403: admin endpoints are off (no token configured).
    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "Admin endpoints are disabled",
            "start the service with PROMOTION_ADMIN_TOKEN set to enable them".into(),
        )
    }

    /// 503: the database failed or timed out; nothing was changed.
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
        if let (Some((name, value)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.insert(name.to_owned(), value);
        }
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}
