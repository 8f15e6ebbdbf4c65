//! `POST /orders`: the intake request (a DTO of its own, validated field by
//! field), and the order taken in exactly once per `(channel,
//! externalOrderId)` or per `Idempotency-Key`, through the PostgreSQL
//! store's natural-key primitive: the order, its lines, its one
//! `ORDER_CREATED` event and the outbox row that starts its workflow commit
//! in one transaction.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idempotency_postgres::natural::{Isolation, RetryPolicy, retry_transaction};
use idempotency_postgres::{Inserted, NaturalKey, NaturalKeyError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Channel, EventType, Priority};
use crate::problem::ApiError;
use crate::read::{self, ShipTo, workflow_id};

/// Most lines an order may have.
pub const MAX_LINES: usize = 100;

/// The longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 255;

/// One line of an intake request, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineRequest {
    /// The article: 1 to 64 of `A-Z a-z 0-9 - _ .`.
    pub sku: String,
    /// 1 to 10000.
    pub quantity: i32,
    /// A decimal amount, normalised to two places (`"19.90"`).
    pub unit_price: String,
}

/// An intake request, validated: what `POST /orders` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRequest {
    /// The caller's id of the order (1 to 100 printable characters).
    pub external_order_id: Option<String>,
    /// Where it comes from.
    pub channel: Channel,
    /// How urgent it is.
    pub priority: Priority,
    /// Where it goes.
    pub ship_to: ShipTo,
    /// What is ordered (1 to [`MAX_LINES`]).
    pub lines: Vec<LineRequest>,
}

impl OrderRequest {
    /// SHA-256 of the request's canonical form (fields in a fixed order,
    /// amounts normalised): two requests for the same order hash alike.
    pub fn fingerprint(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&canonical).into()
    }
}

type Errors = Vec<(String, String)>;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn text(
    obj: &Map<String, Value>,
    base: &str,
    name: &str,
    max: usize,
    errors: &mut Errors,
) -> Option<String> {
    let pointer = format!("{base}/{name}");
    match obj.get(name) {
        None | Some(Value::Null) => {
            errors.push((pointer, "is required".into()));
            None
        }
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() || s.chars().count() > max || !printable(s) {
                errors.push((pointer, format!("must be 1 to {max} printable characters")));
                None
            } else {
                Some(s.to_owned())
            }
        }
        Some(_) => {
            errors.push((pointer, "must be a string".into()));
            None
        }
    }
}

/// `"12"`, `"12.5"`, `"12.50"` → `"12.50"`; at most 10 integer digits and 2
/// decimals, never negative, never a float.
pub fn normalise_amount(s: &str) -> Option<String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 10 || !digits(int) || frac.len() > 2 || !digits(frac) {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    Some(format!("{int}.{frac:0<2}"))
}

fn enum_field<T: Copy>(
    obj: &Map<String, Value>,
    name: &str,
    choices: &[(&str, T)],
    default: Option<T>,
    errors: &mut Errors,
) -> Option<T> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    match obj.get(name) {
        None | Some(Value::Null) if default.is_some() => default,
        Some(Value::String(s)) if names.contains(&s.as_str()) => {
            choices.iter().find(|(n, _)| n == s).map(|(_, v)| *v)
        }
        _ => {
            errors.push((
                format!("/{name}"),
                format!("must be one of {}", names.join(", ")),
            ));
            None
        }
    }
}

