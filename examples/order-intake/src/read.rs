//! Reading orders: `GET /orders/{id}` (with its lines), `GET /orders`
//! (by status, keyset-paginated on the time-ordered id) and
//! `GET /orders/{id}/events` (in order of occurrence).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::AppState;
use crate::domain::Status;
use crate::problem::ApiError;

/// RFC 3339 in UTC with microseconds, formatted by the database.
const TS: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

/// Where an order goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipTo {
    /// The recipient.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// One line of an order, as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    /// The line's id.
    pub id: Uuid,
    /// Its position in the order, from 1.
    pub line_no: i32,
    /// The article.
    pub sku: String,
    /// How many (> 0).
    pub quantity: i32,
    /// The price of one, a decimal string with two places (`"19.99"`).
    pub unit_price: String,
    /// `OPEN`, `RESERVED`, `SHIPPED` or `CANCELLED`.
    pub status: String,
}

/// An order, as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order's id (UUIDv7).
    pub id: Uuid,
    /// The caller's id of the order, unique per channel.
    pub external_order_id: Option<String>,
    /// `MANUAL`, `SHOPIFY` or `OTHER`.
    pub channel: String,
    /// Its state.
    pub status: Status,
    /// `LOW`, `NORMAL` or `HIGH`.
    pub priority: String,
    /// Where it goes.
    pub ship_to: ShipTo,
    /// Its lines, in order.
    pub lines: Vec<LineView>,
    /// Why it failed (`FAILED` only).
    pub failure_reason: Option<String>,
    /// Why it was cancelled (`CANCELLED` only).
    pub cancel_reason: Option<String>,
    /// The parcel's tracking number (`SHIPPED` only).
    pub tracking_number: Option<String>,
    /// The Temporal workflow that drives it.
    pub workflow_id: String,
    /// When it was taken in.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// The workflow id of order `id`: deterministic, so a second start of the
/// same order is refused by Temporal itself.
pub fn workflow_id(id: Uuid) -> String {
    format!("order-intake-{id}")
}

fn order_columns() -> String {
    format!(
        "id, external_order_id, channel::text AS channel, status::text AS status, \
         priority::text AS priority, ship_to_name, ship_to_line1, ship_to_city, \
         ship_to_postal_code, ship_to_country, failure_reason, cancel_reason, tracking_number, \
         to_char(created_at AT TIME ZONE 'UTC', {TS}) AS created_at, \
         to_char(updated_at AT TIME ZONE 'UTC', {TS}) AS updated_at"
    )
}

fn order_from_row(row: &PgRow) -> Result<OrderView, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(OrderView {
        id,
        external_order_id: row.try_get("external_order_id")?,
        channel: row.try_get("channel")?,
        status: Status::parse(&status).ok_or_else(|| sqlx::Error::Decode(status.into()))?,
        priority: row.try_get("priority")?,
        ship_to: ShipTo {
            name: row.try_get("ship_to_name")?,
            line1: row.try_get("ship_to_line1")?,
            city: row.try_get("ship_to_city")?,
            postal_code: row.try_get("ship_to_postal_code")?,
            country: row.try_get("ship_to_country")?,
        },
        lines: Vec::new(),
        failure_reason: row.try_get("failure_reason")?,
        cancel_reason: row.try_get("cancel_reason")?,
        tracking_number: row.try_get("tracking_number")?,
        workflow_id: workflow_id(id),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn lines_of<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, LineView)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, id, line_no, sku, quantity, unit_price::text AS unit_price, \
                status::text AS status \
           FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("order_id")?,
                LineView {
                    id: r.try_get("id")?,
                    line_no: r.try_get("line_no")?,
                    sku: r.try_get("sku")?,
                    quantity: r.try_get("quantity")?,
                    unit_price: r.try_get("unit_price")?,
                    status: r.try_get("status")?,
                },
            ))
        })
        .collect()
}

/// Order `id` with its lines, if it exists.
///
/// # Errors
///
/// The database's.
pub async fn load(db: &mut sqlx::PgConnection, id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    let sql = format!("SELECT {} FROM orders WHERE id = $1", order_columns());
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *db)
        .await?
    else {
        return Ok(None);
    };
    let mut order = order_from_row(&row)?;
    order.lines = lines_of(&mut *db, &[id])
        .await?
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    Ok(Some(order))
}

/// Parses an order id of a path.
pub(crate) fn order_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw)
        .map_err(|_| ApiError::not_found("order", &raw.chars().take(64).collect::<String>()))
}

