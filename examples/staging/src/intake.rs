//! Intake: `POST /api/v1/ingestion/upload` keeps a file once per key and
//! extracts its invoice. The key is the client's `idempotency_key` (scoped
//! by vendor and user) or, without one, `vendor_id + SHA-256(file) +
//! uploaded_by`; the ingestion table's UNIQUE constraint on it is the
//! guard ([`NaturalKey`]), so racing uploads of one file make one job.

use std::collections::HashMap;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use idempotency_audit::Outcome;
use idempotency_core::KeySpec;
use idempotency_postgres::natural::{Inserted, NaturalKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::invoice::{self, Assessed};
use crate::problem::ApiError;
use crate::{AppState, event, metric};

/// Accepted length of `vendor_id`, `uploaded_by` and `idempotency_key`.
const MAX_ID: usize = 128;
const MAX_KEY: usize = 255;

/// An ingestion job as stored: id, keyed by, file hash, invoice id.
type JobRow = (Uuid, String, String, Uuid);

/// An ingestion job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) id: Uuid,
    pub(crate) keyed_by: String,
    pub(crate) file_hash: String,
}

impl From<JobRow> for Job {
    fn from((id, keyed_by, file_hash, _invoice): JobRow) -> Self {
        Self {
            id,
            keyed_by,
            file_hash,
        }
    }
}

/// A visible, bounded identifier from the query.
fn ident(q: &HashMap<String, String>, name: &str, max: usize) -> Result<String, (String, String)> {
    match q.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() && v.len() <= max && v.chars().all(|c| !c.is_control()) => {
            Ok(v.to_owned())
        }
        _ => Err((
            format!("/query/{name}"),
            format!("{name} is required: 1 to {max} characters, no control characters"),
        )),
    }
}

/// The uploaded file.
struct Upload {
    bytes: Vec<u8>,
    hash: String,
    content_type: String,
    file_name: Option<String>,
}

/// Reads the `file` field, hashing it as it streams; over `limit` bytes is 413.
async fn read_file(mut form: Multipart, limit: usize) -> Result<Upload, ApiError> {
    let failed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::upload_too_large(limit)
        } else {
            ApiError::invalid_upload(format!(
                "the multipart body cannot be read: {}",
                e.body_text()
            ))
        }
    };
    while let Some(mut field) = form.next_field().await.map_err(failed)? {
        if field.name() != Some("file") {
            continue;
        }
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .chars()
            .take(127)
            .collect();
        let file_name = field
            .file_name()
            .map(|n| n.chars().filter(|c| !c.is_control()).take(255).collect());
        let (mut bytes, mut hasher) = (Vec::new(), Sha256::new());
        while let Some(chunk) = field.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::upload_too_large(limit));
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        return Ok(Upload {
            bytes,
            hash: hex::encode(hasher.finalize()),
            content_type,
            file_name,
        });
    }
    Err(ApiError::invalid_upload("the form has no file field"))
}

/// Keeps `upload` under its hash in the file directory (written to a
/// temporary name, then renamed: a reader never sees half a file).
async fn keep(app: &AppState, upload: &Upload) -> Result<(), ApiError> {
    let path = app.config.file_dir.join(&upload.hash);
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(());
    }
    let tmp = app
        .config
        .file_dir
        .join(format!(".{}.{}", upload.hash, Uuid::new_v4()));
    let written = async {
        tokio::fs::write(&tmp, &upload.bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    written.map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "cannot keep the uploaded file");
        let _ = std::fs::remove_file(&tmp);
        ApiError::internal("the file could not be stored; nothing was ingested")
    })
}

/// The job and its invoice's assessment, as answered.
async fn job_json(app: &AppState, id: Uuid) -> Result<Option<Value>, ApiError> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(
        "SELECT jsonb_build_object(
             'id', j.id, 'status', j.status, 'vendor_id', j.vendor_id,
             'uploaded_by', j.uploaded_by, 'file_hash', j.file_hash,
             'file_size', j.file_size, 'content_type', j.content_type,
             'file_name', j.file_name, 'keyed_by', j.keyed_by,
             'invoice_id', j.invoice_id, 'created_at', j.created_at,
             'invoice', jsonb_build_object(
                 'id', i.id, 'status', i.status, 'data', i.data,
                 'total_amount', i.total_amount::text, 'currency', i.currency,
                 'validation_errors', i.validation_errors,
                 'validation_warnings', i.validation_warnings,
                 'quality_score', i.quality_score))
         FROM {{schema}}.ingestion_jobs j JOIN {{schema}}.invoices i ON i.id = j.invoice_id
         WHERE j.id = $1",
    ))
    .bind(id)
    .fetch_optional(&app.pool)
    .await?;
    Ok(row.map(|j| j.0))
}

