//! Posting to the destination and rolling back, once each.
//!
//! A post is an operation run once per `staged_export_id + posted_by +
//! "post"` by [`idempotency_core::Idempotent`] over the PostgreSQL store:
//! a double click, a retry after a timeout or two processes racing get
//! one execution (duplicates wait for it and get its result). The
//! operation calls the destination with one key per export, derived from
//! the framework's record key ([`idempotency_core::downstream_key`]), the
//! same on every retry (in the call, in a later post, by another user):
//! a booking whose response was lost is found again by retrying with that
//! key, never booked twice. Up to `IDEMPOTENCY_MAX_EXECUTIONS` calls; then
//! the export is `FAILED` with the destination's error code, and a later
//! post tries again. The `POSTED` transition, its audit event and the
//! record's completion commit in one transaction (`complete_in`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use idempotency_core::{
    Completion, Execution, FailureClass, Fingerprint, KeySpec, Outcome, RunError, downstream_key,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::exports::{self, Locked, Transition, audited, check, export_id, guarded_update, lock};
use crate::problem::ApiError;
use crate::{AppState, json_body, metric, optional_text, text_field};

/// Why a post or rollback did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    /// Refused with an answer (not retried by the record).
    #[error("refused")]
    Refused(ApiError),
    /// The destination failed every call.
    #[error("destination failed: {code}")]
    Destination {
        /// Its error code (`DEST_UNAVAILABLE`, `TIMEOUT`, ...).
        code: String,
        /// What it said.
        message: String,
    },
}

impl From<ApiError> for ActionError {
    fn from(e: ApiError) -> Self {
        Self::Refused(e)
    }
}

impl From<sqlx::Error> for ActionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Refused(e.into())
    }
}

/// The destination's key for `action` (`posting`, `reversal`) of export
/// `id`: derived from a framework storage key of the export alone, so it
/// is the same on every attempt by anyone.
pub fn destination_key(id: Uuid, action: &str) -> String {
    let record = KeySpec::new("staging/destination")
        .derived([id.to_string().as_str(), action])
        .storage_key();
    downstream_key(&record, action)
}

/// One destination call's result.
enum Call {
    Ok(Value),
    /// Worth retrying with the same key (5xx, timeout, connection).
    Transient(String, String),
    /// Not worth retrying (4xx).
    Refused(String, String),
}

/// `POST {destination}{path}` with `Idempotency-Key: key`.
async fn call(app: &AppState, path: &str, key: &str, body: &Value) -> Call {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", app.config.destination_url))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_string())));
    let Ok(req) = req else {
        return Call::Refused(
            "BAD_REQUEST".into(),
            "the destination URL is not valid".into(),
        );
    };
    let answer = tokio::time::timeout(app.config.destination_timeout, async {
        let res = app.http.request(req).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await.map(|b| b.to_bytes());
        Ok::<_, hyper_util::client::legacy::Error>((status, bytes.unwrap_or_default()))
    })
    .await;
    match answer {
        Err(_) => Call::Transient(
            "TIMEOUT".into(),
            "the destination did not answer in time".into(),
        ),
        Ok(Err(e)) => Call::Transient(
            "UNREACHABLE".into(),
            format!("the destination cannot be reached: {e}"),
        ),
        Ok(Ok((status, bytes))) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = v["error_code"].as_str().unwrap_or("DEST_ERROR").to_owned();
            let message = v["message"].as_str().unwrap_or("").to_owned();
            if status.is_success() {
                Call::Ok(v)
            } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Call::Transient(code, message)
            } else {
                Call::Refused(code, message)
            }
        }
    }
}

/// Calls the destination up to `IDEMPOTENCY_MAX_EXECUTIONS` times with one key.
async fn call_with_retries(
    app: &AppState,
    path: &str,
    key: &str,
    body: &Value,
) -> Result<(Value, u32), (String, String, u32)> {
    let max = app.config.max_executions.max(1);
    let mut last = (String::new(), String::new());
    for n in 1..=max {
        match call(app, path, key, body).await {
            Call::Ok(v) => return Ok((v, n)),
            Call::Refused(code, message) => return Err((code, message, n)),
            Call::Transient(code, message) => {
                tracing::warn!(attempt = n, %code, "destination call failed; retrying with the same key");
                last = (code, message);
                if n < max {
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(n))).await;
                }
            }
        }
    }
    Err((last.0, last.1, max))
}

