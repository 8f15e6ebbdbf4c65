//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.
//!
//! The handlers build their JSON with `json!`; the body types here are its
//! schema.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use example_support::docs;
use serde::Serialize;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::problem::{ApiError, PROBLEM_BASE};
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

/// A problem+json body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `https://idempotency.rs/problems/job-creation/{slug}`.
    #[schema(example = "https://idempotency.rs/problems/job-creation/assessment-not-found")]
    pub r#type: String,
    /// The same for every occurrence of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// This occurrence.
    pub detail: String,
}

/// `validation-failed`: a problem with the broken rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationProblem {
    /// `https://idempotency.rs/problems/job-creation/validation-failed`.
    pub r#type: String,
    /// `Request body failed validation`.
    pub title: String,
    /// 422.
    pub status: u16,
    /// How many fields failed.
    pub detail: String,
    /// Each broken rule.
    pub errors: Vec<FieldError>,
}

/// One broken rule of a body.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer of the field, e.g. `/patientId`.
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}

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
/// checks it against the slugs of [`ApiError`]'s constructors.
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

/// Adds each operation's problem answers (one example per type) and
/// `x-request-id` on every answer.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [("get", item.get.as_mut()), ("post", item.post.as_mut())];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let responses = &mut op.responses.responses;
                if let Some((_, _, slugs)) = OPERATION_PROBLEMS
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                {
                    let common: &[&str] = if path.starts_with("/docs") {
                        &[]
                    } else {
                        &["internal", "database-unavailable"]
                    };
                    for slug in slugs.iter().chain(common) {
                        let (slug, status, title) = PROBLEM_TYPES
                            .iter()
                            .find(|(s, _, _)| s == slug)
                            .expect("a listed problem type");
                        add_problem(responses, *status, slug, title);
                    }
                }
                for response in responses.values_mut() {
                    if let RefOr::T(r) = response {
                        r.headers.insert(
                            "x-request-id".to_owned(),
                            HeaderBuilder::new()
                                .schema(ObjectBuilder::new().schema_type(Type::String))
                                .description(Some(
                                    "The request's id: the client's (1 to 128 visible ASCII characters) or a new UUIDv7",
                                ))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// Adds a problem example to the response of `status`.
fn add_problem(
    responses: &mut BTreeMap<String, RefOr<utoipa::openapi::Response>>,
    status: StatusCode,
    slug: &str,
    title: &str,
) {
    let uri = format!("{PROBLEM_BASE}{slug}");
    let entry = responses
        .entry(status.as_u16().to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(status.canonical_reason().unwrap_or("Error"))
                    .build(),
            )
        });
    let RefOr::T(response) = entry else { return };
    response
        .description
        .push_str(&format!("\n\n`{uri}`: {title}"));
    let schema = if slug == "validation-failed" {
        "ValidationProblem"
    } else {
        "Problem"
    };
    let content = response
        .content
        .entry("application/problem+json".to_owned())
        .or_insert_with(|| {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build()
        });
    content.examples.insert(
        slug.to_owned(),
        RefOr::T(
            ExampleBuilder::new()
                .summary(title)
                .value(Some(serde_json::json!({
                    "type": uri,
                    "title": title,
                    "status": status.as_u16(),
                    "detail": title,
                })))
                .build(),
        ),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers.insert(
            "Retry-After".to_owned(),
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
}

/// The document, rendered once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The OpenAPI document of this service.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> Response {
    docs::document(DOCUMENT.as_str())
}

/// The interactive page (Swagger UI) over `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    responses((status = 200, description = "Swagger UI; its assets are under `/docs/`", content_type = "text/html", body = String))
)]
pub(crate) async fn docs_page() -> Response {
    docs::page().unwrap_or_else(|| ApiError::internal("no Swagger UI page").into_response())
}

/// An asset of the Swagger UI page, from the binary.
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "docs",
    params(("file" = String, Path, description = "An asset name, e.g. `swagger-ui.css`")),
    responses((status = 200, description = "The asset (CSS, JavaScript or an image)"))
)]
pub(crate) async fn docs_asset(Path(file): Path<String>) -> Response {
    docs::asset(&file)
        .unwrap_or_else(|| ApiError::no_route("no such Swagger UI asset").into_response())
}