/// `POST /api/v1/ingestion/upload?vendor_id=..&uploaded_by=..[&idempotency_key=..]`.
#[utoipa::path(post, path = "/api/v1/ingestion/upload", tag = "intake",
    params(
        ("vendor_id" = String, Query, description = "The vendor (1 to 128 characters)"),
        ("uploaded_by" = String, Query, description = "The uploading user (1 to 128 characters)"),
        ("idempotency_key" = Option<String>, Query, description = "A client key (1 to 255 characters); without it the key is vendor + SHA-256(file) + user"),
    ),
    request_body(content_type = "multipart/form-data", description = "Field `file`: a JSON or CSV invoice, or any other file (manual entry)"),
    responses(
        (status = 201, description = "The new ingestion job and its invoice", body = Object),
        (status = 200, description = "The same file from the same vendor and user: the first job (`Idempotent-Replayed: true`)", body = Object),
        (status = 400, description = "`invalid-upload`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency-key-reused`: the key was used with another file; recorded", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "`upload-too-large`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
    ))]
pub(crate) async fn upload(
    State(app): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let vendor = ident(&q, "vendor_id", MAX_ID);
    let user = ident(&q, "uploaded_by", MAX_ID);
    let client_key = match q.get("idempotency_key") {
        None => Ok(None),
        Some(_) => ident(&q, "idempotency_key", MAX_KEY).map(Some),
    };
    let (vendor, user, client_key) = match (vendor, user, client_key) {
        (Ok(v), Ok(u), Ok(k)) => (v, u, k),
        (v, u, k) => {
            let errors = [v.err(), u.err(), k.err()].into_iter().flatten().collect();
            return Err(ApiError::validation(errors));
        }
    };
    let form = form.map_err(|e| ApiError::invalid_upload(e.body_text()))?;
    let upload = read_file(form, app.config.max_upload_bytes).await?;
    keep(&app, &upload).await?;
    let (keyed_by, dedup_key) = match &client_key {
        Some(k) => (
            "client",
            KeySpec::new("staging/upload")
                .derived(["client", vendor.as_str(), user.as_str(), k.as_str()])
                .storage_key()
                .to_hex(),
        ),
        None => (
            "content",
            KeySpec::new("staging/upload")
                .derived([
                    "content",
                    vendor.as_str(),
                    upload.hash.as_str(),
                    user.as_str(),
                ])
                .storage_key()
                .to_hex(),
        ),
    };
    let assessed = invoice::extract(&upload.content_type, &upload.bytes);
    let (job_id, invoice_id) = (Uuid::now_v7(), Uuid::now_v7());
    let size = i64::try_from(upload.bytes.len()).unwrap_or(i64::MAX);
    let insert_sql = app.sql_text(
        "INSERT INTO {{schema}}.ingestion_jobs (id, dedup_key, keyed_by, vendor_id, uploaded_by,
             file_hash, file_size, content_type, file_name, status, invoice_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id, keyed_by, file_hash, invoice_id",
    );
    let select_sql = app.sql_text(
        "SELECT id, keyed_by, file_hash, invoice_id FROM {{schema}}.ingestion_jobs
         WHERE dedup_key = $1",
    );
    let key = NaturalKey::new(
        || {
            sqlx::query_as::<_, JobRow>(AssertSqlSafe(insert_sql.clone()))
                .bind(job_id)
                .bind(dedup_key.clone())
                .bind(keyed_by)
                .bind(vendor.clone())
                .bind(user.clone())
                .bind(upload.hash.clone())
                .bind(size)
                .bind(upload.content_type.clone())
                .bind(upload.file_name.clone())
                .bind(assessed.status)
                .bind(invoice_id)
        },
        || sqlx::query_as::<_, JobRow>(AssertSqlSafe(select_sql.clone())).bind(dedup_key.clone()),
    )
    .constraint("ingestion_jobs_dedup_key_unique");
    let mut tx = app.pool.begin().await?;
    let job = key.insert_or_get_in(&mut tx).await.map_err(natural_error)?;
    let job = match job {
        Inserted::Created(job) => {
            let job = Job::from(job);
            insert_invoice(&app, &mut tx, invoice_id, &vendor, &assessed).await?;
            let e = event(
                "staging.upload.ingested",
                &job.id.to_string(),
                &user,
                Outcome::Created,
            )
            .reason(format!("keyed by {keyed_by}"))
            .attribute("file_hash", upload.hash.clone())
            .attribute("quality_score", assessed.quality_score)
            .after(json!({"job_id": job.id, "invoice_id": invoice_id, "status": assessed.status}))
            .build();
            app.audit_in(&mut tx, &format!("staging/ingestion/{}", job.id), &e)
                .await?;
            tx.commit().await?;
            let body = job_json(&app, job.id).await?.unwrap_or(Value::Null);
            return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
        }
        Inserted::Found(job) => {
            tx.rollback().await?;
            Job::from(job)
        }
    };
    if job.keyed_by == "client" && job.file_hash != upload.hash {
        record_conflict(&app, &job, &dedup_key, &upload.hash, &user).await?;
        return Err(ApiError::key_reused(job.id));
    }
    metrics::counter!(metric::DUPLICATES, "operation" => "upload").increment(1);
    let body = job_json(&app, job.id).await?.unwrap_or(Value::Null);
    let mut res = (StatusCode::OK, axum::Json(body)).into_response();
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(res)
}

