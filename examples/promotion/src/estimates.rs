//! Estimates and their snapshot versions: create, read, finalize, revise.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use sqlx::Row;

use crate::AppState;
use crate::ids::EstimateId;
use crate::problem::ApiError;

/// Most lines one snapshot may hold.
pub const MAX_LINES: usize = 200;
/// Longest line description, in characters.
pub const MAX_DESCRIPTION: usize = 500;
/// Longest customer id, in characters.
pub const MAX_CUSTOMER_ID: usize = 200;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest unit price, in cents.
pub const MAX_UNIT_PRICE_CENTS: i64 = 10_000_000_000;

/// A validated estimate line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Line {
    /// What is to be done.
    #[schema(min_length = 1)]
    pub description: String,
    /// How many, at least 1.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
    /// Price of one, in cents, at least 0.
    #[schema(minimum = 0, maximum = 10_000_000_000_i64)]
    pub unit_price_cents: i64,
}

fn parse_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_json(
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_json(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::invalid_json(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Validates `lines`, collecting every broken rule with its JSON pointer.
fn validate_lines(value: Option<&Value>, errors: &mut Vec<(String, String)>) -> Vec<Line> {
    let Some(value) = value else {
        errors.push(("/lines".into(), "is required".into()));
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errors.push(("/lines".into(), "must be an array of lines".into()));
        return Vec::new();
    };
    if items.is_empty() {
        errors.push(("/lines".into(), "must hold at least one line".into()));
    }
    if items.len() > MAX_LINES {
        errors.push((
            "/lines".into(),
            format!("must hold at most {MAX_LINES} lines"),
        ));
        return Vec::new();
    }
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("/lines/{i}{field}");
        let Some(obj) = item.as_object() else {
            errors.push((at(""), "must be an object".into()));
            continue;
        };
        let description = match obj.get("description").and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() && d.chars().count() <= MAX_DESCRIPTION => {
                Some(d.to_owned())
            }
            Some(d) if d.trim().is_empty() => {
                errors.push((at("/description"), "must not be empty".into()));
                None
            }
            Some(_) => {
                errors.push((
                    at("/description"),
                    format!("must be at most {MAX_DESCRIPTION} characters"),
                ));
                None
            }
            None => {
                errors.push((
                    at("/description"),
                    "is required and must be a string".into(),
                ));
                None
            }
        };
        let mut int = |field: &str, range: std::ops::RangeInclusive<i64>| {
            let v = obj
                .get(field)
                .and_then(Value::as_i64)
                .filter(|v| range.contains(v));
            if v.is_none() {
                errors.push((
                    at(&format!("/{field}")),
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            v
        };
        let quantity = int("quantity", 1..=MAX_QUANTITY);
        let unit_price_cents = int("unit_price_cents", 0..=MAX_UNIT_PRICE_CENTS);
        if let (Some(description), Some(quantity), Some(unit_price_cents)) =
            (description, quantity, unit_price_cents)
        {
            lines.push(Line {
                description,
                quantity,
                unit_price_cents,
            });
        }
    }
    lines
}

/// The total in cents, summed in i128 and refused when it does not fit the
/// bigint column (validated lines sum to at most 200 × 10^6 × 10^10 = 2 × 10^18, which fits).
fn total_cents(lines: &[Line]) -> Result<i64, ApiError> {
    let total: i128 = lines
        .iter()
        .map(|l| i128::from(l.quantity) * i128::from(l.unit_price_cents))
        .sum();
    i64::try_from(total)
        .map_err(|_| ApiError::validation(vec![("/lines".into(), "the total is too large".into())]))
}

fn snapshot_json(estimate_id: &str, version: i32, status: &str) -> Value {
    json!({"estimate_id": estimate_id, "snapshot_version": version, "status": status})
}

fn created(location: String, body: Value) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// `POST /estimates`: a new estimate whose snapshot 1 is a DRAFT.
#[utoipa::path(
    post,
    path = "/estimates",
    tag = "estimates",
    request_body(content = crate::openapi::CreateEstimate, content_type = "application/json"),
    responses((status = 201, description = "A new estimate whose snapshot 1 is a `DRAFT`", body = crate::openapi::EstimateCreated, headers(("Location" = String, description = "`/estimates/{estimate_id}`"))))
)]
pub(crate) async fn create(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let obj = parse_object(&body)?;
    let mut errors = Vec::new();
    let customer_id = match obj.get("customer_id").and_then(Value::as_str) {
        Some(c) if !c.trim().is_empty() && c.chars().count() <= MAX_CUSTOMER_ID => Some(c),
        _ => {
            errors.push((
                "/customer_id".into(),
                format!("is required: a non-empty string of at most {MAX_CUSTOMER_ID} characters"),
            ));
            None
        }
    };
    let lines = validate_lines(obj.get("lines"), &mut errors);
    let (Some(customer_id), true) = (customer_id, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let total = total_cents(&lines)?;
    let mut tx = app.pool.begin().await?;
    let id: String = sqlx::query_scalar(
        "INSERT INTO promotion.estimates (customer_id, current_version) VALUES ($1, 1) RETURNING id",
    )
    .bind(customer_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO promotion.estimate_snapshots (estimate_id, version, status, lines, total_cents) \
         VALUES ($1, 1, 'DRAFT', $2, $3)",
    )
    .bind(&id)
    .bind(sqlx::types::Json(&lines))
    .bind(total)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(estimate_id = %id, "estimate created");
    let mut body = snapshot_json(&id, 1, "DRAFT");
    body["customer_id"] = json!(customer_id);
    body["total_cents"] = json!(total);
    Ok(created(format!("/estimates/{id}"), body))
}

/// `GET /estimates/{estimate_id}`: the estimate and every snapshot.
#[utoipa::path(
    get,
    path = "/estimates/{estimate_id}",
    tag = "estimates",
    params(("estimate_id" = String, Path, description = "`E-` and 1 to 19 digits")),
    responses((status = 200, description = "The estimate and every snapshot", body = crate::openapi::Estimate))
)]
pub(crate) async fn get(
    State(app): State<AppState>,
    EstimateId(id): EstimateId,
) -> Result<Response, ApiError> {
    let Some(row) =
        sqlx::query("SELECT customer_id, current_version FROM promotion.estimates WHERE id = $1")
            .bind(&id)
            .fetch_optional(&app.pool)
            .await?
    else {
        return Err(ApiError::estimate_not_found(&id));
    };
    let snapshots = sqlx::query(
        "SELECT version, status, lines, total_cents FROM promotion.estimate_snapshots \
         WHERE estimate_id = $1 ORDER BY version",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await?;
    let mut list = Vec::with_capacity(snapshots.len());
    for s in &snapshots {
        let lines: sqlx::types::Json<Value> = s.try_get("lines")?;
        list.push(json!({
            "snapshot_version": s.try_get::<i32, _>("version")?,
            "status": s.try_get::<String, _>("status")?,
            "total_cents": s.try_get::<i64, _>("total_cents")?,
            "lines": lines.0,
        }));
    }
    Ok(axum::Json(json!({
        "estimate_id": id,
        "customer_id": row.try_get::<String, _>("customer_id")?,
        "current_version": row.try_get::<i32, _>("current_version")?,
        "snapshots": list,
    }))
    .into_response())
}

/// `POST /estimates/{estimate_id}/finalize`: the current snapshot becomes
/// FINALIZED. Finalizing a finalized snapshot changes nothing and answers the same.
#[utoipa::path(
    post,
    path = "/estimates/{estimate_id}/finalize",
    tag = "estimates",
    params(("estimate_id" = String, Path, description = "`E-` and 1 to 19 digits")),
    responses((status = 200, description = "The current snapshot is `FINALIZED` (again: the same answer)", body = crate::openapi::Snapshot))
)]
pub(crate) async fn finalize(
    State(app): State<AppState>,
    EstimateId(id): EstimateId,
) -> Result<Response, ApiError> {
    let mut tx = app.pool.begin().await?;
    let version = lock_estimate(&mut tx, &id).await?;
    let status: String = sqlx::query_scalar(
        "SELECT status FROM promotion.estimate_snapshots WHERE estimate_id = $1 AND version = $2",
    )
    .bind(&id)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    match status.as_str() {
        "DRAFT" => {
            sqlx::query(
                "UPDATE promotion.estimate_snapshots SET status = 'FINALIZED', finalized_at = now() \
                 WHERE estimate_id = $1 AND version = $2",
            )
            .bind(&id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE promotion.estimates SET updated_at = now() WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(estimate_id = %id, version, "snapshot finalized");
        }
        "FINALIZED" => {}
        other => return Err(ApiError::snapshot_not_draft(&id, version, other)),
    }
    Ok(axum::Json(snapshot_json(&id, version, "FINALIZED")).into_response())
}

/// `POST /estimates/{estimate_id}/revise`: a new DRAFT snapshot version,
/// with the lines in the body or, with an empty body, the current lines.
/// A DRAFT current snapshot is superseded; a FINALIZED one stays promotable.
#[utoipa::path(
    post,
    path = "/estimates/{estimate_id}/revise",
    tag = "estimates",
    params(("estimate_id" = String, Path, description = "`E-` and 1 to 19 digits")),
    request_body(content = Option<crate::openapi::ReviseEstimate>, content_type = "application/json", description = "Optional: empty keeps the current lines"),
    responses((status = 201, description = "A new `DRAFT` version", body = crate::openapi::EstimateCreated, headers(("Location" = String, description = "`/estimates/{estimate_id}`"))))
)]
pub(crate) async fn revise(
    State(app): State<AppState>,
    EstimateId(id): EstimateId,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new_lines = if body.is_empty() {
        None
    } else {
        let obj = parse_object(&body)?;
        let mut errors = Vec::new();
        let lines = validate_lines(obj.get("lines"), &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Some(lines)
    };
    let mut tx = app.pool.begin().await?;
    let current = lock_estimate(&mut tx, &id).await?;
    let lines = match new_lines {
        Some(lines) => lines,
        None => {
            let stored: sqlx::types::Json<Vec<LineRow>> = sqlx::query_scalar(
                "SELECT lines FROM promotion.estimate_snapshots WHERE estimate_id = $1 AND version = $2",
            )
            .bind(&id)
            .bind(current)
            .fetch_one(&mut *tx)
            .await?;
            stored.0.into_iter().map(Line::from).collect()
        }
    };
    let total = total_cents(&lines)?;
    let next = current + 1;
    sqlx::query(
        "UPDATE promotion.estimate_snapshots SET status = 'SUPERSEDED' \
         WHERE estimate_id = $1 AND version = $2 AND status = 'DRAFT'",
    )
    .bind(&id)
    .bind(current)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO promotion.estimate_snapshots (estimate_id, version, status, lines, total_cents) \
         VALUES ($1, $2, 'DRAFT', $3, $4)",
    )
    .bind(&id)
    .bind(next)
    .bind(sqlx::types::Json(&lines))
    .bind(total)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE promotion.estimates SET current_version = $2, updated_at = now() WHERE id = $1",
    )
    .bind(&id)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(estimate_id = %id, version = next, "estimate revised");
    let mut body = snapshot_json(&id, next, "DRAFT");
    body["total_cents"] = json!(total);
    Ok(created(format!("/estimates/{id}"), body))
}

