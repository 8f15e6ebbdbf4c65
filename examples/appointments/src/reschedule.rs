//! `POST /appointments/{id}/reschedule`: once per `Idempotency-Key`, the
//! new time, its history row, audit entry, event and notifications commit
//! together.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idempotency_tower::IdempotencyContext;
use serde::Deserialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::auth::{APPROVE_RESCHEDULE, Caller, RESCHEDULE_APPOINTMENT};
use crate::body::{format_time, is_id, parse, parse_time};
use crate::create::{check_override, complete, conflict, source_ids};
use crate::outbox::{self, RESCHEDULED};
use crate::problem::ApiError;
use crate::schedule::{self, Slot, conflicts_json};
use crate::{AppState, metrics_names as m, notify, read};

/// Every reschedule reason.
pub const REASONS: &[&str] = &[
    "CUSTOMER_REQUEST",
    "SHOP_CAPACITY",
    "EQUIPMENT_ISSUE",
    "MECHANIC_UNAVAILABLE",
    "PARTS_DELAY",
    "WEATHER",
    "EMERGENCY",
    "MANAGER_DISCRETION",
    "OTHER",
];

/// States an appointment may be rescheduled from.
pub const RESCHEDULABLE: &[&str] = &["SCHEDULED", "CONFIRMED", "AWAITING_PARTS"];

/// Reschedules allowed without `APPROVE_RESCHEDULE`.
pub const FREE_RESCHEDULES: i32 = 2;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Reschedule {
    new_start: String,
    reason: String,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    notify_customer: Option<bool>,
    #[serde(default, rename = "override")]
    override_conflict: bool,
}

fn validate(b: &Reschedule, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let mut errors = Vec::new();
    let start = parse_time(&b.new_start);
    match start {
        None => errors.push(("/newStart".into(), "must be an RFC 3339 time".into())),
        Some(s) if s < now || s > now + Duration::days(90) => errors.push((
            "/newStart".into(),
            "must be from now to 90 days ahead".into(),
        )),
        Some(_) => {}
    }
    if !REASONS.contains(&b.reason.as_str()) {
        errors.push(("/reason".into(), format!("must be one of {REASONS:?}")));
    }
    let notes = b.notes.as_deref().map(str::trim).unwrap_or_default();
    if notes.len() > 500 {
        errors.push(("/notes".into(), "at most 500 bytes".into()));
    }
    if notes.is_empty() && (b.reason == "OTHER" || b.override_conflict) {
        errors.push((
            "/notes".into(),
            "notes are required for OTHER and for an override".into(),
        ));
    }
    match (errors.is_empty(), start) {
        (true, Some(s)) => Ok(s),
        _ => Err(ApiError::validation(errors)),
    }
}

/// 403: the reschedule needs `APPROVE_RESCHEDULE`.
fn approval_required(slug: &'static str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        slug,
        "Manager approval required",
        detail,
    )
    .with("permission", json!(APPROVE_RESCHEDULE))
}

