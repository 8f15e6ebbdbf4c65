//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.
//!
//! The handlers build their JSON with `json!`; the body types here are its
//! schema.

use axum::http::StatusCode;
use example_support::openapi::Catalog;
pub use example_support::openapi::{FieldError, Problem, ValidationProblem};
use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::problem::PROBLEM_BASE;
use crate::{assessments, jobs};

/// The service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "example-job-creation",
        description = "Completing an assessment creates exactly one processing job. Every \
                       answer carries `x-request-id`; every error is \
                       `application/problem+json` (RFC 9457) with a stable `type`."
    ),
    paths(
        assessments::create,
        assessments::complete,
        jobs::get,
        jobs::list,
        crate::healthz,
        crate::readyz,
        crate::render_metrics,
        openapi_json,
        docs_page,
        docs_asset,
    ),
    components(schemas(
        Problem,
        ValidationProblem,
        FieldError,
        StartAssessment,
        Assessment,
        AssessmentEnvelope,
        JobRef,
        Completion,
        CompletionEnvelope,
        Job,
        JobEnvelope,
        JobList,
        JobListEnvelope,
    )),
    modifiers(&Problems),
    tags(
        (name = "assessments", description = "Assessments and their completion"),
        (name = "processing-jobs", description = "The jobs completions create"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document and its interactive page"),
    )
)]
pub struct ApiDoc;

/// The body of `POST /api/funnels/{slug}/assessments`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartAssessment {
    /// 1 to 200 characters, not blank, no control characters.
    pub patient_id: String,
}

/// A started assessment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    /// A UUID.
    pub assessment_id: String,
    /// The funnel's slug.
    pub funnel: String,
    /// `in_progress`.
    pub status: String,
}

/// `{"success": true, "data": Assessment, "schemaVersion": "v1"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssessmentEnvelope {
    /// `true`.
    pub success: bool,
    /// The assessment.
    pub data: Assessment,
    /// `v1`.
    pub schema_version: String,
}

/// The job a completion created or found.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// A UUID.
    pub job_id: String,
    /// `queued`, `in_progress`, `completed` or `failed`.
    pub status: String,
}

/// A completion's result.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Completion {
    /// The assessment.
    pub assessment_id: String,
    /// `completed`.
    pub status: String,
    /// `Assessment wurde bereits abgeschlossen.` when it was completed before.
    pub message: Option<String>,
    /// Omitted when the job could not be created (the next completion creates it).
    pub processing_job: Option<JobRef>,
}

/// `{"success": true, "data": Completion, "schemaVersion": "v1"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompletionEnvelope {
    /// `true`.
    pub success: bool,
    /// The completion.
    pub data: Completion,
    /// `v1`.
    pub schema_version: String,
}

/// A processing job.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// A UUID.
    pub job_id: String,
    /// Its assessment.
    pub assessment_id: String,
    /// Fixed by the assessment's first completion.
    pub correlation_id: String,
    /// `v1`.
    pub schema_version: String,
    /// `queued`, `in_progress`, `completed` or `failed`.
    pub status: String,
    /// `pending`, `risk`, `ranking`, `report` or `done`.
    pub stage: String,
    /// Claims so far.
    pub attempt: i32,
    /// 3.
    pub max_attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, once completed.
    pub completed_at: Option<String>,
}

/// `{"success": true, "data": Job, "schemaVersion": "v1"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobEnvelope {
    /// `true`.
    pub success: bool,
    /// The job.
    pub data: Job,
    /// `v1`.
    pub schema_version: String,
}

/// An assessment's jobs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    /// The assessment.
    pub assessment_id: String,
    /// Oldest first.
    pub processing_jobs: Vec<Job>,
}

/// `{"success": true, "data": JobList, "schemaVersion": "v1"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobListEnvelope {
    /// `true`.
    pub success: bool,
    /// The list.
    pub data: JobList,
    /// `v1`.
    pub schema_version: String,
}

/// Every problem type the service answers: `(slug, status, title)`. A test
/// checks it against the slugs of [`ApiError`](crate::problem::ApiError)'s constructors.
pub const PROBLEM_TYPES: [(&str, StatusCode, &str); 11] = [
    (
        "invalid-json",
        StatusCode::BAD_REQUEST,
        "Request body is not valid JSON",
    ),
    (
        "invalid-correlation-id",
        StatusCode::BAD_REQUEST,
        "Invalid x-correlation-id",
    ),
    ("not-found", StatusCode::NOT_FOUND, "No such route"),
    (
        "funnel-not-found",
        StatusCode::NOT_FOUND,
        "Funnel not found",
    ),
    (
        "assessment-not-found",
        StatusCode::NOT_FOUND,
        "Assessment not found",
    ),
    (
        "processing-job-not-found",
        StatusCode::NOT_FOUND,
        "Processing job not found",
    ),
    (
        "method-not-allowed",
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
    ),
    (
        "body-too-large",
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
    ),
    (
        "validation-failed",
        StatusCode::UNPROCESSABLE_ENTITY,
        "Request body failed validation",
    ),
    (
        "internal",
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
    ),
    (
        "database-unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
    ),
];

/// The problems each operation may answer, by slug: `(method, path, slugs)`.
/// Each of them but `/docs/{file}` also answers `internal` (500) and
/// `database-unavailable` (503, `Retry-After`).
const OPERATION_PROBLEMS: &[(&str, &str, &[&str])] = &[
    (
        "post",
        "/api/funnels/{slug}/assessments",
        &[
            "invalid-json",
            "validation-failed",
            "body-too-large",
            "funnel-not-found",
        ],
    ),
    (
        "post",
        "/api/funnels/{slug}/assessments/{assessmentId}/complete",
        &[
            "invalid-correlation-id",
            "funnel-not-found",
            "assessment-not-found",
        ],
    ),
    (
        "get",
        "/api/processing-jobs/{jobId}",
        &["processing-job-not-found"],
    ),
    (
        "get",
        "/api/assessments/{assessmentId}/processing-jobs",
        &["assessment-not-found"],
    ),
    ("get", "/readyz", &[]),
    // Also what any unrouted path answers, and a routed one with another
    // method.
    ("get", "/docs/{file}", &["not-found", "method-not-allowed"]),
];

/// The service's problems per operation and `x-request-id` on every answer.
static CATALOG: Catalog = Catalog {
    base: PROBLEM_BASE,
    types: &PROBLEM_TYPES,
    operations: OPERATION_PROBLEMS,
    common: &["internal", "database-unavailable"],
    idempotent: &[],
    request_id: "The request's id: the client's (1 to 128 visible ASCII characters) or a new UUIDv7",
};

/// Applies [`CATALOG`].
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        CATALOG.apply(openapi);
    }
}

example_support::docs_endpoints!(ApiDoc, Problem, under PROBLEM_BASE, missing "not-found", "`not-found`");
