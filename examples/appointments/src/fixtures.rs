//! Fixture routes: shops with hours and capacity, bays, mechanics, and the
//! estimates and work orders appointments are made from. They stand in for
//! the services that own these records; they are not authenticated.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::body::{format_clock, is_id, new_id, parse, parse_clock};
use crate::problem::ApiError;

/// A source as the scheduling code reads it: shop, customer, vehicle,
/// status, service description, duration, required skills, bay type.
pub(crate) type SourceRow = (
    String,
    String,
    String,
    String,
    String,
    i32,
    Vec<String>,
    String,
);

/// Every bay type.
pub const BAY_TYPES: &[&str] = &[
    "GENERAL_SERVICE_BAY",
    "LIFT_BAY",
    "ALIGNMENT_BAY",
    "TIRE_BAY",
    "INSPECTION_BAY",
    "MOBILE_UNIT",
];

/// Estimate statuses an appointment may be made from.
pub const ESTIMATE_ELIGIBLE: &[&str] = &["APPROVED", "QUOTED"];
/// Work order statuses an appointment may not be made from.
pub const WORK_ORDER_INELIGIBLE: &[&str] = &["COMPLETED", "CANCELLED"];

fn check_text(errors: &mut Vec<(String, String)>, pointer: &str, v: &str, max: usize) {
    if v.trim().is_empty() || v.len() > max {
        errors.push((pointer.into(), format!("must be 1 to {max} bytes")));
    }
}

