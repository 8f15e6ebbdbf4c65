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
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::problem::PROBLEM_BASE;
use crate::{estimates, promote};

/// The service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "example-promotion",
        description = "Promote an estimate snapshot to exactly one work order. Every answer \
                       carries `x-request-id`; every error is `application/problem+json` \
                       (RFC 9457) with a stable `type`."
    ),
    paths(
        estimates::create,
        estimates::get,
        estimates::finalize,
        estimates::revise,
        promote::promote,
        crate::work_order,
        crate::list_promotions,
        crate::resolve,
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
        estimates::Line,
        CreateEstimate,
        ReviseEstimate,
        EstimateCreated,
        Snapshot,
        Estimate,
        EstimateSnapshot,
        Promotion,
        WorkOrder,
        PromotionRecords,
        PromotionRecord,
        Resolve,
        Resolved,
    )),
    modifiers(&AdminAuth, &Problems),
    tags(
        (name = "estimates", description = "Estimates and their snapshots"),
        (name = "promotion", description = "Exactly one work order per snapshot"),
        (name = "admin", description = "Operator endpoints"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document and its interactive page"),
    )
)]
pub struct ApiDoc;

/// The body of `POST /estimates`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreateEstimate {
    /// The customer.
    pub customer_id: String,
    /// 1 to 200 lines.
    pub lines: Vec<estimates::Line>,
}

/// The body of `POST /estimates/{estimate_id}/revise` (optional: empty
/// keeps the current lines).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviseEstimate {
    /// 1 to 200 lines.
    pub lines: Vec<estimates::Line>,
}

/// A snapshot's id and status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    /// `E-` and digits.
    pub estimate_id: String,
    /// From 1.
    pub snapshot_version: i32,
    /// `DRAFT`, `FINALIZED` or `SUPERSEDED`.
    pub status: String,
}

/// A new snapshot (`POST /estimates`, `POST .../revise`).
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateCreated {
    /// `E-` and digits.
    pub estimate_id: String,
    /// From 1.
    pub snapshot_version: i32,
    /// `DRAFT`.
    pub status: String,
    /// The sum of the lines.
    pub total_cents: i64,
    /// Only on `POST /estimates`.
    pub customer_id: Option<String>,
}

/// An estimate and every snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct Estimate {
    /// `E-` and digits.
    pub estimate_id: String,
    /// The customer.
    pub customer_id: String,
    /// The current snapshot.
    pub current_version: i32,
    /// Every snapshot.
    pub snapshots: Vec<EstimateSnapshot>,
}

/// One snapshot of an estimate.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateSnapshot {
    /// From 1.
    pub snapshot_version: i32,
    /// `DRAFT`, `FINALIZED` or `SUPERSEDED`.
    pub status: String,
    /// The sum of the lines.
    pub total_cents: i64,
    /// The lines.
    pub lines: Vec<estimates::Line>,
}

/// The result of a promotion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Promotion {
    /// The promotion record.
    #[schema(value_type = String, example = "0199a6b2-7c1e-7d4a-9b1f-2f0c3e4d5a6b")]
    pub promotion_id: uuid::Uuid,
    /// `E-` and digits.
    pub estimate_id: String,
    /// The promoted snapshot.
    pub snapshot_version: i32,
    /// `WO-` and digits.
    pub workorder_id: String,
    /// `COMPLETED`.
    pub status: String,
}

/// A work order.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkOrder {
    /// `WO-` and digits.
    pub workorder_id: String,
    /// `E-` and digits.
    pub estimate_id: String,
    /// The promoted snapshot.
    pub snapshot_version: i32,
    /// The customer.
    pub customer_id: String,
    /// The total of the snapshot.
    pub total_cents: i64,
    /// The work order's status.
    pub status: String,
}

/// An estimate's promotion records.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionRecords {
    /// `E-` and digits.
    pub estimate_id: String,
    /// One per promoted snapshot.
    pub promotions: Vec<PromotionRecord>,
}

/// A promotion record and its idempotency record's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionRecord {
    /// The promotion record.
    #[schema(value_type = String, example = "0199a6b2-7c1e-7d4a-9b1f-2f0c3e4d5a6b")]
    pub promotion_id: uuid::Uuid,
    /// The snapshot.
    pub snapshot_version: i32,
    /// `WO-` and digits, when linked.
    pub workorder_id: Option<String>,
    /// `PENDING`, `COMPLETED`, `FAILED`, `CORRUPTED` or `EXPIRED`.
    pub status: String,
    /// Attempts so far.
    pub attempts: Option<u32>,
    /// The record's fence.
    pub fence: Option<u64>,
    /// Why it failed or is corrupted.
    pub detail: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// The body of the resolve endpoint (optional).
