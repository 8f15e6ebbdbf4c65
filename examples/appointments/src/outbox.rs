//! The transactional outbox: events written in the business transaction,
//! published later by the relay ([`crate::relay`]).

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

/// `AppointmentCreated` (version 1).
pub const CREATED: &str = "AppointmentCreated";
/// `AppointmentRescheduled` (version + 1).
pub const RESCHEDULED: &str = "AppointmentRescheduled";
/// `AppointmentNeedsSkillResolution`: no mechanic has the required skills.
pub const NEEDS_SKILL_RESOLUTION: &str = "AppointmentNeedsSkillResolution";
/// `NotificationFailed`: a notification ran out of retries.
pub const NOTIFICATION_FAILED: &str = "NotificationFailed";

/// The subject of an event type under `instance`: state changes (which
/// Work Execution applies in version order) under `<instance>.appointment.state.`,
/// notices under `<instance>.appointment.notice.`.
pub fn subject(instance: &str, event_type: &str) -> String {
    match event_type {
        CREATED => format!("{instance}.appointment.state.created"),
        RESCHEDULED => format!("{instance}.appointment.state.rescheduled"),
        NEEDS_SKILL_RESOLUTION => format!("{instance}.appointment.notice.needs-skill-resolution"),
        _ => format!("{instance}.appointment.notice.notification-failed"),
    }
}

/// Writes one event into the outbox on `conn` (inside the business
/// transaction): `payload` gets `eventId`, `eventType`, `appointmentId` and
/// `version`. Returns the event id.
///
/// # Errors
///
/// Database errors.
pub async fn emit(
    conn: &mut PgConnection,
    instance: &str,
    event_type: &'static str,
    appointment_id: &str,
    version: Option<i64>,
    mut payload: Value,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    if let Some(obj) = payload.as_object_mut() {
        obj.insert("eventId".into(), json!(id));
        obj.insert("eventType".into(), json!(event_type));
        obj.insert("appointmentId".into(), json!(appointment_id));
        if let Some(v) = version {
            obj.insert("version".into(), json!(v));
        }
    }
    sqlx::query(
        "INSERT INTO appointments.outbox (event_id, subject, event_type, aggregate_id, version, payload) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(subject(instance, event_type))
    .bind(event_type)
    .bind(appointment_id)
    .bind(version)
    .bind(sqlx::types::Json(&payload))
    .execute(conn)
    .await?;
    Ok(id)
}

/// Appends one row to the audit log on `conn` (inside the business transaction).
///
/// # Errors
///
/// Database errors.
#[allow(clippy::too_many_arguments)]
pub async fn audit(
    conn: &mut PgConnection,
    appointment_id: &str,
    event_type: &str,
    caller: &crate::auth::Caller,
    action: &str,
    previous: Option<Value>,
    new: Option<Value>,
    reason: Option<&str>,
    conflicts: Value,
    override_meta: Option<Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO appointments.audit_log (appointment_id, event_type, actor_id, actor_role, action, \
             previous_values, new_values, reason, conflicts, override) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(appointment_id)
    .bind(event_type)
    .bind(&caller.user)
    .bind(caller.role)
    .bind(action)
    .bind(previous.map(sqlx::types::Json))
    .bind(new.map(sqlx::types::Json))
    .bind(reason)
    .bind(sqlx::types::Json(conflicts))
    .bind(override_meta.map(sqlx::types::Json))
    .execute(conn)
    .await?;
    Ok(())
}
