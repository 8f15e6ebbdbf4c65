//! The service's error answers: RFC 9457 `application/problem+json`, each
//! with a stable `type` under [`PROBLEM_BASE`].

use axum::http::StatusCode;
use example_support::problem::{database_unavailable, field_errors};
use serde_json::json;

/// Base of the `type` URI of every problem the service itself answers.
pub const PROBLEM_BASE: &str = "https://idempotency.rs/problems/staging/";

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

    /// 422: the request breaks the rules; `errors` lists `{pointer, detail}`.
    pub fn validation(errors: Vec<(String, String)>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Request failed validation",
            format!("{} field(s) failed validation", errors.len()),
        )
        .with("errors", field_errors(&errors))
    }

    /// 400: the upload is not `multipart/form-data` with one `file` field.
    pub fn invalid_upload(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-upload",
            "Upload is not a multipart form with a file",
            detail,
        )
    }

    /// 413: the file is over `STAGING_MAX_UPLOAD_BYTES`.
    pub fn upload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload-too-large",
            "Upload too large",
            format!("the file may be at most {limit} bytes"),
        )
    }

    /// 409: the idempotency key was used with another file; recorded.
    pub fn key_reused(existing_job: uuid::Uuid) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency-key-reused",
            "Idempotency key reused with another file",
            format!(
                "this idempotency_key was used for another file (ingestion job {existing_job}); \
                 the conflict is recorded and nothing was ingested"
            ),
        )
        .with("existing_job_id", json!(existing_job))
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

    /// 409: the transition is not allowed from the export's state.
    pub fn illegal_transition(from: &str, to: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "illegal-transition",
            "Transition not allowed",
            format!("a staged export cannot go from {from} to {to}"),
        )
        .with("from", json!(from))
        .with("to", json!(to))
    }

    /// 409: the export's quality score is under the threshold.
    pub fn quality_too_low(score: i32, threshold: i32) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "quality-below-threshold",
            "Quality below the approval threshold",
            format!(
                "the export's quality score is {score}, under {threshold}: correct its data \
                 (approved_data) before approving"
            ),
        )
    }

    /// 403: segregation of duties.
    pub fn segregation_of_duties(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "segregation-of-duties",
            "Segregation of duties",
            detail,
        )
    }

    /// 403: rollback is disabled (`STAGING_ENABLE_ROLLBACK=false`).
    pub fn rollback_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "rollback-disabled",
            "Rollback is disabled",
            "start the service with STAGING_ENABLE_ROLLBACK=true to roll postings back",
        )
    }

    /// 409: the same action is being executed now.
    pub fn in_flight(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "in-flight",
            "Action already in progress",
            "the same action on this export is being executed; retry shortly",
        );
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// 502: the destination system refused or did not answer.
    pub fn destination_failed(code: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "destination-failed",
            "Destination system failed",
            detail,
        )
        .with("error_code", json!(code))
    }

    /// 503: the database failed or timed out; nothing was changed.
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