/// Validates an intake body.
///
/// # Errors
///
/// Every rule broken, as `(JSON pointer, detail)`.
pub fn validate(body: &Value) -> Result<OrderRequest, Errors> {
    let mut errors = Errors::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![(String::new(), "must be a JSON object".into())]);
    };
    for name in obj.keys() {
        if !["externalOrderId", "channel", "priority", "shipTo", "lines"].contains(&name.as_str()) {
            errors.push((format!("/{name}"), "is not a field of an order".into()));
        }
    }
    let external_order_id = match obj.get("externalOrderId") {
        None | Some(Value::Null) => None,
        Some(_) => text(obj, "", "externalOrderId", 100, &mut errors),
    };
    let channel = enum_field(
        obj,
        "channel",
        &[
            ("MANUAL", Channel::Manual),
            ("SHOPIFY", Channel::Shopify),
            ("OTHER", Channel::Other),
        ],
        None,
        &mut errors,
    );
    let priority = enum_field(
        obj,
        "priority",
        &[
            ("LOW", Priority::Low),
            ("NORMAL", Priority::Normal),
            ("HIGH", Priority::High),
        ],
        Some(Priority::Normal),
        &mut errors,
    );
    let ship_to = match obj.get("shipTo") {
        Some(Value::Object(s)) => {
            let name = text(s, "/shipTo", "name", 200, &mut errors);
            let line1 = text(s, "/shipTo", "line1", 200, &mut errors);
            let city = text(s, "/shipTo", "city", 100, &mut errors);
            let postal_code = text(s, "/shipTo", "postalCode", 20, &mut errors);
            let country = match s.get("country") {
                Some(Value::String(c))
                    if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    Some(c.clone())
                }
                _ => {
                    errors.push((
                        "/shipTo/country".into(),
                        "must be an ISO 3166-1 alpha-2 code such as US".into(),
                    ));
                    None
                }
            };
            for key in s.keys() {
                if !["name", "line1", "city", "postalCode", "country"].contains(&key.as_str()) {
                    errors.push((
                        format!("/shipTo/{key}"),
                        "is not a field of an address".into(),
                    ));
                }
            }
            match (name, line1, city, postal_code, country) {
                (Some(name), Some(line1), Some(city), Some(postal_code), Some(country)) => {
                    Some(ShipTo {
                        name,
                        line1,
                        city,
                        postal_code,
                        country,
                    })
                }
                _ => None,
            }
        }
        _ => {
            errors.push(("/shipTo".into(), "must be an address object".into()));
            None
        }
    };
    let mut lines = Vec::new();
    match obj.get("lines") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_LINES => {
            for (i, line) in list.iter().enumerate() {
                let base = format!("/lines/{i}");
                let Some(l) = line.as_object() else {
                    errors.push((base, "must be a line object".into()));
                    continue;
                };
                let sku = match l.get("sku") {
                    Some(Value::String(s))
                        if !s.is_empty()
                            && s.len() <= 64
                            && s.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
                            }) =>
                    {
                        Some(s.clone())
                    }
                    _ => {
                        errors.push((
                            format!("{base}/sku"),
                            "must be 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'".into(),
                        ));
                        None
                    }
                };
                let quantity = match l.get("quantity").and_then(Value::as_i64) {
                    Some(q) if (1..=10_000).contains(&q) => i32::try_from(q).ok(),
                    _ => {
                        errors.push((
                            format!("{base}/quantity"),
                            "must be a whole number from 1 to 10000".into(),
                        ));
                        None
                    }
                };
                let unit_price = match l.get("unitPrice") {
                    Some(Value::String(s)) => normalise_amount(s),
                    _ => None,
                };
                if unit_price.is_none() {
                    errors.push((
                        format!("{base}/unitPrice"),
                        "must be a decimal string such as \"19.99\" (at most 2 decimals, not negative; a JSON number is refused: floats lose cents)".into(),
                    ));
                }
                for key in l.keys() {
                    if !["sku", "quantity", "unitPrice"].contains(&key.as_str()) {
                        errors.push((format!("{base}/{key}"), "is not a field of a line".into()));
                    }
                }
                if let (Some(sku), Some(quantity), Some(unit_price)) = (sku, quantity, unit_price) {
                    lines.push(LineRequest {
                        sku,
                        quantity,
                        unit_price,
                    });
                }
            }
        }
        _ => errors.push((
            "/lines".into(),
            format!("must be an array of 1 to {MAX_LINES} lines"),
        )),
    }
    match (channel, priority, ship_to) {
        (Some(channel), Some(priority), Some(ship_to)) if errors.is_empty() => Ok(OrderRequest {
            external_order_id,
            channel,
            priority,
            ship_to,
            lines,
        }),
        _ => Err(errors),
    }
}

