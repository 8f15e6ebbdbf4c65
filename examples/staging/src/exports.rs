//! The staging workflow: an export is staged once per invoice, destination
//! and format, then reviewed, approved (with corrections diffed field by
//! field, and a second approver above a threshold) or rejected.
//!
//! States and the transitions allowed between them ([`may_become`]):
//! `PREPARED → UNDER_REVIEW → APPROVED | REJECTED`, `APPROVED → POSTED |
//! FAILED`, `FAILED → POSTED | FAILED` (a retried post), `POSTED →
//! ROLLED_BACK`. Every transition locks the row, is a guarded `UPDATE ...
//! WHERE status = <expected>`, and appends its audit event with the
//! export's before and after snapshots to the export's hash chain in the
//! same transaction.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use idempotency_audit::Outcome;
use idempotency_core::KeySpec;
use idempotency_postgres::natural::{Inserted, NaturalKey};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::intake::natural_error;
use crate::invoice::{self, Assessed, Money};
use crate::problem::ApiError;
use crate::{AppState, event, json_body, metric, optional_text, text_field};

/// Every state of a staged export.
pub const STATES: [&str; 7] = [
    "PREPARED",
    "UNDER_REVIEW",
    "APPROVED",
    "REJECTED",
    "POSTED",
    "FAILED",
    "ROLLED_BACK",
];

/// Whether an export in state `from` may go to `to`.
pub fn may_become(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("PREPARED", "UNDER_REVIEW")
            | ("UNDER_REVIEW", "APPROVED" | "REJECTED")
            | ("APPROVED", "POSTED" | "FAILED")
            | ("FAILED", "POSTED" | "FAILED")
            | ("POSTED", "ROLLED_BACK")
    )
}

/// Accepted export formats.
const FORMATS: [&str; 3] = ["csv", "json", "xml"];

/// The export's stream in the audit trail.
pub(crate) fn stream(id: Uuid) -> String {
    format!("staging/export/{id}")
}

/// The export's snapshot: every column, amounts as decimal strings.
pub(crate) const SNAPSHOT: &str =
    "to_jsonb(e) || jsonb_build_object('total_amount', e.total_amount::text)";