/// Answers an action's run.
fn answer(
    result: Result<Execution<Value>, RunError<ActionError>>,
    what: &'static str,
) -> Result<Response, ApiError> {
    match result {
        Ok(Execution::Executed(v)) => Ok(axum::Json(v).into_response()),
        Ok(Execution::Replayed(v)) => {
            metrics::counter!(metric::DUPLICATES, "operation" => what).increment(1);
            if what == "post" {
                metrics::counter!(metric::POSTINGS, "outcome" => "replayed").increment(1);
            }
            let mut res = axum::Json(v).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(res)
        }
        Err(RunError::Operation(ActionError::Refused(e))) => Err(e),
        Err(RunError::Operation(ActionError::Destination { code, message })) => {
            Err(ApiError::destination_failed(
                &code,
                format!(
                    "the destination failed ({code}): {message}; the export is FAILED, post again to retry"
                ),
            ))
        }
        Err(RunError::InFlight { retry_after }) => Err(ApiError::in_flight(retry_after.as_secs())),
        Err(RunError::Mismatch) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "action-mismatch",
            "Same action with other values",
            format!("this user's {what} of this export was first sent with other values"),
        )),
        Err(RunError::Failed { reason }) => Err(ApiError::destination_failed("FAILED", reason)),
        Err(RunError::LeaseLost) => Err(ApiError::in_flight(1)),
        Err(e) => {
            tracing::error!(error = %e, "action not settled");
            Err(ApiError::unavailable(
                "the action could not be settled; retry",
            ))
        }
    }
}

/// Whether an action's failure may run again under the same record.
fn classify(_: &ActionError) -> FailureClass {
    FailureClass::Retryable
}

