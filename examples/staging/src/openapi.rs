//! The OpenAPI 3.1 document (`/openapi.json`) and its Swagger UI (`/docs`).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use example_support::docs;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::problem::ApiError;

/// An RFC 9457 problem, as every error answer of the service.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// `https://idempotency.rs/problems/staging/<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The same for every occurrence of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
}

/// The service's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Staging service",
        description = "AP invoice intake keyed by file content, a guarded export staging workflow, postings to an accounting system exactly once, rollback, and a hash-chained audit trail."
    ),
    paths(
        crate::intake::upload,
        crate::intake::get_job,
        crate::intake::get_invoice,
        crate::exports::stage,
        crate::exports::batch,
        crate::exports::get_batch,
        crate::exports::get,
        crate::exports::review,
        crate::exports::approve,
        crate::exports::reject,
        crate::exports::diff,
        crate::exports::audit,
        crate::posting::post,
        crate::posting::rollback,
        crate::healthz,
        crate::readyz,
        crate::render_metrics,
        openapi_json,
        docs_page,
        docs_asset,
    ),
    components(schemas(ProblemDoc)),
    tags(
        (name = "intake", description = "Uploads, once per file content"),
        (name = "staging", description = "The staging workflow"),
        (name = "posting", description = "Postings and rollbacks at the destination, once each"),
        (name = "operations", description = "Health and metrics"),
        (name = "docs", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document, rendered once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The OpenAPI document of this service.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    docs::document(DOCUMENT.as_str())
}

/// The interactive page (Swagger UI) over `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "Swagger UI; its assets are under `/docs/`", content_type = "text/html", body = String)))]
pub(crate) async fn docs_page() -> Response {
    docs::page().unwrap_or_else(|| ApiError::internal("no Swagger UI page").into_response())
}

/// An asset of the Swagger UI page, from the binary.
#[utoipa::path(get, path = "/docs/{file}", tag = "docs",
    params(("file" = String, Path, description = "An asset name, e.g. `swagger-ui.css`")),
    responses((status = 200, description = "The asset (CSS, JavaScript or an image)"),
              (status = 404, description = "`no-route`", body = ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn docs_asset(Path(file): Path<String>) -> Response {
    docs::asset(&file).unwrap_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no-route",
            "No such route",
            "no such Swagger UI asset",
        )
        .into_response()
    })
}