/// Locks the estimate's row for the transaction; returns its current version.
async fn lock_estimate(conn: &mut sqlx::PgConnection, id: &str) -> Result<i32, ApiError> {
    sqlx::query_scalar::<_, i32>(
        "SELECT current_version FROM promotion.estimates WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::estimate_not_found(id))
}

/// A line as stored (already validated when it was written).
#[derive(serde::Deserialize)]
pub(crate) struct LineRow {
    description: String,
    quantity: i64,
    unit_price_cents: i64,
}

impl From<LineRow> for Line {
    fn from(r: LineRow) -> Self {
        Self {
            description: r.description,
            quantity: r.quantity,
            unit_price_cents: r.unit_price_cents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: Value) -> (Vec<Line>, Vec<String>) {
        let mut errors = Vec::new();
        let lines = validate_lines(Some(&v), &mut errors);
        (lines, errors.into_iter().map(|(p, _)| p).collect())
    }

    #[test]
    fn lines_are_validated_with_pointers() {
        let (lines, errors) = check(json!([
            {"description": "brake pads", "quantity": 2, "unit_price_cents": 4500}
        ]));
        assert_eq!(lines.len(), 1);
        assert!(errors.is_empty());

        let (_, errors) = check(json!([
            {"description": "", "quantity": 0, "unit_price_cents": -1},
            {"description": "x", "quantity": 1.5, "unit_price_cents": "9"},
            7
        ]));
        assert_eq!(
            errors,
            [
                "/lines/0/description",
                "/lines/0/quantity",
                "/lines/0/unit_price_cents",
                "/lines/1/quantity",
                "/lines/1/unit_price_cents",
                "/lines/2"
            ]
        );
        assert_eq!(check(json!([])).1, ["/lines"]);
        assert_eq!(check(json!({"a": 1})).1, ["/lines"]);
        let many: Vec<Value> = (0..=MAX_LINES)
            .map(|_| json!({"description": "x", "quantity": 1, "unit_price_cents": 1}))
            .collect();
        assert_eq!(check(Value::Array(many)).1, ["/lines"]);
    }

    #[test]
    fn totals() {
        let line = |q, p| Line {
            description: "x".into(),
            quantity: q,
            unit_price_cents: p,
        };
        assert_eq!(total_cents(&[line(2, 4500), line(1, 100)]).unwrap(), 9100);
        // The largest validated snapshot still fits a bigint column...
        let largest: Vec<Line> = (0..MAX_LINES)
            .map(|_| line(MAX_QUANTITY, MAX_UNIT_PRICE_CENTS))
            .collect();
        assert_eq!(total_cents(&largest).unwrap(), 2_000_000_000_000_000_000);
        // ...and anything beyond it is refused, not wrapped.
        assert!(total_cents(&[line(i64::MAX, 2)]).is_err());
    }
}