#[derive(Debug, Serialize, ToSchema)]
pub struct Resolve {
    /// Why the operator clears the record (audited).
    pub reason: Option<String>,
}

/// A resolved record: now `FAILED` with no work order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resolved {
    /// `E-` and digits.
    pub estimate_id: String,
    /// The snapshot.
    pub snapshot_version: i32,
    /// Always `null`.
    pub workorder_id: Option<String>,
    /// `FAILED`.
    pub status: String,
    /// Attempts so far.
    pub attempts: Option<u32>,
    /// The record's fence.
    pub fence: Option<u64>,
    /// The failure reason.
    pub detail: Option<String>,
}

/// Every problem type the service itself answers: `(slug, status, title)`.
/// A test checks it against the slugs of [`ApiError`](crate::problem::ApiError)'s constructors.
pub const PROBLEM_TYPES: [(&str, StatusCode, &str); 16] = [
    (
        "invalid-json",
        StatusCode::BAD_REQUEST,
        "Request body is not valid JSON",
    ),
    (
        "missing-parameter",
        StatusCode::BAD_REQUEST,
        "A required query parameter is missing",
    ),
    (
        "unauthorized",
        StatusCode::UNAUTHORIZED,
        "Admin credentials required",
    ),
    (
        "admin-disabled",
        StatusCode::FORBIDDEN,
        "Admin endpoints are disabled",
    ),
    ("not-found", StatusCode::NOT_FOUND, "No such route"),
    (
        "estimate-not-found",
        StatusCode::NOT_FOUND,
        "Estimate not found",
    ),
    (
        "snapshot-not-found",
        StatusCode::NOT_FOUND,
        "Estimate snapshot not found",
    ),
    (
        "work-order-not-found",
        StatusCode::NOT_FOUND,
        "Work order not found",
    ),
    (
        "promotion-not-found",
        StatusCode::NOT_FOUND,
        "Promotion record not found",
    ),
    (
        "snapshot-not-draft",
        StatusCode::CONFLICT,
        "Estimate snapshot is not a draft",
    ),
    (
        "promotion-not-corrupted",
        StatusCode::CONFLICT,
        "Promotion record is not corrupted",
    ),
    (
        "promotion-superseded",
        StatusCode::CONFLICT,
        "Promotion attempt was superseded",
    ),
    (
        "validation-failed",
        StatusCode::UNPROCESSABLE_ENTITY,
        "Request body failed validation",
    ),
    (
        "snapshot-not-finalized",
        StatusCode::UNPROCESSABLE_ENTITY,
        "Estimate snapshot is not finalized",
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
    ("post", "/estimates", &["invalid-json", "validation-failed"]),
    ("get", "/estimates/{estimate_id}", &["estimate-not-found"]),
    (
        "post",
        "/estimates/{estimate_id}/finalize",
        &["estimate-not-found", "snapshot-not-draft"],
    ),
    (
        "post",
        "/estimates/{estimate_id}/revise",
        &["invalid-json", "validation-failed", "estimate-not-found"],
    ),
    (
        "post",
        "/estimates/{estimate_id}/snapshots/{snapshot_version}/promote",
        &[
            "estimate-not-found",
            "snapshot-not-found",
            "snapshot-not-finalized",
            "promotion-superseded",
        ],
    ),
    ("get", "/work-orders/{id}", &["work-order-not-found"]),
    (
        "get",
        "/promotions",
        &["missing-parameter", "estimate-not-found"],
    ),
    (
        "post",
        "/admin/promotions/{estimate_id}/{snapshot_version}/resolve",
        &[
            "invalid-json",
            "unauthorized",
            "admin-disabled",
            "estimate-not-found",
            "snapshot-not-found",
            "promotion-not-found",
            "promotion-not-corrupted",
        ],
    ),
    ("get", "/readyz", &[]),
    // Also what any unrouted method and path answers.
    ("get", "/docs/{file}", &["not-found"]),
];

/// `Authorization: Bearer $PROMOTION_ADMIN_TOKEN`.
struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "admin",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("`PROMOTION_ADMIN_TOKEN`"))
                        .build(),
                ),
            );
    }
}

/// The service's problems per operation, the idempotency layer's on the
/// promotion route, `x-request-id` on every answer.
static CATALOG: Catalog = Catalog {
    base: PROBLEM_BASE,
    types: &PROBLEM_TYPES,
    operations: OPERATION_PROBLEMS,
    common: &["internal", "database-unavailable"],
    idempotent: &["/estimates/{estimate_id}/snapshots/{snapshot_version}/promote"],
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
