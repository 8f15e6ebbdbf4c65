//! The OpenAPI 3.1 document (`/openapi.json`) and its Swagger UI (`/docs`).

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use example_support::docs;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi, ToSchema};

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
    modifiers(&CommonProblems),
    tags(
        (name = "intake", description = "Uploads, once per file content"),
        (name = "staging", description = "The staging workflow"),
        (name = "posting", description = "Postings and rollbacks at the destination, once each"),
        (name = "operations", description = "Health and metrics"),
        (name = "docs", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Adds what every operation may answer: `invalid-json` where the body
/// is JSON, `internal` and `unavailable` everywhere but the docs; and the
/// `x-request-id` header on every answer.
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            for op in [item.get.as_mut(), item.post.as_mut(), item.put.as_mut()]
                .into_iter()
                .flatten()
            {
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, slug: &str| {
                    let entry = responses.entry(status.to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description("")
                                .content(
                                    "application/problem+json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("Problem")))
                                        .build(),
                                )
                                .build(),
                        )
                    });
                    if let RefOr::T(r) = entry {
                        let sep = if r.description.is_empty() { "" } else { " or " };
                        r.description.push_str(&format!("{sep}`{slug}`"));
                    }
                };
                if json_body {
                    add("400", "invalid-json");
                }
                if !path.starts_with("/docs") && path != "/openapi.json" {
                    add("500", "internal");
                    if path != "/readyz" {
                        add("503", "unavailable");
                    }
                }
                for response in responses.values_mut() {
                    if let RefOr::T(r) = response {
                        r.headers.insert(
                            "x-request-id".to_owned(),
                            HeaderBuilder::new()
                                .schema(ObjectBuilder::new().schema_type(Type::String))
                                .description(Some("The request's id: the client's or a new UUIDv7"))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

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
