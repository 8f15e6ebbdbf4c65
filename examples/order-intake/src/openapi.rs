//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.
//!
//! The handlers read their bodies as JSON and validate them field by field;
//! the request types here are their schema.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use example_support::docs;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::problem::ApiError;

/// The service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "example-order-intake",
        description = "Orders taken in exactly once per (channel, externalOrderId) or \
                       Idempotency-Key, an append-only event log, a guarded state machine, and a \
                       Temporal workflow (OrderIntakeWorkflow) started once per order whose \
                       activities are retry-safe. Every error is `application/problem+json` \
                       (RFC 9457) with a stable `type` under \
                       `https://idempotency.rs/problems/order-intake/`."
    ),
    paths(
        crate::intake::create,
        crate::read::get,
        crate::read::list,
        crate::read::events,
        crate::actions::cancel,
        crate::actions::shipment,
        crate::actions::workflow,
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
        OrderRequestDoc,
        LineRequestDoc,
        CancelRequest,
        ShipmentRequest,
        crate::read::ShipTo,
        crate::read::OrderView,
        crate::read::LineView,
        crate::read::OrderPage,
        crate::read::EventView,
        crate::temporal::WorkflowView,
        crate::domain::Status,
    )),
    tags(
        (name = "orders", description = "Take orders in, read them, cancel them, ship them, follow their workflow"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document and its interactive page"),
    )
)]
pub struct ApiDoc;

/// A problem+json body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `https://idempotency.rs/problems/order-intake/{slug}`.
    #[schema(example = "https://idempotency.rs/problems/order-intake/illegal-transition")]
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
    /// `https://idempotency.rs/problems/order-intake/validation-failed`.
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

/// One broken rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer of the field.
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}

/// `POST /orders`: an order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRequestDoc {
    /// The caller's id, 1 to 100 characters, unique per channel: the
    /// intake's key. Without it the `Idempotency-Key` header is required.
    #[schema(example = "shop-1001")]
    pub external_order_id: Option<String>,
    /// `MANUAL`, `SHOPIFY` or `OTHER`.
    #[schema(example = "SHOPIFY")]
    pub channel: String,
    /// `LOW`, `NORMAL` (default) or `HIGH`.
    pub priority: Option<String>,
    /// Where it goes; `country` is ISO 3166-1 alpha-2.
    pub ship_to: crate::read::ShipTo,
    /// 1 to 100 lines.
    pub lines: Vec<LineRequestDoc>,
}

/// One line of `POST /orders`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineRequestDoc {
    /// 1 to 64 of `A-Z a-z 0-9 - _ .`.
    #[schema(example = "SKU-1")]
    pub sku: String,
    /// 1 to 10000.
    pub quantity: i32,
    /// A decimal string, at most 2 decimals (a JSON number is refused).
    #[schema(example = "19.99")]
    pub unit_price: String,
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelRequest {
    /// 1 to 500 characters.
    #[schema(example = "customer changed their mind")]
    pub reason: String,
}

/// `POST /orders/{id}/shipment`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentRequest {
    /// 1 to 64 of `A-Z a-z 0-9 -`.
    #[schema(example = "1Z999AA10123456784")]
    pub tracking_number: String,
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
    responses(
        (status = 200, description = "The asset (CSS, JavaScript or an image)"),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn docs_asset(Path(file): Path<String>) -> Response {
    docs::asset(&file).unwrap_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such route",
            "no such Swagger UI asset",
        )
        .into_response()
    })
}