/// The export's snapshot, read through `conn`.
pub(crate) async fn snapshot(
    app: &AppState,
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Value>, ApiError> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(&format!(
        "SELECT {SNAPSHOT} FROM {{{{schema}}}}.staged_exports e WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|j| j.0))
}

/// An export locked for a transition.
#[derive(Debug, Clone)]
pub(crate) struct Locked {
    pub(crate) id: Uuid,
    pub(crate) status: String,
    pub(crate) before: Value,
    /// Seconds since its last transition.
    pub(crate) in_state: f64,
}

impl Locked {
    /// A field of the before snapshot.
    pub(crate) fn get(&self, name: &str) -> &Value {
        self.before.get(name).unwrap_or(&Value::Null)
    }

    /// A text field of the before snapshot.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }
}

/// Locks export `id` (`SELECT ... FOR UPDATE`) for a transition.
pub(crate) async fn lock(
    app: &AppState,
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Locked, ApiError> {
    let row: Option<(String, sqlx::types::Json<Value>, f64)> = sqlx::query_as(app.sql(&format!(
        "SELECT status, {SNAPSHOT}, extract(epoch FROM now() - updated_at)::float8
         FROM {{{{schema}}}}.staged_exports e WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((status, before, in_state)) => Ok(Locked {
            id,
            status,
            before: before.0,
            in_state,
        }),
        None => Err(ApiError::not_found("staged export", &id.to_string())),
    }
}

/// Refuses a transition [`may_become`] does not allow.
pub(crate) fn check(locked: &Locked, to: &str) -> Result<(), ApiError> {
    if may_become(&locked.status, to) {
        Ok(())
    } else {
        Err(ApiError::illegal_transition(&locked.status, to))
    }
}

/// Runs the guarded update `set_sql` (`$1` is the id, `$2` the expected
/// state; more binds by `bind`) and fails when the row was not in `from`.
pub(crate) async fn guarded_update<'q>(
    conn: &mut PgConnection,
    locked: &Locked,
    to: &str,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<(), ApiError> {
    let done = query.execute(&mut *conn).await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(ApiError::illegal_transition(&locked.status, to))
    }
}

/// What a transition's audit event says.
pub(crate) struct Transition<'a> {
    /// The state after it.
    pub(crate) to: &'a str,
    /// The event type.
    pub(crate) kind: &'a str,
    /// Who did it.
    pub(crate) actor: &'a str,
    /// Why, when said.
    pub(crate) reason: Option<&'a str>,
    /// More attributes (an object).
    pub(crate) attributes: Value,
}

/// After the update: reads the after snapshot and appends the audit event
/// (before and after) to the export's chain, in the same transaction.
pub(crate) async fn audited(
    app: &AppState,
    conn: &mut PgConnection,
    locked: &Locked,
    t: Transition<'_>,
) -> Result<Value, ApiError> {
    let Transition {
        to,
        kind,
        actor,
        reason,
        attributes,
    } = t;
    let after = snapshot(app, conn, locked.id)
        .await?
        .ok_or_else(|| ApiError::internal("the export vanished during its transition"))?;
    let mut e = event(kind, &locked.id.to_string(), actor, Outcome::Updated)
        .attribute("from", locked.status.clone())
        .attribute("to", to.to_owned())
        .before(locked.before.clone())
        .after(after.clone());
    if let Some(r) = reason {
        e = e.reason(r);
    }
    if let Value::Object(attrs) = attributes {
        e = e.attributes(attrs);
    }
    app.audit_in(conn, &stream(locked.id), &e.build()).await?;
    if locked.status != to {
        metrics::histogram!(metric::STAGE_SECONDS, "state" => locked.status.clone())
            .record(locked.in_state);
    }
    metrics::counter!(metric::TRANSITIONS, "to" => to.to_owned()).increment(1);
    Ok(after)
}

/// The path's export id.
pub(crate) fn export_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("staged export", "with that id (ids are UUIDs)"))
}

fn created(status: StatusCode, body: Value, replayed: bool) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// A checked staging request.
struct StageRequest {
    invoice_id: Uuid,
    export_format: String,
    destination_system: String,
    export_data: Value,
    prepared_by: String,
    priority: i32,
}

fn stage_request(v: &Value, default_priority: i32) -> Result<StageRequest, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let invoice_id = v
        .get("invoice_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok());
    if invoice_id.is_none() {
        errors.push(("/invoice_id".into(), "invoice_id must be a UUID".into()));
    }
    let export_format = text_field(v, "export_format", 8, &mut errors).to_ascii_lowercase();
    if !export_format.is_empty() && !FORMATS.contains(&export_format.as_str()) {
        errors.push((
            "/export_format".into(),
            "export_format is csv, json or xml".into(),
        ));
    }
    let destination_system = text_field(v, "destination_system", 64, &mut errors);
    if !destination_system
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        errors.push((
            "/destination_system".into(),
            "destination_system is 1 to 64 of a-z, 0-9, - and _".into(),
        ));
    }
    let export_data = v.get("export_data").cloned().unwrap_or(Value::Null);
    if !export_data.is_object() {
        errors.push((
            "/export_data".into(),
            "export_data must be an object".into(),
        ));
    }
    let prepared_by = text_field(v, "prepared_by", 128, &mut errors);
    let priority = match v.get("priority") {
        None | Some(Value::Null) => default_priority,
        Some(p) => match p.as_i64().and_then(|p| i32::try_from(p).ok()) {
            Some(p) if (1..=10).contains(&p) => p,
            _ => {
                errors.push((
                    "/priority".into(),
                    "priority is a whole number from 1 to 10".into(),
                ));
                default_priority
            }
        },
    };
    match (errors.is_empty(), invoice_id) {
        (true, Some(invoice_id)) => Ok(StageRequest {
            invoice_id,
            export_format,
            destination_system,
            export_data,
            prepared_by,
            priority,
        }),
        _ => Err(errors),
    }
}

