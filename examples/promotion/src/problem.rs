//! The service's own error answers: RFC 9457 `application/problem+json`,
//! each with a stable `type` under [`PROBLEM_BASE`].

use axum::http::StatusCode;
use example_support::problem::{database_unavailable, field_errors};

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/promotion/";

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
            "this is not an estimate id: estimate ids are E- and 1 to 19 digits",
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
            "this is not a work order id: work order ids are WO- and 1 to 19 digits",
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
            "another attempt took this promotion over; nothing of this attempt was kept. Retry to get its result",
        )
    }

    /// 401: the admin token is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Admin credentials required",
            "send Authorization: Bearer <PROMOTION_ADMIN_TOKEN>",
        )
    }

    /// 403: admin endpoints are off (no token configured).
    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "Admin endpoints are disabled",
            "start the service with PROMOTION_ADMIN_TOKEN set to enable them",
        )
    }

    /// 503: the database failed or timed out; nothing was changed.
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
            Self::unavailable("the database is unavailable; nothing was changed, retry later")
        } else {
            Self::internal("a database error occurred; nothing was changed")
        }
    }
}