/// What identifies an intake.
#[derive(Debug, Clone)]
pub enum IntakeKey {
    /// `(channel, externalOrderId)`.
    External(Channel, String),
    /// SHA-256 of the `Idempotency-Key`.
    Key([u8; 32]),
}

/// The `Idempotency-Key` of a request: at most one header, 1 to
/// [`MAX_KEY_LEN`] printable ASCII characters (an sf-string's quotes are
/// taken off); `None` when absent.
///
/// # Errors
///
/// A 400 problem.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    let bad = |detail: &str| {
        ApiError::bad_request(
            "invalid-idempotency-key",
            "Unusable Idempotency-Key",
            detail,
        )
    };
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad("send Idempotency-Key once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| bad("the key must be printable ASCII"))?;
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(bad(&format!(
            "the key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    let mut h = Sha256::new();
    h.update(b"order-intake/idempotency-key\0");
    h.update(key.as_bytes());
    Ok(Some(h.finalize().into()))
}

/// What an intake did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// This request took the order in.
    Created(Uuid),
    /// The order exists, taken in by an identical request.
    Replayed(Uuid),
    /// The key was used for another order.
    Mismatch(Uuid),
}

type OrderKeyRow = (Uuid, Vec<u8>);

const INSERT_ORDER: &str = "\
INSERT INTO orders (id, external_order_id, channel, idempotency_key_hash, request_hash, priority,
                    ship_to_name, ship_to_line1, ship_to_city, ship_to_postal_code, ship_to_country)
VALUES ($1, $2, $3::text::order_channel, $4, $5, $6::text::order_priority, $7, $8, $9, $10, $11)
RETURNING id, request_hash";

/// Takes the order in once per key: in one transaction, the order (through
/// its natural key), its lines, its `ORDER_CREATED` event and its
/// workflow-start outbox row; a duplicate finds the winner's order.
///
/// # Errors
///
/// The database's, after the natural-key primitive's own retries.
pub async fn take_in(
    pool: &sqlx::PgPool,
    key: IntakeKey,
    req: &OrderRequest,
) -> Result<Intake, NaturalKeyError> {
    let fingerprint = req.fingerprint().to_vec();
    retry_transaction(
        pool,
        Isolation::ReadCommitted,
        RetryPolicy::default(),
        |tx| {
            let (key, req, fingerprint) = (key.clone(), req.clone(), fingerprint.clone());
            Box::pin(async move {
                let id = Uuid::now_v7();
                let (ext, key_hash) = match &key {
                    IntakeKey::External(_, e) => (Some(e.clone()), None),
                    IntakeKey::Key(h) => (None, Some(h.to_vec())),
                };
                let (r, f) = (req.clone(), fingerprint.clone());
                let insert = move || {
                    sqlx::query_as::<_, OrderKeyRow>(INSERT_ORDER)
                        .bind(id)
                        .bind(ext.clone())
                        .bind(r.channel.as_str())
                        .bind(key_hash.clone())
                        .bind(f.clone())
                        .bind(r.priority.as_str())
                        .bind(r.ship_to.name.clone())
                        .bind(r.ship_to.line1.clone())
                        .bind(r.ship_to.city.clone())
                        .bind(r.ship_to.postal_code.clone())
                        .bind(r.ship_to.country.clone())
                };
                let found = match &key {
                    IntakeKey::External(channel, ext) => {
                        let (channel, ext) = (channel.as_str(), ext.clone());
                        NaturalKey::new(insert, move || {
                            sqlx::query_as::<_, OrderKeyRow>(
                                "SELECT id, request_hash FROM orders \
                             WHERE channel = $1::text::order_channel AND external_order_id = $2",
                            )
                            .bind(channel)
                            .bind(ext.clone())
                        })
                        .constraint("orders_channel_external_order_id_key")
                        .insert_or_get_in(&mut *tx)
                        .await?
                    }
                    IntakeKey::Key(hash) => {
                        let hash = hash.to_vec();
                        NaturalKey::new(insert, move || {
                            sqlx::query_as::<_, OrderKeyRow>(
                            "SELECT id, request_hash FROM orders WHERE idempotency_key_hash = $1",
                        )
                        .bind(hash.clone())
                        })
                        .constraint("orders_idempotency_key_hash_key")
                        .insert_or_get_in(&mut *tx)
                        .await?
                    }
                };
                let (id, stored) = match found {
                    Inserted::Found((id, stored)) => {
                        return Ok(if stored == fingerprint {
                            Intake::Replayed(id)
                        } else {
                            Intake::Mismatch(id)
                        });
                    }
                    Inserted::Created(row) => row,
                };
                debug_assert_eq!(stored, fingerprint);
                for (i, line) in req.lines.iter().enumerate() {
                    sqlx::query(
                    "INSERT INTO order_lines (id, order_id, line_no, sku, quantity, unit_price) \
                     VALUES ($1, $2, $3, $4, $5, $6::text::numeric)",
                )
                .bind(Uuid::now_v7())
                .bind(id)
                .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
                .bind(&line.sku)
                .bind(line.quantity)
                .bind(&line.unit_price)
                .execute(&mut *tx)
                .await?;
                }
                let payload = json!({
                    "channel": req.channel.as_str(),
                    "externalOrderId": req.external_order_id,
                    "lines": req.lines.len(),
                    "workflowId": workflow_id(id),
                });
                sqlx::query(
                    "INSERT INTO order_events (order_id, type, payload) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(EventType::OrderCreated.as_str())
                .bind(&payload)
                .execute(&mut *tx)
                .await?;
                // The intent to start the workflow, in the order's transaction.
                sqlx::query("INSERT INTO workflow_starts (order_id, workflow_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(workflow_id(id))
                    .execute(&mut *tx)
                    .await?;
                Ok(Intake::Created(id))
            })
        },
    )
    .await
}

/// `POST /orders`.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body(content = crate::openapi::OrderRequestDoc, description = "The order"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Required when `externalOrderId` is absent: 1 to 255 printable ASCII characters")),
    responses(
        (status = 201, description = "Taken in; `Location: /orders/{id}`", body = crate::read::OrderView),
        (status = 200, description = "A duplicate: the same order, `Idempotent-Replayed: true`", body = crate::read::OrderView),
        (status = 400, description = "Malformed JSON, or no `externalOrderId` and no usable `Idempotency-Key`", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order (`errors: [{pointer, detail}]`), or the key was used for another order", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match create_inner(&app, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    app: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_json(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    let req = validate(&value).map_err(ApiError::validation)?;
    let key = match &req.external_order_id {
        Some(ext) => IntakeKey::External(req.channel, ext.clone()),
        None => match idempotency_key(headers)? {
            Some(hash) => IntakeKey::Key(hash),
            None => {
                return Err(ApiError::bad_request(
                    "idempotency-key-required",
                    "Idempotency-Key required",
                    "an order without externalOrderId needs an Idempotency-Key header",
                ));
            }
        },
    };
    let outcome = take_in(&app.pool, key, &req).await.map_err(|e| match e {
        NaturalKeyError::Database(db) => ApiError::from(db),
        other => {
            tracing::warn!(error = %other, "intake did not settle");
            ApiError::unavailable("the order could not be taken in now; retry")
        }
    })?;
    let (id, status) = match outcome {
        Intake::Created(id) => {
            metrics::counter!(crate::metrics_names::ORDERS_CREATED).increment(1);
            tracing::info!(orderId = %id, workflowId = %workflow_id(id), "order taken in");
            app.relay_wake.notify_one();
            (id, StatusCode::CREATED)
        }
        Intake::Replayed(id) => {
            metrics::counter!(crate::metrics_names::DUPLICATES, "outcome" => "replayed")
                .increment(1);
            tracing::info!(orderId = %id, workflowId = %workflow_id(id), "duplicate intake answered with the existing order");
            (id, StatusCode::OK)
        }
        Intake::Mismatch(id) => {
            metrics::counter!(crate::metrics_names::DUPLICATES, "outcome" => "mismatch")
                .increment(1);
            tracing::info!(orderId = %id, workflowId = %workflow_id(id), "intake key reused for another order");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Key reused for another order",
                "this (channel, externalOrderId) or Idempotency-Key was used for an order with other contents",
            )
            .with("orderId", json!(id))
            .at(format!("/orders/{id}")));
        }
    };
    let mut conn = app.pool.acquire().await?;
    let order = read::load(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::internal("the order vanished"))?;
    let mut res = (status, axum::Json(order)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/orders/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if status == StatusCode::OK {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({
            "externalOrderId": "ext-1",
            "channel": "SHOPIFY",
            "shipTo": {"name": "Ada", "line1": "1 Main St", "city": "Springfield", "postalCode": "12345", "country": "US"},
            "lines": [{"sku": "SKU-1", "quantity": 2, "unitPrice": "19.9"}]
        })
    }

    #[test]
    fn amounts_are_decimal_strings() {
        assert_eq!(normalise_amount("19.9").as_deref(), Some("19.90"));
        assert_eq!(normalise_amount("007").as_deref(), Some("7.00"));
        assert_eq!(normalise_amount("0.05").as_deref(), Some("0.05"));
        for bad in [
            "",
            "-1",
            "1.",
            ".5",
            "1.234",
            "1e3",
            "12345678901",
            "1,5",
            " 1",
        ] {
            assert_eq!(normalise_amount(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_valid_order_and_its_fingerprint() {
        let a = validate(&body()).unwrap();
        assert_eq!(a.priority, Priority::Normal);
        assert_eq!(a.lines[0].unit_price, "19.90");
        let mut other = body();
        other["lines"][0]["unitPrice"] = json!("19.90");
        other["priority"] = json!("NORMAL");
        assert_eq!(validate(&other).unwrap().fingerprint(), a.fingerprint());
        other["lines"][0]["quantity"] = json!(3);
        assert_ne!(validate(&other).unwrap().fingerprint(), a.fingerprint());
    }

    #[test]
    fn every_broken_rule_has_its_pointer() {
        let bad = json!({
            "channel": "FAX",
            "extra": 1,
            "shipTo": {"name": "", "line1": "x", "city": "y", "postalCode": "1", "country": "usa"},
            "lines": [{"sku": "a b", "quantity": 0, "unitPrice": 1.5}, 7]
        });
        let errors = validate(&bad).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "/extra",
            "/channel",
            "/shipTo/name",
            "/shipTo/country",
            "/lines/0/sku",
            "/lines/0/quantity",
            "/lines/0/unitPrice",
            "/lines/1",
        ] {
            assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
        }
        assert_eq!(
            validate(&json!({"channel": "MANUAL", "shipTo": {}, "lines": []}))
                .unwrap_err()
                .iter()
                .filter(|(p, _)| p == "/lines")
                .count(),
            1
        );
    }

    #[test]
    fn idempotency_keys() {
        let mut h = HeaderMap::new();
        assert!(idempotency_key(&h).unwrap().is_none());
        h.insert("idempotency-key", HeaderValue::from_static("\"abc\""));
        let quoted = idempotency_key(&h).unwrap().unwrap();
        h.insert("idempotency-key", HeaderValue::from_static("abc"));
        assert_eq!(idempotency_key(&h).unwrap().unwrap(), quoted);
        h.insert("idempotency-key", HeaderValue::from_static("\"\""));
        assert!(idempotency_key(&h).is_err());
        h.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
        h.insert("idempotency-key", HeaderValue::from_static("a"));
        h.append("idempotency-key", HeaderValue::from_static("b"));
        assert!(idempotency_key(&h).is_err());
    }
}