/// How many approvals an export of `total` needs.
fn required_approvals(app: &AppState, total: Option<Money>) -> i32 {
    if app.config.approval_chains && total.is_some_and(|t| t > app.config.second_approval_above) {
        2
    } else {
        1
    }
}

/// Stages `req` once per (invoice, destination, format); `Found` is the
/// existing export.
async fn stage_one(
    app: &AppState,
    req: &StageRequest,
    batch: Option<Uuid>,
) -> Result<Inserted<Value>, ApiError> {
    let a = invoice::validate(&req.export_data);
    let id = Uuid::now_v7();
    let insert_sql = app.sql_text(&format!(
        "INSERT INTO {{{{schema}}}}.staged_exports AS e (id, invoice_id, status, export_format,
             destination_system, original_data, prepared_data, total_amount, prepared_by,
             validation_errors, validation_warnings, quality_score, required_approvals, priority,
             compliance_flags, batch_id)
         VALUES ($1, $2, 'PREPARED', $3, $4, $5, $5, $6::numeric, $7, $8, $9, $10, $11, $12, $13, $14)
         RETURNING {SNAPSHOT}"
    ));
    let select_sql = app.sql_text(&format!(
        "SELECT {SNAPSHOT} FROM {{{{schema}}}}.staged_exports e
         WHERE invoice_id = $1 AND destination_system = $2 AND export_format = $3"
    ));
    let required = required_approvals(app, a.total);
    let key = NaturalKey::new(
        || {
            sqlx::query_as::<_, (sqlx::types::Json<Value>,)>(AssertSqlSafe(insert_sql.clone()))
                .bind(id)
                .bind(req.invoice_id)
                .bind(req.export_format.clone())
                .bind(req.destination_system.clone())
                .bind(sqlx::types::Json(a.data.clone()))
                .bind(a.total.map(|m| m.to_decimal()))
                .bind(req.prepared_by.clone())
                .bind(sqlx::types::Json(a.errors.clone()))
                .bind(sqlx::types::Json(a.warnings.clone()))
                .bind(a.quality_score)
                .bind(required)
                .bind(req.priority)
                .bind(app.config.compliance_flags.clone())
                .bind(batch)
        },
        || {
            sqlx::query_as::<_, (sqlx::types::Json<Value>,)>(AssertSqlSafe(select_sql.clone()))
                .bind(req.invoice_id)
                .bind(req.destination_system.clone())
                .bind(req.export_format.clone())
        },
    )
    .constraint("staged_exports_invoice_destination_format_unique");
    let mut tx = app.pool.begin().await?;
    let exists: Option<Uuid> =
        sqlx::query_scalar(app.sql("SELECT id FROM {{schema}}.invoices WHERE id = $1"))
            .bind(req.invoice_id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("invoice", &req.invoice_id.to_string()));
    }
    match key.insert_or_get_in(&mut tx).await.map_err(natural_error)? {
        Inserted::Created((after,)) => {
            sqlx::query(app.sql(
                "INSERT INTO {{schema}}.export_versions (export_id, version, data, changes, reason, changed_by)
                 VALUES ($1, 1, $2, '[]', 'prepared', $3)",
            ))
            .bind(id)
            .bind(sqlx::types::Json(&a.data))
            .bind(&req.prepared_by)
            .execute(&mut *tx)
            .await?;
            let e = event(
                "staging.export.prepared",
                &id.to_string(),
                &req.prepared_by,
                Outcome::Created,
            )
            .attribute("to", "PREPARED")
            .attribute("quality_score", a.quality_score)
            .after(after.0.clone())
            .build();
            app.audit_in(&mut tx, &stream(id), &e).await?;
            tx.commit().await?;
            metrics::counter!(metric::TRANSITIONS, "to" => "PREPARED").increment(1);
            Ok(Inserted::Created(after.0))
        }
        Inserted::Found((row,)) => {
            tx.rollback().await?;
            metrics::counter!(metric::DUPLICATES, "operation" => "stage").increment(1);
            Ok(Inserted::Found(row.0))
        }
    }
}