pub(crate) fn natural_error(e: idempotency_postgres::natural::NaturalKeyError) -> ApiError {
    match e {
        idempotency_postgres::natural::NaturalKeyError::Database(db) => ApiError::from(db),
        other => {
            tracing::warn!(error = %other, "insert-or-get not settled");
            ApiError::unavailable("the upload could not be settled; retry")
        }
    }
}

async fn insert_invoice(
    app: &AppState,
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    vendor: &str,
    a: &Assessed,
) -> Result<(), ApiError> {
    sqlx::query(app.sql(
        "INSERT INTO {{schema}}.invoices (id, vendor_id, status, data, total_amount, currency,
             validation_errors, validation_warnings, quality_score)
         VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8, $9)",
    ))
    .bind(id)
    .bind(vendor)
    .bind(a.status)
    .bind(sqlx::types::Json(&a.data))
    .bind(a.total.map(|m| m.to_decimal()))
    .bind(a.data.get("currency").and_then(Value::as_str))
    .bind(sqlx::types::Json(&a.errors))
    .bind(sqlx::types::Json(&a.warnings))
    .bind(a.quality_score)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a reused key: a conflict row and an audit event on the first
/// job's trail, in one transaction.
async fn record_conflict(
    app: &AppState,
    job: &Job,
    dedup_key: &str,
    offered_hash: &str,
    user: &str,
) -> Result<(), ApiError> {
    let mut tx = app.pool.begin().await?;
    let id = Uuid::now_v7();
    sqlx::query(app.sql(
        "INSERT INTO {{schema}}.idempotency_conflicts (id, operation, dedup_key, existing_job_id,
             existing_hash, offered_hash, offered_by)
         VALUES ($1, 'upload', $2, $3, $4, $5, $6)",
    ))
    .bind(id)
    .bind(dedup_key)
    .bind(job.id)
    .bind(&job.file_hash)
    .bind(offered_hash)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    let e = event(
        "staging.upload.conflict",
        &job.id.to_string(),
        user,
        Outcome::Conflict,
    )
    .reason("idempotency_key reused with another file")
    .attribute("conflict_id", id.to_string())
    .attribute("existing_hash", job.file_hash.clone())
    .attribute("offered_hash", offered_hash.to_owned())
    .build();
    app.audit_in(&mut tx, &format!("staging/ingestion/{}", job.id), &e)
        .await?;
    tx.commit().await?;
    metrics::counter!(metric::CONFLICTS).increment(1);
    tracing::warn!(job = %job.id, "idempotency key reused with another file; recorded");
    Ok(())
}

/// `GET /api/v1/ingestion/jobs/{id}`.
#[utoipa::path(get, path = "/api/v1/ingestion/jobs/{id}", tag = "intake",
    params(("id" = String, Path, description = "The ingestion job id")),
    responses((status = 200, description = "The job and its invoice", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get_job(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uuid = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("ingestion job", "with that id"))?;
    match job_json(&app, uuid).await? {
        Some(j) => Ok(axum::Json(j).into_response()),
        None => Err(ApiError::not_found("ingestion job", &uuid.to_string())),
    }
}

/// `GET /api/v1/invoices/{id}`.
#[utoipa::path(get, path = "/api/v1/invoices/{id}", tag = "intake",
    params(("id" = String, Path, description = "The invoice id")),
    responses((status = 200, description = "The invoice with its validation", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get_invoice(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uuid = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("invoice", "with that id"))?;
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(app.sql(
        "SELECT to_jsonb(i) || jsonb_build_object('total_amount', i.total_amount::text)
         FROM {{schema}}.invoices i WHERE id = $1",
    ))
    .bind(uuid)
    .fetch_optional(&app.pool)
    .await?;
    match row {
        Some(j) => Ok(axum::Json(j.0).into_response()),
        None => Err(ApiError::not_found("invoice", &uuid.to_string())),
    }
}
