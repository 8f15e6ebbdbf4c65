//! The OpenAPI 3.1 document (`GET /openapi.json`), generated from the
//! handlers' `#[utoipa::path]` attributes, and the Swagger UI page
//! (`GET /docs`) whose assets are inside the binary.
//!
//! The handlers read their bodies with serde and answer with `json!`; the
//! types here are their schema.

pub use example_support::openapi::{FieldError, Problem, ValidationProblem};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::problem::PROBLEM_BASE;

/// The service's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "example-appointments",
        description = "Appointments from estimates and work orders (one active appointment per \
                       source), rescheduled with history, audit and notifications; their events \
                       consumed exactly once and in order by Work Execution over NATS JetStream. \
                       Every error is `application/problem+json` (RFC 9457) with a stable `type` \
                       under `https://idempotency.rs/problems/appointments/` (the idempotency \
                       layer's under `https://idempotency.rs/problems/`)."
    ),
    paths(
        crate::fixtures::create_shop,
        crate::fixtures::create_bay,
        crate::fixtures::create_mechanic,
        crate::fixtures::create_estimate,
        crate::fixtures::estimate,
        crate::fixtures::create_work_order,
        crate::fixtures::work_order,
        crate::create::create,
        crate::reschedule::reschedule,
        crate::read::get,
        crate::read::list,
        crate::read::planned,
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
        NewShop,
        NewBay,
        NewMechanic,
        NewSource,
        Source,
        NewAppointment,
        Reschedule,
        Appointment,
    )),
    modifiers(&DemoAuth),
    tags(
        (name = "appointments", description = "Create, reschedule and read appointments"),
        (name = "work-execution", description = "Work Execution's view, written by its consumer"),
        (name = "fixtures", description = "Shops, bays, mechanics, estimates and work orders"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document and its interactive page"),
    )
)]
pub struct ApiDoc;

/// `Authorization: Bearer <user>:<role>` (demo authentication).
struct DemoAuth;

impl Modify for DemoAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "demo",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "`<user>:<role>`; roles SCHEDULER, SERVICE_ADVISOR, DISPATCHER, \
                             SHOP_MANAGER, MECHANIC, CASHIER",
                        ))
                        .build(),
                ),
            );
    }
}

/// `POST /shops`: hours in UTC, every day.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewShop {
    /// `HH:MM`.
    #[schema(example = "06:00")]
    pub opens_at: String,
    /// `HH:MM`, after `opensAt`.
    #[schema(example = "22:00")]
    pub closes_at: String,
    /// Appointments that may overlap at any moment, 1 to 1000.
    pub capacity: i32,
}

/// `POST /shops/{id}/bays`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewBay {
    /// `GENERAL_SERVICE_BAY`, `LIFT_BAY`, `ALIGNMENT_BAY`, `TIRE_BAY`, `INSPECTION_BAY`, `MOBILE_UNIT`.
    pub bay_type: String,
    /// 1 to 100 bytes.
    pub name: String,
}

/// `POST /shops/{id}/mechanics`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewMechanic {
    /// 1 to 100 bytes.
    pub name: String,
    /// At most 50.
    pub skills: Vec<String>,
    /// `HH:MM` UTC.
    pub shift_start: String,
    /// `HH:MM` UTC.
    pub shift_end: String,
    /// For SMS notifications.
    pub phone: Option<String>,
    /// Default true.
    pub active: Option<bool>,
}

/// `POST /estimates`, `POST /work-orders`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSource {
    /// The shop.
    pub shop_id: String,
    /// The customer.
    pub customer_id: String,
    /// The vehicle.
    pub vehicle_id: String,
    /// Estimates: `DRAFT`, `QUOTED`, `APPROVED`, `DECLINED`; work orders: `OPEN`,
    /// `IN_PROGRESS`, `ON_HOLD`, `COMPLETED`, `CANCELLED`.
    pub status: String,
    /// 1 to 500 bytes.
    pub service_description: String,
    /// 15 to 1440.
    pub duration_minutes: i32,
    /// All needed for auto-assignment.
    pub required_skills: Option<Vec<String>>,
    /// Default `GENERAL_SERVICE_BAY`.
    pub bay_type: Option<String>,
    /// For SMS notifications.
    pub customer_phone: Option<String>,
    /// For e-mail notifications.
    pub customer_email: Option<String>,
}

/// An estimate or work order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `ESTIMATE` or `WORK_ORDER`.
    pub source_type: String,
    /// Its id.
    pub source_id: String,
    /// Its shop.
    pub shop_id: String,
    /// `SCHEDULED` once an appointment is made.
    pub status: String,
    /// The rest of the fields given at creation.
    pub service_description: String,
}

/// `POST /appointments`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewAppointment {
    /// `ESTIMATE` or `WORK_ORDER`.
    pub source_type: String,
    /// The estimate or work order.
    pub source_id: String,
    /// RFC 3339, from now to 90 days ahead.
    #[schema(example = "2030-01-02T10:00:00Z")]
    pub scheduled_start: String,
    /// 15 to 1440; default the source's.
    pub duration_minutes: Option<i32>,
    /// A bay type; default the source's.
    pub bay_type_preference: Option<String>,
    /// Override hard conflicts (needs `OVERRIDE_SCHEDULING_CONFLICT`).
    pub override_conflict: Option<bool>,
    /// Required with `overrideConflict`, at most 500 bytes.
    pub override_reason: Option<String>,
}

/// `POST /appointments/{id}/reschedule`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reschedule {
    /// RFC 3339, from now to 90 days ahead; under 24 hours needs `APPROVE_RESCHEDULE`.
    pub new_start: String,
    /// `CUSTOMER_REQUEST`, `SHOP_CAPACITY`, `EQUIPMENT_ISSUE`, `MECHANIC_UNAVAILABLE`,
    /// `PARTS_DELAY`, `WEATHER`, `EMERGENCY`, `MANAGER_DISCRETION`, `OTHER`.
    pub reason: String,
    /// Required for `OTHER` and with `override`; at most 500 bytes.
    pub notes: Option<String>,
    /// Default true (always for `CUSTOMER_REQUEST` or short notice).
    pub notify_customer: Option<bool>,
    /// Override hard conflicts (needs `OVERRIDE_SCHEDULING_CONFLICT`).
    pub r#override: Option<bool>,
}

/// An appointment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    /// `APT-…`.
    pub appointment_id: String,
    /// `SCHEDULED`, `CONFIRMED`, `AWAITING_PARTS`, `IN_PROGRESS`, `COMPLETED`, `CANCELLED`.
    pub appointment_status: String,
    /// RFC 3339 UTC.
    pub scheduled_date_time: String,
    /// `ASSIGNED`, `DEFERRED`, `AWAITING_SKILL_FULFILLMENT`, `NEEDS_REASSIGNMENT`.
    pub assignment_status: String,
    /// 1 when created, + 1 per reschedule: the events' version.
    pub version: i64,
    /// `{location, mechanic, assignmentStatus, needsReassignment, lastUpdatedAt}`.
    #[schema(value_type = Object)]
    pub assignment: serde_json::Value,
    /// Every reschedule, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<serde_json::Value>,
    /// Every notification and its status.
    #[schema(value_type = Vec<Object>)]
    pub notifications: Vec<serde_json::Value>,
}

example_support::docs_endpoints!(ApiDoc, Problem, under PROBLEM_BASE, missing "not-found", "`not-found`");