/// `POST /api/v1/staging/stage`.
#[utoipa::path(post, path = "/api/v1/staging/stage", tag = "staging",
    request_body(content = Object, description = "`{invoice_id, export_format, destination_system, export_data, prepared_by, priority?}`"),
    responses(
        (status = 201, description = "The staged export (`PREPARED`)", body = Object),
        (status = 200, description = "Staged before for this invoice, destination and format: that export (`Idempotent-Replayed: true`)", body = Object),
        (status = 404, description = "`not-found`: no such invoice", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    ))]
pub(crate) async fn stage(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = json_body(&body)?;
    let req = stage_request(&v, app.config.default_priority).map_err(ApiError::validation)?;
    Ok(match stage_one(&app, &req, None).await? {
        Inserted::Created(e) => created(StatusCode::CREATED, e, false),
        Inserted::Found(e) => created(StatusCode::OK, e, true),
    })
}

/// Approvals of `id`, oldest first.
async fn approvals(app: &AppState, conn: &mut PgConnection, id: Uuid) -> Result<Value, ApiError> {
    let rows: Vec<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(
        "SELECT to_jsonb(a) - 'export_id' FROM {{schema}}.approvals a
         WHERE export_id = $1 ORDER BY decided_at",
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Value::Array(rows.into_iter().map(|j| j.0).collect()))
}

/// `GET /api/v1/staging/{id}`.
#[utoipa::path(get, path = "/api/v1/staging/{id}", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    responses((status = 200, description = "The export with its approvals", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let mut conn = app.pool.acquire().await?;
    let Some(mut e) = snapshot(&app, &mut conn, id).await? else {
        return Err(ApiError::not_found("staged export", &id.to_string()));
    };
    let a = approvals(&app, &mut conn, id).await?;
    if let Some(obj) = e.as_object_mut() {
        obj.insert("approvals".into(), a);
    }
    Ok(axum::Json(e).into_response())
}

