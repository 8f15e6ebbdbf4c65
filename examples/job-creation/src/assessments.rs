//! The assessment endpoints: a fixture to start one, and the story's
//! completion, which creates the assessment's one processing job.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idempotency_tower::{X_REQUEST_ID, is_acceptable_request_id};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::jobs::{self, envelope};
use crate::problem::ApiError;
use crate::{AppState, MAX_BODY};

/// The header a client may name the correlation with.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The story's answer to a completion of a completed assessment.
pub const ALREADY_COMPLETED: &str = "Assessment wurde bereits abgeschlossen.";

/// Longest `patientId`, in characters.
const MAX_PATIENT_ID: usize = 200;

/// Whether `slug` names a funnel: 1 to 63 of `a-z`, `0-9`, `-`, starting
/// with a letter or digit.
pub fn is_funnel_slug(slug: &str) -> bool {
    (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && slug.as_bytes()[0] != b'-'
}

/// The `{slug}` and `{assessmentId}` path parameters, both checked: a path
/// that names no assessment is 404 before anything is looked up.
fn assessment_path(slug: &str, id: &str) -> Result<Uuid, ApiError> {
    if !is_funnel_slug(slug) {
        return Err(ApiError::funnel_not_found());
    }
    Uuid::parse_str(id).map_err(|_| {
        ApiError::assessment_not_found("this is not an assessment id: assessment ids are UUIDs")
    })
}

/// The correlation id this request offers: its `x-correlation-id` (one
/// header, 1 to 128 visible ASCII characters), else its `x-request-id`
/// (the client's, or the one the request-id layer generated).
///
/// # Errors
///
/// [`ApiError::invalid_correlation_id`] for an unacceptable `x-correlation-id`.
pub fn offered_correlation(headers: &HeaderMap) -> Result<String, ApiError> {
    let mut given = headers.get_all(X_CORRELATION_ID).iter();
    match (given.next(), given.next()) {
        (Some(v), None) if is_acceptable_request_id(v) => {
            return Ok(v.to_str().unwrap_or_default().to_owned());
        }
        (None, _) => {}
        _ => return Err(ApiError::invalid_correlation_id()),
    }
    match headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Ok(Uuid::now_v7().to_string()),
    }
}

