//! Processing jobs: created once per (assessment, correlation id, schema
//! version) through the PostgreSQL natural-key primitive, their guarded
//! status transitions, their audit event, and the read endpoints.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use idempotency_audit::{Actor, AuditEvent};
use idempotency_postgres::natural::{Inserted, NaturalKey, NaturalKeyError};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, FromRow, Row};
use uuid::Uuid;

use crate::problem::ApiError;
use crate::{AppState, SCHEMA_VERSION};

/// The unique constraint that makes a job's creation idempotent.
pub const NATURAL_KEY: &str = "processing_jobs_assessment_correlation_version_unique";

/// Attempts a job gets (the story's default).
pub const MAX_ATTEMPTS: i32 = 3;

/// The audit event of a job's creation.
pub const CREATED_EVENT: &str = "processing_job.create";

/// The audit source of the service.
pub const SOURCE: &str = "/job-creation";

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a worker (new, or retrying after a failed attempt).
    Queued,
    /// A worker holds it.
    InProgress,
    /// Every stage ran.
    Completed,
    /// Attempts exhausted.
    Failed,
}

impl JobStatus {
    /// Its spelling in the database and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// The status spelled `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::InProgress,
            Self::Completed,
            Self::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Whether a job may go from `self` to `to`: queued → in progress →
    /// (queued | completed | failed); in progress → in progress is a new
    /// claim of an expired one. Completed and failed are final. The
    /// database's trigger enforces the same table for every writer.
    pub const fn may_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Queued, Self::InProgress)
                | (Self::InProgress, Self::InProgress)
                | (Self::InProgress, Self::Queued)
                | (Self::InProgress, Self::Completed)
                | (Self::InProgress, Self::Failed)
        )
    }
}

/// Why a status transition was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// The table of [`JobStatus::may_become`] forbids it.
    #[error("illegal processing job transition {} -> {}", from.as_str(), to.as_str())]
    Illegal {
        /// From.
        from: JobStatus,
        /// To.
        to: JobStatus,
    },
    /// The job was not in the expected state (or held by this claim) any more.
    #[error("the processing job is no longer {}", expected.as_str())]
    Stale {
        /// What the caller expected.
        expected: JobStatus,
    },
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A job's identity and state, as the completion answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The job.
    pub id: Uuid,
    /// Its status.
    pub status: String,
}

impl FromRow<'_, PgRow> for JobRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            status: row.try_get("status")?,
        })
    }
}

/// Finds or creates the job of `(assessment, correlation, v1)`.
///
/// With the `insert` fault armed every insert is sent with
/// `max_attempts = 0`, which the table's `CHECK` refuses: a real database
/// error that is not a conflict, so the primitive returns it at once.
pub(crate) async fn create(
    app: &AppState,
    assessment: Uuid,
    correlation: &str,
) -> Result<Inserted<JobRow>, NaturalKeyError> {
    let max_attempts = if app.faults.insert_fails() {
        0
    } else {
        MAX_ATTEMPTS
    };
    let (insert_sql, select_sql) = (app.sql.insert_job.clone(), app.sql.find_job.clone());
    let (c1, c2) = (correlation.to_owned(), correlation.to_owned());
    let key = NaturalKey::new(
        move || {
            sqlx::query_as::<_, JobRow>(AssertSqlSafe(insert_sql.clone()))
                .bind(Uuid::now_v7())
                .bind(assessment)
                .bind(c1.clone())
                .bind(SCHEMA_VERSION)
                .bind(max_attempts)
        },
        move || {
            sqlx::query_as::<_, JobRow>(AssertSqlSafe(select_sql.clone()))
                .bind(assessment)
                .bind(c2.clone())
                .bind(SCHEMA_VERSION)
        },
    )
    .constraint(NATURAL_KEY);
    let job = key
        .insert_or_get(&app.pool, app.isolation, app.retry)
        .await?;
    if let Inserted::Created(row) = &job {
        audit_creation(app, assessment, correlation, row.id);
        app.worker_wake.notify_one();
        metrics::counter!("processing_jobs_created_total").increment(1);
    }
    Ok(job)
}

/// Queues the creation's audit event: fire and forget, never waited for.
fn audit_creation(app: &AppState, assessment: Uuid, correlation: &str, job: Uuid) {
    let event = AuditEvent::builder(CREATED_EVENT, SOURCE)
        .subject(job.to_string())
        .actor(Actor::service("example-job-creation"))
        .correlation_id(correlation)
        .attribute("entity_type", "processing_job")
        .attribute("action", "create")
        .attribute("entity_id", job.to_string())
        .attribute(
            "metadata",
            json!({
                "assessment_id": assessment,
                "correlation_id": correlation,
                "job_id": job,
                "status_to": "queued",
            }),
        )
        .build();
    if !app.buffer.enqueue(event) {
        tracing::warn!(%assessment, %job, "audit event of the job's creation dropped");
    }
}

