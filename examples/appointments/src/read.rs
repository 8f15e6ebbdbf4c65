//! Reads: an appointment with its assignment view and history, the
//! appointments of a source, and Work Execution's planned time.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::AppState;
use crate::auth::Caller;
use crate::body::is_id;
use crate::problem::ApiError;

/// An appointment as JSON: the record, its assignment view, history and notifications.
///
/// # Errors
///
/// Database errors (`RowNotFound` when there is no such appointment).
pub(crate) async fn appointment_json(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Value, sqlx::Error> {
    let row: Value = sqlx::query_scalar(
        "SELECT json_build_object(
             'appointmentId', a.id, 'shopId', a.shop_id, 'sourceType', a.source_type,
             'sourceId', a.source_id,
             'estimateId', CASE WHEN a.source_type = 'ESTIMATE' THEN a.source_id END,
             'workOrderId', CASE WHEN a.source_type = 'WORK_ORDER' THEN a.source_id END,
             'customerId', a.customer_id, 'vehicleId', a.vehicle_id,
             'appointmentStatus', a.status, 'scheduledDateTime', appointments.iso(a.scheduled_start),
             'estimatedDurationMinutes', a.duration_minutes, 'serviceDescription', a.service_description,
             'requiredSkills', a.required_skills, 'bayTypeRequired', a.bay_type,
             'assignedBay', a.bay_id, 'assignedMechanic', a.mechanic_id,
             'assignmentStatus', a.assignment_status, 'rescheduleCount', a.reschedule_count,
             'version', a.version, 'createdBy', a.created_by, 'createdAt', appointments.iso(a.created_at),
             'assignment', json_build_object(
                 'location', CASE WHEN b.id IS NULL THEN NULL ELSE json_build_object(
                     'type', CASE WHEN b.bay_type = 'MOBILE_UNIT' THEN 'MOBILE_UNIT' ELSE 'BAY' END,
                     'bayId', b.id, 'bayType', b.bay_type, 'name', b.name) END,
                 'mechanic', CASE WHEN m.id IS NULL THEN NULL ELSE json_build_object(
                     'mechanicId', m.id, 'name', m.name, 'skills', m.skills) END,
                 'assignmentStatus', a.assignment_status,
                 'needsReassignment', a.needs_reassignment,
                 'lastUpdatedAt', appointments.iso(a.updated_at)),
             'history', coalesce((SELECT json_agg(json_build_object(
                 'previousScheduledDateTime', appointments.iso(h.previous_start),
                 'newScheduledDateTime', appointments.iso(h.new_start),
                 'rescheduleReason', h.reason, 'rescheduleReasonNotes', h.notes,
                 'rescheduledBy', h.rescheduled_by, 'rescheduledAt', appointments.iso(h.rescheduled_at),
                 'conflictsDetected', h.conflicts, 'conflictOverridden', h.override_applied,
                 'assignmentStatus', h.assignment_status, 'version', h.version) ORDER BY h.id)
                 FROM appointments.history h WHERE h.appointment_id = a.id), '[]'::json),
             'notifications', coalesce((SELECT json_agg(json_build_object(
                 'notificationId', n.id, 'recipientType', n.recipient_type,
                 'recipientId', n.recipient_id, 'notificationChannel', n.channel,
                 'notificationType', n.kind, 'notificationStatus', n.status,
                 'retryCount', greatest(n.attempts - 1, 0), 'manualFollowUp', n.manual_follow_up)
                 ORDER BY n.created_at, n.id)
                 FROM appointments.notifications n WHERE n.appointment_id = a.id), '[]'::json))
         FROM appointments.appointments a
         LEFT JOIN appointments.bays b ON b.id = a.bay_id
         LEFT JOIN appointments.mechanics m ON m.id = a.mechanic_id
         WHERE a.id = $1",
    )
    .bind(id)
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// `GET /appointments/{id}`.
#[utoipa::path(get, path = "/appointments/{id}", tag = "appointments", security(("demo" = [])),
    params(("id" = String, Path, description = "The appointment")),
    responses((status = 200, description = "The appointment, its assignment view, history and notifications", body = crate::openapi::Appointment),
        (status = 401, description = "`unauthorized`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 404, description = "`not-found`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !is_id(&id) {
        return Err(ApiError::not_found("appointment", &id));
    }
    let mut conn = app.pool.acquire().await?;
    match appointment_json(&mut conn, &id).await {
        Ok(v) => Ok(axum::Json(v).into_response()),
        Err(sqlx::Error::RowNotFound) => Err(ApiError::not_found("appointment", &id)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    source_id: Option<String>,
}

/// `GET /appointments?sourceId=...`: every appointment of a source, oldest first.
#[utoipa::path(get, path = "/appointments", tag = "appointments", security(("demo" = [])),
    params(("sourceId" = String, Query, description = "An estimate or work order")),
    responses((status = 200, description = "`{sourceId, appointments: [...]}`, oldest first", body = Object),
        (status = 400, description = "`missing-parameter`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 401, description = "`unauthorized`", body = crate::openapi::Problem, content_type = "application/problem+json"), (status = 422, description = "`validation-failed`", body = crate::openapi::ValidationProblem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(app): State<AppState>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let Some(source) = q.source_id.filter(|s| !s.is_empty()) else {
        return Err(ApiError::missing_parameter("sourceId"));
    };
    if !is_id(&source) {
        return Err(ApiError::validation(vec![(
            "sourceId".into(),
            "must be 1 to 64 letters, digits, '-' or '_'".into(),
        )]));
    }
    let mut conn = app.pool.acquire().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM appointments.appointments WHERE source_id = $1 ORDER BY created_at, id",
    )
    .bind(&source)
    .fetch_all(&mut *conn)
    .await?;
    let mut list = Vec::with_capacity(ids.len());
    for id in ids {
        list.push(appointment_json(&mut conn, &id).await?);
    }
    Ok(axum::Json(json!({"sourceId": source, "appointments": list})).into_response())
}

/// `GET /work-orders/{id}/planned`: Work Execution's view of the work
/// order's appointments, written only by its consumer.
#[utoipa::path(get, path = "/work-orders/{id}/planned", tag = "work-execution", security(("demo" = [])),
    params(("id" = String, Path, description = "The work order")),
    responses((status = 200, description = "`{workOrderId, planned: [{appointmentId, plannedStart, durationMinutes, version, updatedAt}]}`, written only by the consumer", body = Object),
        (status = 401, description = "`unauthorized`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn planned(
    State(app): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !is_id(&id) {
        return Err(ApiError::not_found("work order", &id));
    }
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('appointmentId', appointment_id,
             'plannedStart', appointments.iso(planned_start), 'durationMinutes', duration_minutes,
             'version', version, 'updatedAt', appointments.iso(updated_at))
         FROM work_execution.planned WHERE source_type = 'WORK_ORDER' AND source_id = $1
         ORDER BY updated_at",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await?;
    Ok(axum::Json(json!({"workOrderId": id, "planned": rows})).into_response())
}