/// `POST /api/v1/staging/{id}/post` `{"posted_by", "external_reference", "export_filename"?}`.
#[utoipa::path(post, path = "/api/v1/staging/{id}/post", tag = "posting",
    params(("id" = String, Path, description = "The export id")),
    request_body(content = Object, description = "`{posted_by, external_reference, export_filename?}`"),
    responses((status = 200, description = "The export, `POSTED`, with its `booking_id` (a replay carries `Idempotent-Replayed: true`)", body = Object),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "`illegal-transition` or `in-flight`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 422, description = "`validation-failed` or `action-mismatch`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 502, description = "`destination-failed`: every call failed; the export is `FAILED` with the `error_code`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn post(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let v = json_body(&body)?;
    let mut errors = Vec::new();
    let by = text_field(&v, "posted_by", 128, &mut errors);
    let reference = text_field(&v, "external_reference", 255, &mut errors);
    let filename = optional_text(&v, "export_filename", 255, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let key = KeySpec::new("staging")
        .derived([id.to_string().as_str(), by.as_str(), "post"])
        .storage_key();
    let fp = Fingerprint::of_value(
        "staging/post",
        &json!({"external_reference": reference, "export_filename": filename}),
    )
    .map_err(|_| ApiError::internal("the post cannot be fingerprinted"))?;
    let app2 = app.clone();
    let result = app
        .actions
        .run_classified(
            key,
            fp,
            |attempt| async move {
                let app = app2;
                // The state now, without a lock (no lock is held over the call).
                let mut conn = app.pool.acquire().await?;
                let now = exports::snapshot(&app, &mut conn, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("staged export", &id.to_string()))?;
                drop(conn);
                let status = now["status"].as_str().unwrap_or_default().to_owned();
                if status == "POSTED" {
                    // Posted by another user's post: that booking is the answer.
                    return Ok(now);
                }
                if !matches!(status.as_str(), "APPROVED" | "FAILED") {
                    return Err(ApiError::illegal_transition(&status, "POSTED").into());
                }
                let dest_key = destination_key(id, "posting");
                let data = match &now["approved_data"] {
                    Value::Null => now["prepared_data"].clone(),
                    d => d.clone(),
                };
                let posting = json!({
                    "export_id": id,
                    "external_reference": reference,
                    "amount": now["total_amount"].as_str().unwrap_or("0.00"),
                    "format": now["export_format"],
                    "data": data,
                });
                let called = call_with_retries(&app, "/postings", &dest_key, &posting).await;
                if called.is_ok() && app.config.fault == Some(crate::Fault::CrashAfterBooking) {
                    tracing::error!(export = %id, "fault injection: exiting after the booking, before the commit");
                    std::process::exit(3);
                }
                let mut tx = app.pool.begin().await?;
                let locked = lock(&app, &mut tx, id).await?;
                match called {
                    Ok((booking, calls)) => {
                        if locked.status == "POSTED" {
                            tx.rollback().await?;
                            return Ok(locked.before);
                        }
                        check(&locked, "POSTED")?;
                        let booking_id = booking["booking_id"].as_str().unwrap_or_default().to_owned();
                        guarded_update(
                            &mut tx,
                            &locked,
                            "POSTED",
                            sqlx::query(app.sql(
                                "UPDATE {{schema}}.staged_exports SET status = 'POSTED', posted_by = $3,
                                     external_reference = $4, export_filename = $5, destination_key = $6,
                                     booking_id = $7, posted_data = coalesce(approved_data, prepared_data),
                                     error_code = NULL, error_message = NULL,
                                     retry_count = retry_count + $8, posted_at = now(), updated_at = now()
                                 WHERE id = $1 AND status = $2",
                            ))
                            .bind(id)
                            .bind(locked.status.clone())
                            .bind(by.clone())
                            .bind(reference.clone())
                            .bind(filename.clone())
                            .bind(dest_key.clone())
                            .bind(booking_id.clone())
                            .bind(i32::try_from(calls - 1).unwrap_or(0)),
                        )
                        .await?;
                        let after = audited(&app, &mut tx, &locked, Transition { to: "POSTED", kind: "staging.export.posted", actor: &by, reason: None, attributes: json!({"booking_id": booking_id, "destination_calls": calls, "fence": attempt.fence()}) }).await?;
                        let bytes = serde_json::to_vec(&after).unwrap_or_default();
                        app.store
                            .complete_in(&mut tx, attempt.lease(), Completion::new(Outcome::Value(bytes.into())))
                            .await
                            .map_err(|e| {
                                tracing::warn!(error = %e, "post not recorded: the record was taken over");
                                ApiError::in_flight(1)
                            })?;
                        tx.commit().await?;
                        attempt.mark_completed(Some(booking_id));
                        metrics::counter!(metric::POSTINGS, "outcome" => "posted").increment(1);
                        Ok(after)
                    }
                    Err((code, message, calls)) => {
                        if locked.status == "POSTED" {
                            tx.rollback().await?;
                            return Ok(locked.before);
                        }
                        failed(&app, &mut tx, &locked, &by, &code, &message, calls).await?;
                        tx.commit().await?;
                        metrics::counter!(metric::POSTINGS, "outcome" => "failed").increment(1);
                        Err(ActionError::Destination { code, message })
                    }
                }
            },
            classify,
        )
        .await;
    answer(result, "post")
}

/// `→ FAILED` with the destination's error code.
async fn failed(
    app: &AppState,
    tx: &mut sqlx::PgConnection,
    locked: &Locked,
    by: &str,
    code: &str,
    message: &str,
    calls: u32,
) -> Result<(), ApiError> {
    check(locked, "FAILED")?;
    guarded_update(
        tx,
        locked,
        "FAILED",
        sqlx::query(app.sql(
            "UPDATE {{schema}}.staged_exports SET status = 'FAILED', error_code = $3,
                 error_message = $4, retry_count = retry_count + $5, updated_at = now()
             WHERE id = $1 AND status = $2",
        ))
        .bind(locked.id)
        .bind(locked.status.clone())
        .bind(code.to_owned())
        .bind(message.to_owned())
        .bind(i32::try_from(calls).unwrap_or(i32::MAX)),
    )
    .await?;
    audited(
        app,
        tx,
        locked,
        Transition {
            to: "FAILED",
            kind: "staging.export.post_failed",
            actor: by,
            reason: Some(message),
            attributes: json!({"error_code": code, "destination_calls": calls}),
        },
    )
    .await?;
    Ok(())
}

/// `POST /api/v1/staging/{id}/rollback` `{"rolled_back_by", "reason"}`.
#[utoipa::path(post, path = "/api/v1/staging/{id}/rollback", tag = "posting",
    params(("id" = String, Path, description = "The export id")),
    request_body(content = Object, description = "`{rolled_back_by, reason}`"),
    responses((status = 200, description = "The export, `ROLLED_BACK`, with its `reversal_id`", body = Object),
              (status = 403, description = "`rollback-disabled`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 404, description = "`not-found`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "`illegal-transition` or `in-flight`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 422, description = "`validation-failed`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 502, description = "`destination-failed`: the reversal failed; the export stays `POSTED`", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn rollback(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !app.config.rollback {
        return Err(ApiError::rollback_disabled());
    }
    let id = export_id(&id)?;
    let v = json_body(&body)?;
    let mut errors = Vec::new();
    let by = text_field(&v, "rolled_back_by", 128, &mut errors);
    let reason = text_field(&v, "reason", 2000, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let key = KeySpec::new("staging")
        .derived([id.to_string().as_str(), by.as_str(), "rollback"])
        .storage_key();
    let fp = Fingerprint::of_value("staging/rollback", &json!({"reason": reason}))
        .map_err(|_| ApiError::internal("the rollback cannot be fingerprinted"))?;
    let app2 = app.clone();
    let result = app
        .actions
        .run_classified(
            key,
            fp,
            |attempt| async move {
                let app = app2;
                let mut conn = app.pool.acquire().await?;
                let now = exports::snapshot(&app, &mut conn, id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("staged export", &id.to_string()))?;
                drop(conn);
                let status = now["status"].as_str().unwrap_or_default().to_owned();
                if status == "ROLLED_BACK" {
                    return Ok(now);
                }
                if status != "POSTED" {
                    return Err(ApiError::illegal_transition(&status, "ROLLED_BACK").into());
                }
                let booking = now["booking_id"].as_str().unwrap_or_default().to_owned();
                let dest_key = destination_key(id, "reversal");
                let called = call_with_retries(
                    &app,
                    &format!("/postings/{booking}/reversal"),
                    &dest_key,
                    &json!({"reason": reason}),
                )
                .await;
                let (reversal, _) = called.map_err(|(code, message, _)| ActionError::Destination { code, message })?;
                let mut tx = app.pool.begin().await?;
                let locked = lock(&app, &mut tx, id).await?;
                if locked.status == "ROLLED_BACK" {
                    tx.rollback().await?;
                    return Ok(locked.before);
                }
                check(&locked, "ROLLED_BACK")?;
                let reversal_id = reversal["reversal_id"].as_str().unwrap_or_default().to_owned();
                guarded_update(
                    &mut tx,
                    &locked,
                    "ROLLED_BACK",
                    sqlx::query(app.sql(
                        "UPDATE {{schema}}.staged_exports SET status = 'ROLLED_BACK', rolled_back_by = $3,
                             rollback_reason = $4, reversal_id = $5, updated_at = now()
                         WHERE id = $1 AND status = $2",
                    ))
                    .bind(id)
                    .bind(locked.status.clone())
                    .bind(by.clone())
                    .bind(reason.clone())
                    .bind(reversal_id.clone()),
                )
                .await?;
                let after = audited(&app, &mut tx, &locked, Transition { to: "ROLLED_BACK", kind: "staging.export.rolled_back", actor: &by, reason: Some(&reason), attributes: json!({"reversal_id": reversal_id}) }).await?;
                let bytes = serde_json::to_vec(&after).unwrap_or_default();
                app.store
                    .complete_in(&mut tx, attempt.lease(), Completion::new(Outcome::Value(bytes.into())))
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "rollback not recorded: the record was taken over");
                        ApiError::in_flight(1)
                    })?;
                tx.commit().await?;
                attempt.mark_completed(Some(reversal_id));
                metrics::counter!(metric::ROLLBACKS).increment(1);
                Ok(after)
            },
            classify,
        )
        .await;
    answer(result, "rollback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_destination_key_per_export_and_action() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(destination_key(a, "posting"), destination_key(a, "posting"));
        assert_ne!(destination_key(a, "posting"), destination_key(b, "posting"));
        assert_ne!(
            destination_key(a, "posting"),
            destination_key(a, "reversal")
        );
        assert_eq!(destination_key(a, "posting").len(), 64);
    }
}