/// `POST /appointments/{id}/reschedule`.
#[utoipa::path(post, path = "/appointments/{id}/reschedule", tag = "appointments",
    security(("demo" = [])),
    params(("id" = String, Path, description = "The appointment"),
           ("Idempotency-Key" = String, Header, description = "Required; the same key replays the first answer")),
    request_body(content = crate::openapi::Reschedule, content_type = "application/json"),
    responses(
        (status = 200, description = "The rescheduled appointment", body = crate::openapi::Appointment),
        (status = 400, description = "The idempotency layer: key missing or malformed; `invalid-json`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 401, description = "`unauthorized`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `minimum-notice` or `reschedule-limit` (need `APPROVE_RESCHEDULE`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not-reschedulable`, `scheduling-conflict`, or the layer's `in-flight`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json"), (status = 503, description = "`unavailable`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn reschedule(
    State(app): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
    ctx: Option<Extension<IdempotencyContext>>,
    body: Bytes,
) -> Response {
    let Some(Extension(ctx)) = ctx else {
        return ApiError::internal("reschedules run only behind the idempotency layer")
            .into_response();
    };
    match run(&app, &id, &caller, &ctx, &body).await {
        Ok(res) => {
            metrics::counter!(m::RESCHEDULES_TOTAL, "outcome" => "rescheduled").increment(1);
            res
        }
        Err(e) => {
            metrics::counter!(m::RESCHEDULES_TOTAL, "outcome" => e.slug).increment(1);
            e.into_response()
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn run(
    app: &AppState,
    id: &str,
    caller: &Caller,
    ctx: &IdempotencyContext,
    body: &[u8],
) -> Result<Response, ApiError> {
    caller.require(RESCHEDULE_APPOINTMENT)?;
    if !is_id(id) {
        return Err(ApiError::not_found("appointment", id));
    }
    let b: Reschedule = parse(body)?;
    let now = OffsetDateTime::now_utc();
    let new_start = validate(&b, now)?;
    let mut tx = app.pool.begin().await?;
    type Row = (
        String,
        String,
        String,
        String,
        String,
        i32,
        String,
        Option<String>,
        Option<String>,
        Vec<String>,
        i32,
        i64,
        String,
        String,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT shop_id, source_type, source_id, status, appointments.iso(scheduled_start), \
                duration_minutes, bay_type, bay_id, mechanic_id, required_skills, reschedule_count, \
                version, assignment_status, customer_id \
         FROM appointments.appointments WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((
        shop,
        source_type,
        source_id,
        status,
        previous_start,
        minutes,
        bay_type,
        bay,
        mechanic,
        skills,
        count,
        version,
        previous_assignment,
        customer,
    )) = row
    else {
        return Err(ApiError::not_found("appointment", id));
    };
    if !RESCHEDULABLE.contains(&status.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-reschedulable",
            "The appointment cannot be rescheduled in its state",
            format!("appointment {id} is {status}; only {RESCHEDULABLE:?} may be rescheduled"),
        )
        .with("appointmentStatus", json!(status)));
    }
    let within_notice = new_start - now < Duration::hours(24);
    if within_notice && !caller.may(APPROVE_RESCHEDULE) {
        return Err(approval_required(
            "minimum-notice",
            "a reschedule less than 24 hours ahead needs APPROVE_RESCHEDULE (a shop manager)"
                .into(),
        ));
    }
    if count >= FREE_RESCHEDULES && !caller.may(APPROVE_RESCHEDULE) {
        return Err(approval_required(
            "reschedule-limit",
            format!(
                "appointment {id} was rescheduled {count} times; more needs APPROVE_RESCHEDULE"
            ),
        ));
    }
    sqlx::query("SELECT 1 FROM appointments.shops WHERE id = $1 FOR UPDATE")
        .bind(&shop)
        .execute(&mut *tx)
        .await?;
    let slot = Slot {
        shop: &shop,
        start: new_start,
        minutes,
        bay_type: &bay_type,
        skills: &skills,
        exclude: Some(id),
    };
    let plan = schedule::plan(&mut tx, &slot).await?;
    // The appointment's own bay is free for it: a conflict about bays only
    // counts when its bay is taken too.
    let bay_ok = match &bay {
        Some(bay) => schedule::bay_free(&mut tx, &slot, bay).await?,
        None => false,
    };
    let conflicts: Vec<_> = plan
        .conflicts
        .iter()
        .filter(|c| !(c.kind == "BAY_UNAVAILABLE" && bay_ok))
        .cloned()
        .collect();
    for c in &conflicts {
        metrics::counter!(m::CONFLICTS_TOTAL, "kind" => c.kind, "operation" => "reschedule")
            .increment(1);
    }
    let override_reason = if conflicts.is_empty() {
        None
    } else if b.override_conflict {
        let reason = check_override(caller, b.notes.as_deref())?;
        metrics::counter!(m::OVERRIDES_TOTAL, "operation" => "reschedule").increment(1);
        Some(reason)
    } else {
        let alternatives = schedule::alternatives(&mut tx, &slot).await?;
        return Err(conflict(&conflicts, alternatives));
    };
    // Preserve the assignment only when bay and mechanic are both free then.
    let mechanic_ok = match &mechanic {
        Some(mech) => schedule::mechanic(&mut tx, &slot, Some(mech))
            .await?
            .0
            .is_some(),
        None => false,
    };
    let (new_bay, new_mechanic, assignment, update_status) =
        if bay.is_some() && mechanic.is_some() && bay_ok && mechanic_ok {
            (
                bay.clone(),
                mechanic.clone(),
                previous_assignment,
                "PRESERVED",
            )
        } else if bay.is_none() && mechanic.is_none() {
            (None, None, previous_assignment, "PRESERVED")
        } else {
            (
                bay.clone().filter(|_| bay_ok),
                mechanic.clone().filter(|_| mechanic_ok),
                "NEEDS_REASSIGNMENT".to_owned(),
                "CLEARED",
            )
        };
    let needs_reassignment = update_status == "CLEARED";
    metrics::counter!(m::ASSIGNMENTS_TOTAL, "outcome" => update_status).increment(1);
    let new_version = version + 1;
    sqlx::query(
        "UPDATE appointments.appointments SET scheduled_start = $2::timestamptz, bay_id = $3, \
             mechanic_id = $4, assignment_status = $5, needs_reassignment = $6, \
             reschedule_count = reschedule_count + 1, version = $7, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(format_time(new_start))
    .bind(&new_bay)
    .bind(&new_mechanic)
    .bind(&assignment)
    .bind(needs_reassignment)
    .bind(new_version)
    .execute(&mut *tx)
    .await?;
    let notes = b.notes.as_deref().map(str::trim).filter(|n| !n.is_empty());
    sqlx::query(
        "INSERT INTO appointments.history (appointment_id, previous_start, new_start, reason, notes, \
             rescheduled_by, conflicts, override_applied, assignment_status, version) \
         VALUES ($1, $2::timestamptz, $3::timestamptz, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(&previous_start)
    .bind(format_time(new_start))
    .bind(&b.reason)
    .bind(notes)
    .bind(&caller.user)
    .bind(sqlx::types::Json(conflicts_json(&conflicts)))
    .bind(override_reason.is_some())
    .bind(update_status)
    .bind(new_version)
    .execute(&mut *tx)
    .await?;
    let override_meta = override_reason.as_ref().map(|r| {
        json!({"applied": true, "reason": r, "approvedBy": caller.user, "approverRole": caller.role})
    });
    outbox::audit(
        &mut tx,
        id,
        "AppointmentRescheduled",
        caller,
        "RESCHEDULE",
        Some(json!({"scheduledStart": previous_start, "bayId": bay, "mechanicId": mechanic})),
        Some(json!({
            "scheduledStart": format_time(new_start), "bayId": new_bay,
            "mechanicId": new_mechanic, "assignmentStatus": update_status,
        })),
        Some(&b.reason),
        json!({"detected": conflicts_json(&conflicts), "notes": notes}),
        override_meta,
    )
    .await?;
    let (estimate_id, work_order_id) = source_ids(&source_type, &source_id);
    outbox::emit(
        &mut tx,
        &app.instance,
        RESCHEDULED,
        id,
        Some(new_version),
        json!({
            "sourceType": source_type, "sourceId": source_id,
            "estimateId": estimate_id, "workOrderId": work_order_id,
            "previousScheduledDateTime": previous_start,
            "newScheduledDateTime": format_time(new_start),
            "durationMinutes": minutes,
            "rescheduleReason": b.reason, "rescheduledBy": caller.user,
            "rescheduledAt": format_time(now), "assignmentStatus": update_status,
            "mechanicId": new_mechanic,
        }),
    )
    .await?;
    // The customer: on request, and always for customer-initiated or
    // short-notice changes; the mechanic who had the job, when there was one.
    let notify_customer =
        b.notify_customer.unwrap_or(true) || b.reason == "CUSTOMER_REQUEST" || within_notice;
    let when = format_time(new_start);
    if notify_customer {
        notify::queue_customer(
            &mut tx,
            &app.instance,
            id,
            &source_type,
            &source_id,
            &customer,
            &when,
        )
        .await?;
    }
    if let Some(mech) = &mechanic {
        let kind = if new_mechanic.is_some() {
            "TIME_CHANGED"
        } else {
            "UNASSIGNED"
        };
        notify::queue_mechanic(&mut tx, &app.instance, id, mech, kind, &when).await?;
    }
    let view = read::appointment_json(&mut tx, id).await?;
    let body = view.to_string();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let completion = ctx.completion(StatusCode::OK, &headers, body.clone());
    complete(app, ctx, &mut tx, completion).await?;
    tx.commit().await?;
    ctx.mark_completed(Some(format!("/appointments/{id}")));
    Ok((StatusCode::OK, headers, body).into_response())
}