/// Starts an assessment of the funnel (a fixture, so the flow can be tried).
#[utoipa::path(
    post,
    path = "/api/funnels/{slug}/assessments",
    tag = "assessments",
    params(("slug" = String, Path, description = "The funnel: 1 to 63 of `a-z`, `0-9`, `-`")),
    request_body(content = crate::openapi::StartAssessment, content_type = "application/json"),
    responses((status = 201, description = "The assessment, in progress", body = crate::openapi::AssessmentEnvelope))
)]
pub(crate) async fn create(
    State(app): State<AppState>,
    Path(slug): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !is_funnel_slug(&slug) {
        return Err(ApiError::funnel_not_found());
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(MAX_BODY)
        } else {
            ApiError::invalid_json("the body could not be read")
        }
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_json(format!("the body is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    };
    let patient = match obj.get("patientId") {
        Some(Value::String(p))
            if !p.trim().is_empty()
                && p.chars().count() <= MAX_PATIENT_ID
                && !p.chars().any(char::is_control) =>
        {
            p.clone()
        }
        Some(_) => {
            return Err(ApiError::validation(vec![(
                "/patientId".into(),
                format!(
                    "must be a non-blank string of at most {MAX_PATIENT_ID} characters, without control characters"
                ),
            )]));
        }
        None => {
            return Err(ApiError::validation(vec![(
                "/patientId".into(),
                "is required".into(),
            )]));
        }
    };
    let id = Uuid::now_v7();
    sqlx::query(AssertSqlSafe(app.sql.create_assessment.clone()))
        .bind(id)
        .bind(&slug)
        .bind(&patient)
        .execute(&app.pool)
        .await?;
    let data = json!({"assessmentId": id, "funnel": slug, "status": "in_progress"});
    Ok((StatusCode::CREATED, axum::Json(envelope(data))).into_response())
}

/// Completes the assessment (once) and creates its processing job (once).
///
/// The first completion sets `status`, `completed_at` and the correlation
/// id (its `x-correlation-id`, else its `x-request-id`); every later one
/// changes nothing, answers the same success with the story's message, and
/// reuses the stored correlation id whatever its own headers, so retries
/// find the one job. When the job cannot be created, the completion still
/// succeeds without `processingJob`; the next completion creates it.
#[utoipa::path(
    post,
    path = "/api/funnels/{slug}/assessments/{assessmentId}/complete",
    tag = "assessments",
    params(
        ("slug" = String, Path, description = "The assessment's funnel"),
        ("assessmentId" = String, Path, description = "The assessment's UUID"),
        ("x-correlation-id" = Option<String>, Header, description = "1 to 128 visible ASCII characters; used by the first completion only (else its `x-request-id`)"),
    ),
    responses((status = 200, description = "Completed (now or before); `processingJob` is omitted when the job could not be created", body = crate::openapi::CompletionEnvelope,
        headers(("x-correlation-id" = String, description = "The assessment's correlation id, fixed by its first completion"))))
)]
pub(crate) async fn complete(
    State(app): State<AppState>,
    Path((slug, assessment_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = assessment_path(&slug, &assessment_id)?;
    let offered = offered_correlation(&headers)?;
    let first: Option<String> = sqlx::query_scalar(AssertSqlSafe(app.sql.complete.clone()))
        .bind(id)
        .bind(&slug)
        .bind(&offered)
        .fetch_optional(&app.pool)
        .await?;
    let (correlation, already) = match first {
        Some(c) => (c, false),
        None => {
            let row = sqlx::query(AssertSqlSafe(app.sql.assessment.clone()))
                .bind(id)
                .bind(&slug)
                .fetch_optional(&app.pool)
                .await?;
            let Some(row) = row else {
                return Err(ApiError::assessment_not_found(format!(
                    "funnel {slug} has no assessment {id}"
                )));
            };
            let status: String = row.try_get("status")?;
            let correlation: Option<String> = row.try_get("correlation_id")?;
            match (status.as_str(), correlation) {
                ("completed", Some(c)) => (c, true),
                _ => {
                    tracing::error!(%id, status, "assessment neither completed nor completable");
                    return Err(ApiError::internal("the assessment could not be completed"));
                }
            }
        }
    };
    let mut data = json!({"assessmentId": id, "status": "completed"});
    if already {
        data["message"] = json!(ALREADY_COMPLETED);
    }
    match jobs::create(&app, id, &correlation).await {
        Ok(job) => {
            let job = job.into_inner();
            data["processingJob"] = json!({"jobId": job.id, "status": job.status});
        }
        Err(e) => {
            app.faults.count_creation_failure();
            metrics::counter!("processing_job_creation_failed_total").increment(1);
            tracing::error!(
                assessment_id = %id,
                correlation_id = %correlation,
                error = %e,
                code = e.code().as_deref().unwrap_or("-"),
                "processing job not created; the completion succeeds without it"
            );
        }
    }
    let mut res = axum::Json(envelope(data)).into_response();
    if let Ok(v) = HeaderValue::from_str(&correlation) {
        res.headers_mut().insert(X_CORRELATION_ID, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_slugs() {
        for ok in ["stress", "sleep-2", "a", &"a".repeat(63)] {
            assert!(is_funnel_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a b", "ä", &"a".repeat(64)] {
            assert!(!is_funnel_slug(bad), "{bad}");
        }
    }

    #[test]
    fn the_offered_correlation() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(offered_correlation(&h).unwrap(), "req-1");
        h.insert(X_CORRELATION_ID, HeaderValue::from_static("corr-1"));
        assert_eq!(offered_correlation(&h).unwrap(), "corr-1");
        h.append(X_CORRELATION_ID, HeaderValue::from_static("corr-2"));
        assert_eq!(
            offered_correlation(&h).unwrap_err().slug,
            "invalid-correlation-id"
        );
        let mut h = HeaderMap::new();
        h.insert(X_CORRELATION_ID, HeaderValue::from_static("has space"));
        assert!(offered_correlation(&h).is_err());
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        h.insert(X_CORRELATION_ID, long);
        assert!(offered_correlation(&h).is_err());
        assert!(!offered_correlation(&HeaderMap::new()).unwrap().is_empty());
    }
}
