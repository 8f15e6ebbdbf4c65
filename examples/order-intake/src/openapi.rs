//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.
//!
//! The handlers read their bodies as JSON and validate them field by field;
//! the request types here are their schema.

pub use example_support::openapi::{FieldError, Problem, ValidationProblem};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::problem::PROBLEM_BASE;

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

example_support::docs_endpoints!(ApiDoc, Problem, under PROBLEM_BASE, missing "not-found", "`not-found`");
