//! `POST /appointments`: one appointment per source, created once per
//! `Idempotency-Key`, with its event and audit rows in the same transaction.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idempotency_core::StoreError;
use idempotency_tower::IdempotencyContext;
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::auth::{CREATE_APPOINTMENT, Caller, OVERRIDE_SCHEDULING_CONFLICT};
use crate::body::{format_time, is_id, new_id, parse, parse_time};
use crate::fixtures::{BAY_TYPES, ESTIMATE_ELIGIBLE, SourceRow, WORK_ORDER_INELIGIBLE};
use crate::outbox::{self, CREATED, NEEDS_SKILL_RESOLUTION};
use crate::problem::ApiError;
use crate::schedule::{self, Slot, conflicts_json};
use crate::{AppState, metrics_names as m, read};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewAppointment {
    source_type: String,
    source_id: String,
    scheduled_start: String,
    #[serde(default)]
    duration_minutes: Option<i32>,
    #[serde(default)]
    bay_type_preference: Option<String>,
    #[serde(default)]
    override_conflict: bool,
    #[serde(default)]
    override_reason: Option<String>,
}

/// 409: the source already has an active appointment; links to it.
pub(crate) fn already_scheduled(source_id: &str, existing: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "source-already-scheduled",
        "The source already has an active appointment",
        format!("{source_id} is already scheduled as appointment {existing}"),
    )
    .with("appointmentId", json!(existing))
    .with("appointment", json!(format!("/appointments/{existing}")));
    e.location = Some(format!("/appointments/{existing}"));
    e
}

/// 409: hard conflicts, with suggested alternatives.
pub(crate) fn conflict(conflicts: &[schedule::Conflict], alternatives: Vec<String>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "scheduling-conflict",
        "The time conflicts with the shop's schedule",
        format!(
            "{} hard conflict(s); choose an alternative or override with {OVERRIDE_SCHEDULING_CONFLICT} and a reason",
            conflicts.len()
        ),
    )
    .with("conflicts", conflicts_json(conflicts))
    .with("suggestedAlternatives", json!(alternatives))
}

/// Checks the override rules: the permission, and a reason.
pub(crate) fn check_override(caller: &Caller, reason: Option<&str>) -> Result<String, ApiError> {
    caller.require(OVERRIDE_SCHEDULING_CONFLICT)?;
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() && r.len() <= 500 => Ok(r.to_owned()),
        _ => Err(ApiError::validation(vec![(
            "/overrideReason".into(),
            "an override needs a reason of 1 to 500 bytes".into(),
        )])),
    }
}