fn done(errors: Vec<(String, String)>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

async fn shop_exists(app: &AppState, shop: &str) -> Result<(), ApiError> {
    let found: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM appointments.shops WHERE id = $1)")
            .bind(shop)
            .fetch_one(&app.pool)
            .await?;
    if found {
        Ok(())
    } else {
        Err(ApiError::not_found("shop", shop))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewShop {
    opens_at: String,
    closes_at: String,
    capacity: i32,
}

/// `POST /shops` `{"opensAt": "07:00", "closesAt": "19:00", "capacity": 3}` (UTC).
#[utoipa::path(post, path = "/shops", tag = "fixtures",
    request_body(content = crate::openapi::NewShop, content_type = "application/json"),
    responses((status = 201, description = "The shop", body = Object), (status = 400, description = "`invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn create_shop(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let s: NewShop = parse(&body)?;
    let mut errors = Vec::new();
    let opens = parse_clock(&s.opens_at);
    let closes = parse_clock(&s.closes_at);
    if opens.is_none() {
        errors.push(("/opensAt".into(), "must be HH:MM".into()));
    }
    if closes.is_none() {
        errors.push(("/closesAt".into(), "must be HH:MM".into()));
    }
    if let (Some(o), Some(c)) = (opens, closes)
        && c <= o
    {
        errors.push(("/closesAt".into(), "must be after opensAt".into()));
    }
    if !(1..=1000).contains(&s.capacity) {
        errors.push(("/capacity".into(), "must be 1 to 1000".into()));
    }
    done(errors)?;
    let id = new_id("SHOP");
    sqlx::query(
        "INSERT INTO appointments.shops (id, opens_at, closes_at, capacity) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(opens)
    .bind(closes)
    .bind(s.capacity)
    .execute(&app.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"shopId": id, "opensAt": s.opens_at, "closesAt": s.closes_at, "capacity": s.capacity})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewBay {
    bay_type: String,
    name: String,
}

/// `POST /shops/{id}/bays` `{"bayType": "LIFT_BAY", "name": "Bay 3"}`.
#[utoipa::path(post, path = "/shops/{id}/bays", tag = "fixtures",
    params(("id" = String, Path, description = "The shop")),
    request_body(content = crate::openapi::NewBay, content_type = "application/json"),
    responses((status = 201, description = "The bay", body = Object), (status = 400, description = "`invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn create_bay(
    State(app): State<AppState>,
    Path(shop): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !is_id(&shop) {
        return Err(ApiError::not_found("shop", &shop));
    }
    let b: NewBay = parse(&body)?;
    let mut errors = Vec::new();
    if !BAY_TYPES.contains(&b.bay_type.as_str()) {
        errors.push(("/bayType".into(), format!("must be one of {BAY_TYPES:?}")));
    }
    check_text(&mut errors, "/name", &b.name, 100);
    done(errors)?;
    shop_exists(&app, &shop).await?;
    let id = new_id("BAY");
    sqlx::query(
        "INSERT INTO appointments.bays (id, shop_id, bay_type, name) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(&shop)
    .bind(&b.bay_type)
    .bind(&b.name)
    .execute(&app.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"bayId": id, "shopId": shop, "bayType": b.bay_type, "name": b.name})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMechanic {
    name: String,
    skills: Vec<String>,
    shift_start: String,
    shift_end: String,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

/// `POST /shops/{id}/mechanics` `{"name", "skills": [...], "shiftStart": "07:00", "shiftEnd": "15:00", "phone"?, "active"?}`.
#[utoipa::path(post, path = "/shops/{id}/mechanics", tag = "fixtures",
    params(("id" = String, Path, description = "The shop")),
    request_body(content = crate::openapi::NewMechanic, content_type = "application/json"),
    responses((status = 201, description = "The mechanic", body = Object), (status = 400, description = "`invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn create_mechanic(
    State(app): State<AppState>,
    Path(shop): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !is_id(&shop) {
        return Err(ApiError::not_found("shop", &shop));
    }
    let m: NewMechanic = parse(&body)?;
    let mut errors = Vec::new();
    check_text(&mut errors, "/name", &m.name, 100);
    if m.skills.len() > 50 || m.skills.iter().any(|s| !is_id(s)) {
        errors.push((
            "/skills".into(),
            "at most 50 skills, each 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    let (start, end) = (parse_clock(&m.shift_start), parse_clock(&m.shift_end));
    match (start, end) {
        (Some(s), Some(e)) if e > s => {}
        _ => errors.push((
            "/shiftEnd".into(),
            "shiftStart and shiftEnd must be HH:MM, end after start".into(),
        )),
    }
    if let Some(p) = &m.phone {
        check_text(&mut errors, "/phone", p, 32);
    }
    done(errors)?;
    shop_exists(&app, &shop).await?;
    let id = new_id("MECH");
    sqlx::query(
        "INSERT INTO appointments.mechanics (id, shop_id, name, skills, shift_start, shift_end, active, phone) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&shop)
    .bind(&m.name)
    .bind(&m.skills)
    .bind(start)
    .bind(end)
    .bind(m.active)
    .bind(&m.phone)
    .execute(&app.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "mechanicId": id, "shopId": shop, "name": m.name, "skills": m.skills,
            "shiftStart": format_clock(start.unwrap_or(0)), "shiftEnd": format_clock(end.unwrap_or(0)),
            "active": m.active,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewSource {
    shop_id: String,
    customer_id: String,
    vehicle_id: String,
    status: String,
    service_description: String,
    duration_minutes: i32,
    #[serde(default)]
    required_skills: Vec<String>,
    #[serde(default = "general")]
    bay_type: String,
    #[serde(default)]
    customer_phone: Option<String>,
    #[serde(default)]
    customer_email: Option<String>,
}

fn general() -> String {
    "GENERAL_SERVICE_BAY".into()
}

/// `POST /estimates` and `POST /work-orders`.
async fn create_source(
    app: &AppState,
    source_type: &'static str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let s: NewSource = parse(body)?;
    let mut errors = Vec::new();
    for (p, v) in [
        ("/shopId", &s.shop_id),
        ("/customerId", &s.customer_id),
        ("/vehicleId", &s.vehicle_id),
    ] {
        if !is_id(v) {
            errors.push((
                p.into(),
                "must be 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
    }
    let statuses: &[&str] = if source_type == "ESTIMATE" {
        &["DRAFT", "QUOTED", "APPROVED", "DECLINED", "SCHEDULED"]
    } else {
        &[
            "OPEN",
            "IN_PROGRESS",
            "ON_HOLD",
            "COMPLETED",
            "CANCELLED",
            "SCHEDULED",
        ]
    };
    if !statuses.contains(&s.status.as_str()) {
        errors.push(("/status".into(), format!("must be one of {statuses:?}")));
    }
    check_text(
        &mut errors,
        "/serviceDescription",
        &s.service_description,
        500,
    );
    if !(15..=1440).contains(&s.duration_minutes) {
        errors.push(("/durationMinutes".into(), "must be 15 to 1440".into()));
    }
    if s.required_skills.len() > 20 || s.required_skills.iter().any(|k| !is_id(k)) {
        errors.push((
            "/requiredSkills".into(),
            "at most 20 skills, each 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    if !BAY_TYPES.contains(&s.bay_type.as_str()) {
        errors.push(("/bayType".into(), format!("must be one of {BAY_TYPES:?}")));
    }
    if let Some(p) = &s.customer_phone {
        check_text(&mut errors, "/customerPhone", p, 32);
    }
    if let Some(e) = &s.customer_email {
        check_text(&mut errors, "/customerEmail", e, 254);
    }
    done(errors)?;
    shop_exists(app, &s.shop_id).await?;
    let id = new_id(if source_type == "ESTIMATE" { "E" } else { "WO" });
    sqlx::query(
        "INSERT INTO appointments.sources (source_type, id, shop_id, customer_id, vehicle_id, \
             customer_phone, customer_email, status, service_description, duration_minutes, \
             required_skills, bay_type) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(source_type)
    .bind(&id)
    .bind(&s.shop_id)
    .bind(&s.customer_id)
    .bind(&s.vehicle_id)
    .bind(&s.customer_phone)
    .bind(&s.customer_email)
    .bind(&s.status)
    .bind(&s.service_description)
    .bind(s.duration_minutes)
    .bind(&s.required_skills)
    .bind(&s.bay_type)
    .execute(&app.pool)
    .await?;
    let source = get_source(app, source_type, &id).await?;
    Ok((StatusCode::CREATED, axum::Json(source)).into_response())
}

/// A source as JSON, or 404.
pub(crate) async fn get_source(
    app: &AppState,
    source_type: &'static str,
    id: &str,
) -> Result<serde_json::Value, ApiError> {
    let what = if source_type == "ESTIMATE" {
        "estimate"
    } else {
        "work order"
    };
    if !is_id(id) {
        return Err(ApiError::not_found(what, id));
    }
    let row: Option<SourceRow> = sqlx::query_as(
        "SELECT shop_id, customer_id, vehicle_id, status, service_description, duration_minutes, \
                required_skills, bay_type \
         FROM appointments.sources WHERE source_type = $1 AND id = $2",
    )
    .bind(source_type)
    .bind(id)
    .fetch_optional(&app.pool)
    .await?;
    let Some((shop, customer, vehicle, status, description, duration, skills, bay_type)) = row
    else {
        return Err(ApiError::not_found(what, id));
    };
    Ok(json!({
        "sourceType": source_type, "sourceId": id, "shopId": shop, "customerId": customer,
        "vehicleId": vehicle, "status": status, "serviceDescription": description,
        "durationMinutes": duration, "requiredSkills": skills, "bayType": bay_type,
    }))
}

/// `POST /estimates`.
#[utoipa::path(post, path = "/estimates", tag = "fixtures",
    request_body(content = crate::openapi::NewSource, content_type = "application/json"),
    responses((status = 201, description = "The estimate", body = crate::openapi::Source), (status = 400, description = "`invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`: no such shop", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn create_estimate(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_source(&app, "ESTIMATE", &body).await
}

/// `POST /work-orders`.
#[utoipa::path(post, path = "/work-orders", tag = "fixtures",
    request_body(content = crate::openapi::NewSource, content_type = "application/json"),
    responses((status = 201, description = "The work order", body = crate::openapi::Source), (status = 400, description = "`invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`: no such shop", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn create_work_order(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_source(&app, "WORK_ORDER", &body).await
}

/// `GET /estimates/{id}`.
#[utoipa::path(get, path = "/estimates/{id}", tag = "fixtures",
    params(("id" = String, Path, description = "The estimate")),
    responses((status = 200, description = "The estimate", body = crate::openapi::Source), (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn estimate(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(get_source(&app, "ESTIMATE", &id).await?).into_response())
}

/// `GET /work-orders/{id}`.
#[utoipa::path(get, path = "/work-orders/{id}", tag = "fixtures",
    params(("id" = String, Path, description = "The work order")),
    responses((status = 200, description = "The work order", body = crate::openapi::Source), (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn work_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(get_source(&app, "WORK_ORDER", &id).await?).into_response())
}