/// `GET /orders/{id}`: the order with its lines.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    responses((status = 200, description = "The order", body = OrderView),
              (status = 404, description = "No such order", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let mut conn = match app.pool.acquire().await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match load(&mut conn, id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => ApiError::not_found("order", &id.to_string()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The query of `GET /orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only orders in this state (required).
    status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    limit: Option<String>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    /// The orders, oldest first.
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /orders?status=...&limit=...&cursor=...`: orders in one state,
/// oldest first, a page at a time (index `orders_status_id_idx`).
#[utoipa::path(get, path = "/orders", tag = "orders", params(ListQuery),
    responses((status = 200, description = "A page of orders", body = OrderPage),
              (status = 400, description = "A parameter is missing or unusable", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let bad = |detail: String| {
        ApiError::bad_request(
            "invalid-parameter",
            "A query parameter is missing or unusable",
            detail,
        )
        .into_response()
    };
    let Some(status) = q.status.as_deref() else {
        return bad("the query parameter status is required (one of CREATED, VALIDATED, RESERVED, FULFILLING, SHIPPED, CANCELLED, FAILED)".into());
    };
    let Some(status) = Status::parse(status) else {
        return bad(format!(
            "status={:?} is not one of CREATED, VALIDATED, RESERVED, FULFILLING, SHIPPED, CANCELLED, FAILED",
            status.chars().take(32).collect::<String>()
        ));
    };
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return bad("limit is a whole number from 1 to 100".into()),
    };
    let after = match q.cursor.as_deref().map(Uuid::try_parse) {
        None => Uuid::nil(),
        Some(Ok(id)) => id,
        Some(Err(_)) => return bad("cursor is not a cursor this service returned".into()),
    };
    match page(&app.pool, status, after, limit).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn page(
    pool: &sqlx::PgPool,
    status: Status,
    after: Uuid,
    limit: i64,
) -> Result<OrderPage, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let sql = format!(
        "SELECT {} FROM orders WHERE status = $1::text::order_status AND id > $2 \
         ORDER BY id LIMIT $3",
        order_columns()
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(status.as_str())
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let mut items = rows
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    if more {
        items.pop();
    }
    let ids: Vec<Uuid> = items.iter().map(|o| o.id).collect();
    let mut lines = lines_of(&mut *conn, &ids).await?.into_iter().peekable();
    // Both sorted by order id: one merge.
    let mut sorted: Vec<&mut OrderView> = items.iter_mut().collect();
    sorted.sort_by_key(|o| o.id);
    for order in sorted {
        while let Some((_, line)) = lines.next_if(|(oid, _)| *oid == order.id) {
            order.lines.push(line);
        }
    }
    let next_cursor = if more {
        items.last().map(|o| o.id.to_string())
    } else {
        None
    };
    Ok(OrderPage { items, next_cursor })
}

/// One event of an order's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Its id: increasing in order of occurrence.
    pub id: i64,
    /// The order.
    pub order_id: Uuid,
    /// `ORDER_CREATED`, `ORDER_VALIDATED`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// What it records.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// When.
    pub created_at: String,
}

/// `GET /orders/{id}/events`: the order's history, in order of occurrence.
#[utoipa::path(get, path = "/orders/{id}/events", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    responses((status = 200, description = "The events, oldest first", body = Vec<EventView>),
              (status = 404, description = "No such order", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn events(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match order_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match events_of(&app.pool, id).await {
        Ok(Some(list)) => Json(list).into_response(),
        Ok(None) => ApiError::not_found("order", &id.to_string()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The events of order `id`, oldest first; `None` when there is no such order.
///
/// # Errors
///
/// The database's.
pub async fn events_of(
    pool: &sqlx::PgPool,
    id: Uuid,
) -> Result<Option<Vec<EventView>>, sqlx::Error> {
    let sql = format!(
        "SELECT id, order_id, type, payload, \
                to_char(created_at AT TIME ZONE 'UTC', {TS}) AS created_at \
           FROM order_events WHERE order_id = $1 ORDER BY id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        // Every order has its ORDER_CREATED event: none means no order.
        return Ok(None);
    }
    rows.iter()
        .map(|r| {
            Ok(EventView {
                id: r.try_get("id")?,
                order_id: r.try_get("order_id")?,
                kind: r.try_get("type")?,
                payload: r.try_get("payload")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Some)
}