/// Validates the body: the source, a start from now to 90 days ahead.
fn validate(b: &NewAppointment, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let mut errors = Vec::new();
    if !["ESTIMATE", "WORK_ORDER"].contains(&b.source_type.as_str()) {
        errors.push((
            "/sourceType".into(),
            "must be ESTIMATE or WORK_ORDER".into(),
        ));
    }
    if !is_id(&b.source_id) {
        errors.push((
            "/sourceId".into(),
            "must be 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    let start = parse_time(&b.scheduled_start);
    match start {
        None => errors.push(("/scheduledStart".into(), "must be an RFC 3339 time".into())),
        Some(s) if s < now || s > now + Duration::days(90) => errors.push((
            "/scheduledStart".into(),
            "must be from now to 90 days ahead".into(),
        )),
        Some(_) => {}
    }
    if let Some(d) = b.duration_minutes
        && !(15..=1440).contains(&d)
    {
        errors.push(("/durationMinutes".into(), "must be 15 to 1440".into()));
    }
    if let Some(t) = &b.bay_type_preference
        && !BAY_TYPES.contains(&t.as_str())
    {
        errors.push((
            "/bayTypePreference".into(),
            format!("must be one of {BAY_TYPES:?}"),
        ));
    }
    if let Some(r) = &b.override_reason
        && r.len() > 500
    {
        errors.push(("/overrideReason".into(), "at most 500 bytes".into()));
    }
    match (errors.is_empty(), start) {
        (true, Some(s)) => Ok(s),
        _ => Err(ApiError::validation(errors)),
    }
}

/// `POST /appointments`.
#[utoipa::path(post, path = "/appointments", tag = "appointments",
    security(("demo" = [])),
    params(("Idempotency-Key" = String, Header, description = "Required; the same key replays the first answer")),
    request_body(content = crate::openapi::NewAppointment, content_type = "application/json"),
    responses(
        (status = 201, description = "The appointment (a replay has `Idempotent-Replayed: true`)", body = crate::openapi::Appointment,
            headers(("Location" = String, description = "`/appointments/{id}`"))),
        (status = 400, description = "The idempotency layer: key missing or malformed; `invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 401, description = "`unauthorized`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 403, description = "`forbidden`: a missing permission", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`: no such source", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`source-already-scheduled` (with `Location` of the active one), `scheduling-conflict` (with `conflicts` and `suggestedAlternatives`), `source-not-eligible`, or the idempotency layer's `in-flight`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`, or the layer's key reused with another request", body = crate::openapi::ValidationProblem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(app): State<AppState>,
    caller: Caller,
    ctx: Option<Extension<IdempotencyContext>>,
    body: Bytes,
) -> Response {
    let Some(Extension(ctx)) = ctx else {
        return ApiError::internal("appointments are created only behind the idempotency layer")
            .into_response();
    };
    match run(&app, &caller, &ctx, &body).await {
        Ok(res) => {
            metrics::counter!(m::CREATED_TOTAL, "outcome" => "created").increment(1);
            res
        }
        Err(e) => {
            metrics::counter!(m::CREATED_TOTAL, "outcome" => e.slug).increment(1);
            e.into_response()
        }
    }
}

async fn run(
    app: &AppState,
    caller: &Caller,
    ctx: &IdempotencyContext,
    body: &[u8],
) -> Result<Response, ApiError> {
    caller.require(CREATE_APPOINTMENT)?;
    let b: NewAppointment = parse(body)?;
    let start = validate(&b, OffsetDateTime::now_utc())?;
    let mut tx = app.pool.begin().await?;
    // The source's row lock serialises creations for one source.
    let source: Option<SourceRow> = sqlx::query_as(
        "SELECT shop_id, customer_id, vehicle_id, status, service_description, duration_minutes, \
                    required_skills, bay_type \
             FROM appointments.sources WHERE source_type = $1 AND id = $2 FOR UPDATE",
    )
    .bind(&b.source_type)
    .bind(&b.source_id)
    .fetch_optional(&mut *tx)
    .await?;
    let what = if b.source_type == "ESTIMATE" {
        "estimate"
    } else {
        "work order"
    };
    let Some((shop, customer, vehicle, status, description, duration, skills, bay_type)) = source
    else {
        return Err(ApiError::not_found(what, &b.source_id));
    };
    if let Some(existing) = active_for_source(&mut tx, &b.source_type, &b.source_id).await? {
        return Err(already_scheduled(&b.source_id, &existing));
    }
    let eligible = if b.source_type == "ESTIMATE" {
        ESTIMATE_ELIGIBLE.contains(&status.as_str()) || status == "SCHEDULED"
    } else {
        !WORK_ORDER_INELIGIBLE.contains(&status.as_str())
    };
    if !eligible {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "source-not-eligible",
            "The source is not eligible for an appointment",
            format!("{what} {} is {status}", b.source_id),
        )
        .with("sourceStatus", json!(status)));
    }
    // The shop's row lock serialises scheduling within the shop.
    sqlx::query("SELECT 1 FROM appointments.shops WHERE id = $1 FOR UPDATE")
        .bind(&shop)
        .execute(&mut *tx)
        .await?;
    let minutes = b.duration_minutes.unwrap_or(duration);
    let bay_type = b.bay_type_preference.clone().unwrap_or(bay_type);
    let slot = Slot {
        shop: &shop,
        start,
        minutes,
        bay_type: &bay_type,
        skills: &skills,
        exclude: None,
    };
    let plan = schedule::plan(&mut tx, &slot).await?;
    for c in &plan.conflicts {
        metrics::counter!(m::CONFLICTS_TOTAL, "kind" => c.kind, "operation" => "create")
            .increment(1);
    }
    let override_reason = if plan.conflicts.is_empty() {
        None
    } else if b.override_conflict {
        let reason = check_override(caller, b.override_reason.as_deref())?;
        metrics::counter!(m::OVERRIDES_TOTAL, "operation" => "create").increment(1);
        Some(reason)
    } else {
        let alternatives = schedule::alternatives(&mut tx, &slot).await?;
        return Err(conflict(&plan.conflicts, alternatives));
    };
    let assignment = plan.assignment_status();
    let mechanic = plan.mechanic.clone().filter(|_| plan.bay.is_some());
    let id = new_id("APT");
    let inserted = sqlx::query(
        "INSERT INTO appointments.appointments (id, shop_id, source_type, source_id, customer_id, \
             vehicle_id, status, scheduled_start, duration_minutes, bay_type, bay_id, mechanic_id, \
             assignment_status, required_skills, service_description, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, 'SCHEDULED', $7::timestamptz, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(&id)
    .bind(&shop)
    .bind(&b.source_type)
    .bind(&b.source_id)
    .bind(&customer)
    .bind(&vehicle)
    .bind(format_time(start))
    .bind(minutes)
    .bind(&bay_type)
    .bind(&plan.bay)
    .bind(&mechanic)
    .bind(assignment)
    .bind(&skills)
    .bind(&description)
    .bind(&caller.user)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // The partial unique index: another transaction scheduled the source first.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            drop(tx);
            let mut conn = app.pool.acquire().await?;
            let existing = active_for_source(&mut conn, &b.source_type, &b.source_id)
                .await?
                .unwrap_or_default();
            return Err(already_scheduled(&b.source_id, &existing));
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query(
        "UPDATE appointments.sources SET status = 'SCHEDULED' WHERE source_type = $1 AND id = $2",
    )
    .bind(&b.source_type)
    .bind(&b.source_id)
    .execute(&mut *tx)
    .await?;
    let (estimate_id, work_order_id) = source_ids(&b.source_type, &b.source_id);
    let event = json!({
        "sourceType": b.source_type, "sourceId": b.source_id,
        "estimateId": estimate_id, "workOrderId": work_order_id,
        "customerId": customer, "vehicleId": vehicle,
        "scheduledDateTime": format_time(start), "durationMinutes": minutes,
        "assignedBay": plan.bay, "assignedMechanic": mechanic,
        "requiredSkills": skills, "assignmentStatus": assignment, "createdBy": caller.user,
    });
    outbox::emit(&mut tx, &app.instance, CREATED, &id, Some(1), event.clone()).await?;
    if assignment == "AWAITING_SKILL_FULFILLMENT" {
        outbox::emit(
            &mut tx,
            &app.instance,
            NEEDS_SKILL_RESOLUTION,
            &id,
            None,
            json!({"requiredSkills": skills, "shopId": shop}),
        )
        .await?;
    }
    let override_meta = override_reason.as_ref().map(|r| {
        json!({"applied": true, "reason": r, "approvedBy": caller.user, "approverRole": caller.role})
    });
    if let Some(meta) = &override_meta {
        outbox::audit(
            &mut tx,
            &id,
            "ConflictOverridden",
            caller,
            "CREATE",
            None,
            None,
            override_reason.as_deref(),
            conflicts_json(&plan.conflicts),
            Some(meta.clone()),
        )
        .await?;
    }
    outbox::audit(
        &mut tx,
        &id,
        "AppointmentCreated",
        caller,
        "CREATE",
        None,
        Some(event),
        override_reason.as_deref(),
        conflicts_json(&plan.conflicts),
        override_meta,
    )
    .await?;
    let view = read::appointment_json(&mut tx, &id).await?;
    let location = format!("/appointments/{id}");
    let body = view.to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    let completion = ctx
        .completion(StatusCode::CREATED, &headers, body.clone())
        .with_resource(location.clone());
    complete(app, ctx, &mut tx, completion).await?;
    tx.commit().await?;
    ctx.mark_completed(Some(location));
    Ok((StatusCode::CREATED, headers, body).into_response())
}

/// Completes the idempotency record inside the business transaction.
pub(crate) async fn complete(
    app: &AppState,
    ctx: &IdempotencyContext,
    tx: &mut sqlx::PgConnection,
    completion: idempotency_core::Completion,
) -> Result<(), ApiError> {
    match app.store.complete_in(tx, ctx.lease(), completion).await {
        Ok(()) => Ok(()),
        Err(StoreError::LeaseLost) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "superseded",
            "Superseded by a retry",
            "this attempt lost its idempotency lease to a retry; nothing was changed",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "could not complete the idempotency record; rolled back");
            Err(ApiError::unavailable(
                "the request could not be recorded; nothing was changed, retry later",
            ))
        }
    }
}

/// `(estimateId, workOrderId)` of a source.
pub(crate) fn source_ids(source_type: &str, source_id: &str) -> (Value, Value) {
    if source_type == "ESTIMATE" {
        (json!(source_id), Value::Null)
    } else {
        (Value::Null, json!(source_id))
    }
}

/// The active appointment of a source, if any.
pub(crate) async fn active_for_source(
    conn: &mut sqlx::PgConnection,
    source_type: &str,
    source_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM appointments.appointments \
         WHERE source_type = $1 AND source_id = $2 AND status IN {}",
        schedule::ACTIVE
    )))
    .bind(source_type)
    .bind(source_id)
    .fetch_optional(conn)
    .await
}
