//! What a caller does to an existing order: `POST /orders/{id}/cancel`
//! (a guarded transition, idempotent), `POST /orders/{id}/shipment` (the
//! workflow's shipment signal) and `GET /orders/{id}/workflow` (Temporal's
//! description and the workflow's `step` query).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::domain::Status;
use crate::lifecycle::{Actor, Detail, TransitionError, transition};
use crate::problem::ApiError;
use crate::read::{self, order_id, workflow_id};
use crate::temporal::{self, DescribeError};

fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(format!("the body is not JSON: {e}"))),
    }
}

fn one_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    valid: impl Fn(&str) -> bool,
    rule: &str,
) -> Result<String, ApiError> {
    let mut errors = Vec::new();
    for key in obj.keys().filter(|k| *k != name) {
        errors.push((
            format!("/{key}"),
            "is not a field of this request".to_owned(),
        ));
    }
    let value = match obj.get(name) {
        Some(Value::String(s)) if valid(s.trim()) => Some(s.trim().to_owned()),
        _ => {
            errors.push((format!("/{name}"), rule.to_owned()));
            None
        }
    };
    match value {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(ApiError::validation(errors)),
    }
}

/// `POST /orders/{id}/cancel` `{"reason"}`.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    request_body(content = crate::openapi::CancelRequest, description = "Why"),
    responses(
        (status = 200, description = "Cancelled (now, or before: the same answer, no second event)", body = crate::read::OrderView),
        (status = 404, description = "No such order", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal-transition`: the order is past `RESERVED` or closed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No usable reason", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match cancel_inner(&app, &id, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn cancel_inner(app: &AppState, id: &str, body: &[u8]) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let reason = one_field(
        &body_object(body)?,
        "reason",
        |s| !s.is_empty() && s.chars().count() <= 500 && !s.chars().any(char::is_control),
        "must be 1 to 500 printable characters",
    )?;
    let mut tx = app.pool.begin().await?;
    match transition(
        &mut tx,
        id,
        Status::Cancelled,
        &Detail::CancelReason(reason),
        &Actor::Api,
    )
    .await
    {
        Ok(moved) => {
            tx.commit().await?;
            metrics::counter!(crate::metrics_names::TRANSITIONS, "to" => "CANCELLED").increment(1);
            tracing::info!(orderId = %id, workflowId = %workflow_id(id), from = %moved.from, "order cancelled");
        }
        // Cancelled before: the same answer, no second event.
        Err(TransitionError::Illegal {
            from: Status::Cancelled,
            ..
        }) => {}
        Err(TransitionError::Illegal { from, to }) => {
            return Err(ApiError::illegal_transition(from, to));
        }
        Err(TransitionError::NotFound(_)) => {
            return Err(ApiError::not_found("order", &id.to_string()));
        }
        Err(TransitionError::Database(e)) => return Err(e.into()),
    }
    let mut conn = app.pool.acquire().await?;
    let order = read::load(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("order", &id.to_string()))?;
    Ok(Json(order).into_response())
}

/// `POST /orders/{id}/shipment` `{"trackingNumber"}`.
#[utoipa::path(post, path = "/orders/{id}/shipment", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    request_body(content = crate::openapi::ShipmentRequest, description = "The parcel"),
    responses(
        (status = 202, description = "The workflow was signalled; it marks the order `SHIPPED` once it is `FULFILLING` (the same tracking number again is the same shipment)", body = Object),
        (status = 200, description = "Shipped with this tracking number already", body = crate::read::OrderView),
        (status = 404, description = "No such order", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal-transition` (cancelled or failed) or `already-shipped` (with another parcel)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No usable tracking number", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The workflow has not started yet, or Temporal is unavailable", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn shipment(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match shipment_inner(&app, &id, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn shipment_inner(app: &AppState, id: &str, body: &[u8]) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let tracking = one_field(
        &body_object(body)?,
        "trackingNumber",
        |s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        },
        "must be 1 to 64 of A-Z, a-z, 0-9, '-'",
    )?;
    let mut conn = app.pool.acquire().await?;
    let order = read::load(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("order", &id.to_string()))?;
    drop(conn);
    match order.status {
        Status::Shipped if order.tracking_number.as_deref() == Some(tracking.as_str()) => {
            return Ok(Json(order).into_response());
        }
        Status::Shipped => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already-shipped",
                "Shipped with another parcel",
                "the order shipped with another tracking number",
            )
            .with("trackingNumber", json!(order.tracking_number)));
        }
        Status::Cancelled | Status::Failed => {
            return Err(ApiError::illegal_transition(order.status, Status::Shipped));
        }
        _ => {}
    }
    let wf = workflow_id(id);
    match temporal::signal_shipment(&app.temporal, &wf, &tracking).await {
        Ok(()) => {
            tracing::info!(orderId = %id, workflowId = %wf, trackingNumber = %tracking, "shipment signalled");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"orderId": id, "workflowId": wf, "trackingNumber": tracking})),
            )
                .into_response())
        }
        Err(DescribeError::NotFound(_)) => Err(ApiError::unavailable(
            "the order's workflow has not started yet; retry in a moment",
        )),
        Err(DescribeError::Temporal(e)) => {
            tracing::warn!(orderId = %id, workflowId = %wf, error = %e, "shipment not signalled");
            Err(ApiError::unavailable(
                "Temporal is unavailable; retry later",
            ))
        }
    }
}

/// `GET /orders/{id}/workflow`.
#[utoipa::path(get, path = "/orders/{id}/workflow", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "`{workflowId, runId, status, step}`: `status` from Temporal's description, `step` from the workflow's query", body = crate::temporal::WorkflowView),
        (status = 404, description = "No such order, or its workflow has not started yet", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporal is unavailable, or no worker answers the query within 5 s", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn workflow(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let exists: Result<Option<i32>, _> = sqlx::query_scalar("SELECT 1 FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await;
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::not_found("order", &id.to_string()).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    let wf = workflow_id(id);
    match temporal::describe(&app.temporal, &wf).await {
        Ok(view) => Json(view).into_response(),
        Err(DescribeError::NotFound(_)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "workflow-not-started",
            "Workflow not started yet",
            format!("the workflow {wf} has not started yet"),
        )
        .into_response(),
        Err(DescribeError::Temporal(e)) => {
            tracing::warn!(orderId = %id, workflowId = %wf, error = %e, "workflow not described");
            ApiError::unavailable("Temporal did not answer; retry later").into_response()
        }
    }
}