/// Moves the job held by claim `(worker, attempt)` from `from` to `to`
/// (keeping `error` as its last error; a job queued again becomes
/// claimable after `retry_after`), or refuses: an illegal transition before
/// anything is sent, a job no longer in `from` or no longer held by this
/// claim when the compare-and-set matches nothing.
///
/// # Errors
///
/// [`TransitionError`]; nothing was changed then.
pub(crate) async fn transition_state(
    app: &AppState,
    job: Uuid,
    claim: (&str, i32),
    (from, to): (JobStatus, JobStatus),
    error: Option<&str>,
    retry_after: std::time::Duration,
) -> Result<(), TransitionError> {
    if !from.may_become(to) {
        return Err(TransitionError::Illegal { from, to });
    }
    let done = sqlx::query(AssertSqlSafe(app.sql.transition.clone()))
        .bind(job)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(claim.0)
        .bind(claim.1)
        .bind(error)
        .bind(i64::try_from(retry_after.as_millis()).unwrap_or(i64::MAX))
        .execute(&app.pool)
        .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(TransitionError::Stale { expected: from })
    }
}

/// The JSON of a job row.
fn job_json(row: &PgRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "jobId": row.try_get::<Uuid, _>("id")?,
        "assessmentId": row.try_get::<Uuid, _>("assessment_id")?,
        "correlationId": row.try_get::<String, _>("correlation_id")?,
        "schemaVersion": row.try_get::<String, _>("schema_version")?,
        "status": row.try_get::<String, _>("status")?,
        "stage": row.try_get::<String, _>("stage")?,
        "attempt": row.try_get::<i32, _>("attempt")?,
        "maxAttempts": row.try_get::<i32, _>("max_attempts")?,
        "lastError": row.try_get::<Option<String>, _>("last_error")?,
        "createdAt": row.try_get::<String, _>("created_at")?,
        "updatedAt": row.try_get::<String, _>("updated_at")?,
        "completedAt": row.try_get::<Option<String>, _>("completed_at")?,
    }))
}

/// The story's success envelope around `data`.
pub(crate) fn envelope(data: Value) -> Value {
    json!({"success": true, "data": data, "schemaVersion": SCHEMA_VERSION})
}

/// One processing job.
#[utoipa::path(
    get,
    path = "/api/processing-jobs/{jobId}",
    tag = "processing-jobs",
    params(("jobId" = String, Path, description = "The job's UUID")),
    responses((status = 200, description = "The job", body = crate::openapi::JobEnvelope))
)]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = Uuid::parse_str(&job_id) else {
        return Err(ApiError::job_not_found(
            "this is not a processing job id: job ids are UUIDs",
        ));
    };
    let row = sqlx::query(AssertSqlSafe(app.sql.job_by_id.clone()))
        .bind(id)
        .fetch_optional(&app.pool)
        .await?;
    match row {
        Some(row) => Ok(axum::Json(envelope(job_json(&row)?)).into_response()),
        None => Err(ApiError::job_not_found(format!(
            "there is no processing job {id}"
        ))),
    }
}

/// The processing jobs of an assessment, oldest first.
#[utoipa::path(
    get,
    path = "/api/assessments/{assessmentId}/processing-jobs",
    tag = "processing-jobs",
    params(("assessmentId" = String, Path, description = "The assessment's UUID")),
    responses((status = 200, description = "The assessment's jobs", body = crate::openapi::JobListEnvelope))
)]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path(assessment_id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = Uuid::parse_str(&assessment_id) else {
        return Err(ApiError::assessment_not_found(
            "this is not an assessment id: assessment ids are UUIDs",
        ));
    };
    let exists: bool = sqlx::query_scalar(AssertSqlSafe(app.sql.assessment_exists.clone()))
        .bind(id)
        .fetch_one(&app.pool)
        .await?;
    if !exists {
        return Err(ApiError::assessment_not_found(format!(
            "there is no assessment {id}"
        )));
    }
    let rows = sqlx::query(AssertSqlSafe(app.sql.jobs_of_assessment.clone()))
        .bind(id)
        .fetch_all(&app.pool)
        .await?;
    let jobs = rows.iter().map(job_json).collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(envelope(
        json!({"assessmentId": id, "processingJobs": jobs}),
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_machine() {
        use JobStatus::*;
        let all = [Queued, InProgress, Completed, Failed];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Queued, InProgress),
                (InProgress, Queued),
                (InProgress, InProgress),
                (InProgress, Completed),
                (InProgress, Failed),
            ]
        );
        for s in all {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}