/// `POST /api/v1/staging/{id}/review` `{"reviewer"}`.
#[utoipa::path(post, path = "/api/v1/staging/{id}/review", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    request_body(content = Object, description = "`{reviewer}`"),
    responses((status = 200, description = "The export, `UNDER_REVIEW`", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "`illegal-transition`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn review(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let v = json_body(&body)?;
    let mut errors = Vec::new();
    let reviewer = text_field(&v, "reviewer", 128, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut tx = app.pool.begin().await?;
    let locked = lock(&app, &mut tx, id).await?;
    check(&locked, "UNDER_REVIEW")?;
    guarded_update(
        &mut tx,
        &locked,
        "UNDER_REVIEW",
        sqlx::query(app.sql(
            "UPDATE {{schema}}.staged_exports SET status = 'UNDER_REVIEW', reviewer = $3,
                 updated_at = now()
             WHERE id = $1 AND status = $2",
        ))
        .bind(id)
        .bind(locked.status.clone())
        .bind(reviewer.clone()),
    )
    .await?;
    let after = audited(
        &app,
        &mut tx,
        &locked,
        Transition {
            to: "UNDER_REVIEW",
            kind: "staging.export.review_started",
            actor: &reviewer,
            reason: None,
            attributes: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(after).into_response())
}

/// `PUT /api/v1/staging/{id}/reject` `{"rejected_by", "reason"}`.
#[utoipa::path(put, path = "/api/v1/staging/{id}/reject", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    request_body(content = Object, description = "`{rejected_by, reason}`"),
    responses((status = 200, description = "The export, `REJECTED`", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "`illegal-transition`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn reject(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let v = json_body(&body)?;
    let mut errors = Vec::new();
    let by = text_field(&v, "rejected_by", 128, &mut errors);
    let reason = text_field(&v, "reason", 2000, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut tx = app.pool.begin().await?;
    let locked = lock(&app, &mut tx, id).await?;
    check(&locked, "REJECTED")?;
    guarded_update(
        &mut tx,
        &locked,
        "REJECTED",
        sqlx::query(app.sql(
            "UPDATE {{schema}}.staged_exports SET status = 'REJECTED', rejected_by = $3,
                 rejection_reason = $4, updated_at = now()
             WHERE id = $1 AND status = $2",
        ))
        .bind(id)
        .bind(locked.status.clone())
        .bind(by.clone())
        .bind(reason.clone()),
    )
    .await?;
    let after = audited(
        &app,
        &mut tx,
        &locked,
        Transition {
            to: "REJECTED",
            kind: "staging.export.rejected",
            actor: &by,
            reason: Some(&reason),
            attributes: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(after).into_response())
}

/// A checked approval request.
struct ApproveRequest {
    approved_by: String,
    approved_data: Option<Value>,
    change_reason: Option<String>,
    comments: Option<String>,
}

fn approve_request(v: &Value) -> Result<ApproveRequest, ApiError> {
    let mut errors = Vec::new();
    let approved_by = text_field(v, "approved_by", 128, &mut errors);
    let approved_data = match v.get("approved_data") {
        None | Some(Value::Null) => None,
        Some(d @ Value::Object(_)) => Some(d.clone()),
        Some(_) => {
            errors.push((
                "/approved_data".into(),
                "approved_data must be an object".into(),
            ));
            None
        }
    };
    let change_reason = optional_text(v, "change_reason", 2000, &mut errors);
    let comments = optional_text(v, "approval_comments", 2000, &mut errors);
    if errors.is_empty() {
        Ok(ApproveRequest {
            approved_by,
            approved_data,
            change_reason,
            comments,
        })
    } else {
        Err(ApiError::validation(errors))
    }
}

/// `PUT /api/v1/staging/{id}/approve`.
#[utoipa::path(put, path = "/api/v1/staging/{id}/approve", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    request_body(content = Object, description = "`{approved_by, approved_data?, change_reason?, approval_comments?}`; `change_reason` is required when the data changes"),
    responses((status = 200, description = "The export, `APPROVED`", body = Object),
              (status = 202, description = "The first of two approvals is recorded; the export stays `UNDER_REVIEW`", body = Object),
              (status = 403, description = "`segregation-of-duties`: the preparer, or the first approver again", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "`illegal-transition` or `quality-below-threshold`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn approve(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let req = approve_request(&json_body(&body)?)?;
    let mut tx = app.pool.begin().await?;
    let locked = lock(&app, &mut tx, id).await?;
    check(&locked, "APPROVED")?;
    if locked.text("prepared_by") == Some(req.approved_by.as_str()) {
        return Err(ApiError::segregation_of_duties(
            "the preparer of an export cannot approve it",
        ));
    }
    // Corrected data: stored beside the original with its field-level
    // diff and reason, and validated again.
    let current = match locked.get("approved_data") {
        Value::Null => locked.get("prepared_data").clone(),
        d => d.clone(),
    };
    let mut assessed: Option<Assessed> = None;
    let mut changes: Vec<Value> = Vec::new();
    if let Some(new) = &req.approved_data {
        let a = invoice::validate(new);
        changes = invoice::diff(&current, &a.data);
        if !changes.is_empty() {
            let Some(reason) = &req.change_reason else {
                return Err(ApiError::validation(vec![(
                    "/change_reason".into(),
                    "change_reason is required when approved_data changes the data".into(),
                )]));
            };
            let required = required_approvals(&app, a.total);
            sqlx::query(app.sql(
                "UPDATE {{schema}}.staged_exports SET approved_data = $2, field_changes = $3,
                     change_reason = $4, total_amount = $5::numeric, validation_errors = $6,
                     validation_warnings = $7, quality_score = $8, required_approvals = $9
                 WHERE id = $1",
            ))
            .bind(id)
            .bind(sqlx::types::Json(&a.data))
            .bind(sqlx::types::Json(&changes))
            .bind(reason)
            .bind(a.total.map(|m| m.to_decimal()))
            .bind(sqlx::types::Json(&a.errors))
            .bind(sqlx::types::Json(&a.warnings))
            .bind(a.quality_score)
            .bind(required)
            .execute(&mut *tx)
            .await?;
            if app.config.diff_tracking {
                sqlx::query(app.sql(
                    "INSERT INTO {{schema}}.export_versions (export_id, version, data, changes, reason, changed_by)
                     SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5
                     FROM {{schema}}.export_versions WHERE export_id = $1",
                ))
                .bind(id)
                .bind(sqlx::types::Json(&a.data))
                .bind(sqlx::types::Json(&changes))
                .bind(reason)
                .bind(&req.approved_by)
                .execute(&mut *tx)
                .await?;
            }
            assessed = Some(a);
        }
    }
    let score = assessed.as_ref().map_or_else(
        || locked.get("quality_score").as_i64().unwrap_or(0),
        |a| i64::from(a.quality_score),
    );
    let score = i32::try_from(score).unwrap_or(0);
    if score < app.config.quality_threshold {
        return Err(ApiError::quality_too_low(
            score,
            app.config.quality_threshold,
        ));
    }
    let required = assessed.as_ref().map_or_else(
        || i32::try_from(locked.get("required_approvals").as_i64().unwrap_or(1)).unwrap_or(1),
        |a| required_approvals(&app, a.total),
    );
    // The live first approval of a two-level chain, if any; an expired one
    // is marked so (audited) and the chain starts again.
    let first: Option<(String, bool)> = sqlx::query_as(app.sql(
        "SELECT approver, expires_at < now() FROM {{schema}}.approvals
         WHERE export_id = $1 AND level = 1 AND status = 'APPROVED'",
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let first = match first {
        Some((who, true)) => {
            sqlx::query(app.sql(
                "UPDATE {{schema}}.approvals SET status = 'EXPIRED'
                 WHERE export_id = $1 AND level = 1 AND status = 'APPROVED'",
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let e = event(
                "staging.export.approval_expired",
                &id.to_string(),
                &who,
                Outcome::Rejected,
            )
            .reason("the first approval expired before the second")
            .build();
            app.audit_in(&mut tx, &stream(id), &e).await?;
            None
        }
        Some((who, false)) => Some(who),
        None => None,
    };
    let level = if required == 2 && first.is_some() {
        2
    } else {
        1
    };
    if level == 2 && first.as_deref() == Some(req.approved_by.as_str()) {
        return Err(ApiError::segregation_of_duties(
            "the second approval must be by another person than the first",
        ));
    }
    sqlx::query(app.sql(
        "INSERT INTO {{schema}}.approvals (export_id, level, approver, comments, status, expires_at)
         VALUES ($1, $2, $3, $4, 'APPROVED', now() + make_interval(secs => $5))",
    ))
    .bind(id)
    .bind(level)
    .bind(&req.approved_by)
    .bind(&req.comments)
    .bind(app.config.approval_timeout.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let attrs = json!({"level": level, "required_approvals": required, "field_changes": changes});
    if level < required {
        // First of two: recorded, audited, still under review.
        sqlx::query(
            app.sql("UPDATE {{schema}}.staged_exports SET updated_at = updated_at WHERE id = $1"),
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let after = audited(
            &app,
            &mut tx,
            &locked,
            Transition {
                to: &locked.status.clone(),
                kind: "staging.export.approval_recorded",
                actor: &req.approved_by,
                reason: req.change_reason.as_deref(),
                attributes: attrs,
            },
        )
        .await?;
        let a = approvals(&app, &mut tx, id).await?;
        tx.commit().await?;
        let mut body = after;
        if let Some(obj) = body.as_object_mut() {
            obj.insert("approvals".into(), a);
        }
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    }
    guarded_update(
        &mut tx,
        &locked,
        "APPROVED",
        sqlx::query(app.sql(
            "UPDATE {{schema}}.staged_exports SET status = 'APPROVED', approved_by = $3,
                 approved_data = coalesce(approved_data, prepared_data),
                 approved_at = now(), updated_at = now()
             WHERE id = $1 AND status = $2",
        ))
        .bind(id)
        .bind(locked.status.clone())
        .bind(req.approved_by.clone()),
    )
    .await?;
    let mut after = audited(
        &app,
        &mut tx,
        &locked,
        Transition {
            to: "APPROVED",
            kind: "staging.export.approved",
            actor: &req.approved_by,
            reason: req.change_reason.as_deref(),
            attributes: attrs,
        },
    )
    .await?;
    let a = approvals(&app, &mut tx, id).await?;
    tx.commit().await?;
    if let Some(obj) = after.as_object_mut() {
        obj.insert("approvals".into(), a);
    }
    Ok(axum::Json(after).into_response())
}

/// `GET /api/v1/staging/{id}/diff`: every version with its field-level changes.
#[utoipa::path(get, path = "/api/v1/staging/{id}/diff", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    responses((status = 200, description = "`{export_id, original_data, current_data, versions: [{version, data, changes, reason, changed_by, created_at}]}`", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn diff(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let mut conn = app.pool.acquire().await?;
    let Some(e) = snapshot(&app, &mut conn, id).await? else {
        return Err(ApiError::not_found("staged export", &id.to_string()));
    };
    let versions: Vec<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(
        "SELECT to_jsonb(v) - 'export_id' FROM {{schema}}.export_versions v
         WHERE export_id = $1 ORDER BY version",
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let current = match &e["approved_data"] {
        Value::Null => e["prepared_data"].clone(),
        d => d.clone(),
    };
    Ok(axum::Json(json!({
        "export_id": id,
        "original_data": e["original_data"],
        "current_data": current,
        "field_changes": invoice::diff(&e["original_data"], &current),
        "versions": versions.into_iter().map(|v| v.0).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/staging/{id}/audit`: the export's trail and its chain check.
#[utoipa::path(get, path = "/api/v1/staging/{id}/audit", tag = "staging",
    params(("id" = String, Path, description = "The export id")),
    responses((status = 200, description = "`{export_id, events: [...], chain: {events, intact, last_seq}}`", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn audit(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let mut conn = app.pool.acquire().await?;
    if snapshot(&app, &mut conn, id).await?.is_none() {
        return Err(ApiError::not_found("staged export", &id.to_string()));
    }
    let events: Vec<sqlx::types::Json<Value>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT content::jsonb FROM \"{}\".events WHERE stream = $1 ORDER BY seq",
        app.audit.schema()
    )))
    .bind(stream(id))
    .fetch_all(&mut *conn)
    .await?;
    let report = app.audit.verify(&stream(id)).await.map_err(|e| {
        tracing::error!(error = %e, "audit chain not verified");
        ApiError::unavailable("the audit chain could not be read")
    })?;
    Ok(axum::Json(json!({
        "export_id": id,
        "events": events.into_iter().map(|e| e.0).collect::<Vec<_>>(),
        "chain": {
            "events": report.events,
            "last_seq": report.last_seq,
            "intact": report.is_intact(),
        },
    }))
    .into_response())
}

/// `POST /api/v1/staging/batch` `{"batch_id"?, "submitted_by", "items": [...]}`.
#[utoipa::path(post, path = "/api/v1/staging/batch", tag = "staging",
    request_body(content = Object, description = "`{batch_id?, submitted_by, items: [stage requests]}`; resubmitting a batch (same `batch_id`, or the same items) stages only what is missing"),
    responses((status = 200, description = "The batch's progress and each item's export id", body = Object),
              (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn batch(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let v = json_body(&body)?;
    let mut errors = Vec::new();
    let submitted_by = text_field(&v, "submitted_by", 128, &mut errors);
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() || items.len() > app.config.max_batch_size {
        errors.push((
            "/items".into(),
            format!("items is 1 to {} stage requests", app.config.max_batch_size),
        ));
    }
    let batch_id = match v.get("batch_id") {
        None | Some(Value::Null) => {
            // Without an id the batch is keyed by its content.
            let key = KeySpec::new("staging/batch")
                .derived([
                    submitted_by.as_str(),
                    &serde_json::to_string(&items).unwrap_or_default(),
                ])
                .storage_key();
            let mut b = [0u8; 16];
            b.copy_from_slice(&key.as_bytes()[..16]);
            Some(uuid::Builder::from_random_bytes(b).into_uuid())
        }
        Some(Value::String(s)) => s.parse::<Uuid>().ok(),
        Some(_) => None,
    };
    if batch_id.is_none() {
        errors.push(("/batch_id".into(), "batch_id must be a UUID".into()));
    }
    let mut reqs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match stage_request(item, app.config.default_priority) {
            Ok(r) => reqs.push(r),
            Err(errs) => {
                errors.extend(errs.into_iter().map(|(p, d)| (format!("/items/{i}{p}"), d)))
            }
        }
    }
    let Some(batch_id) = batch_id.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    sqlx::query(app.sql(
        "INSERT INTO {{schema}}.staging_batches (id, submitted_by, total_items) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING",
    ))
    .bind(batch_id)
    .bind(&submitted_by)
    .bind(i32::try_from(reqs.len()).unwrap_or(i32::MAX))
    .execute(&app.pool)
    .await?;
    let mut results = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let item = match stage_one(&app, r, Some(batch_id)).await {
            Ok(Inserted::Created(e)) => json!({"index": i, "export_id": e["id"], "created": true}),
            Ok(Inserted::Found(e)) => json!({"index": i, "export_id": e["id"], "created": false}),
            Err(e) => json!({"index": i, "error": e.body()}),
        };
        results.push(item);
    }
    let mut progress = batch_progress(&app, batch_id).await?;
    if let Some(obj) = progress.as_object_mut() {
        obj.insert("items".into(), Value::Array(results));
    }
    Ok(axum::Json(progress).into_response())
}

async fn batch_progress(app: &AppState, id: Uuid) -> Result<Value, ApiError> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(
        "SELECT jsonb_build_object(
             'id', b.id, 'submitted_by', b.submitted_by, 'total_items', b.total_items,
             'staged', (SELECT count(*) FROM {{schema}}.staged_exports e WHERE e.batch_id = b.id),
             'by_status', coalesce((SELECT jsonb_object_agg(status, n) FROM (
                 SELECT status, count(*) AS n FROM {{schema}}.staged_exports e
                 WHERE e.batch_id = b.id GROUP BY status) s), '{}'),
             'average_quality', (SELECT round(avg(quality_score))::int FROM {{schema}}.staged_exports e WHERE e.batch_id = b.id),
             'lowest_quality', (SELECT min(quality_score) FROM {{schema}}.staged_exports e WHERE e.batch_id = b.id),
             'created_at', b.created_at)
         FROM {{schema}}.staging_batches b WHERE b.id = $1",
    ))
    .bind(id)
    .fetch_optional(&app.pool)
    .await?;
    row.map(|j| j.0)
        .ok_or_else(|| ApiError::not_found("batch", &id.to_string()))
}

/// `GET /api/v1/staging/batches/{id}`: progress and aggregated quality.
#[utoipa::path(get, path = "/api/v1/staging/batches/{id}", tag = "staging",
    params(("id" = String, Path, description = "The batch id")),
    responses((status = 200, description = "`{id, total_items, staged, by_status, average_quality, lowest_quality}`", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get_batch(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("batch", "with that id (ids are UUIDs)"))?;
    Ok(axum::Json(batch_progress(&app, id).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine() {
        let allowed: Vec<(&str, &str)> = STATES
            .iter()
            .flat_map(|a| STATES.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| may_become(a, b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                ("PREPARED", "UNDER_REVIEW"),
                ("UNDER_REVIEW", "APPROVED"),
                ("UNDER_REVIEW", "REJECTED"),
                ("APPROVED", "POSTED"),
                ("APPROVED", "FAILED"),
                ("POSTED", "ROLLED_BACK"),
                ("FAILED", "POSTED"),
                ("FAILED", "FAILED"),
            ]
        );
    }
}
