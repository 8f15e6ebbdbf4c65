//! The OpenAPI 3.1 document (`/openapi.json`) and its Swagger UI (`/docs`).

use example_support::openapi::{add_header_everywhere, string_header};
use serde::Serialize;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::problem::PROBLEM_BASE;

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
            }
        }
        add_header_everywhere(
            openapi,
            "x-request-id",
            &string_header("The request's id: the client's or a new UUIDv7"),
        );
    }
}

example_support::docs_endpoints!(ApiDoc, ProblemDoc, under PROBLEM_BASE, missing "no-route", "`no-route`");
