//! The quickstart service: routes, demo authentication and the order handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use example_support::routes::Routes;
use idempotency_core::{DynStore, Policy};
use idempotency_tower::{Concurrency, DecisionHook, IdempotencyLayer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::openapi;

/// Idempotency settings, read and checked by [`Settings`](crate::settings::Settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdempotencySettings {
    /// `IDEMPOTENCY_LEASE_SECS`.
    pub(crate) lease: Option<Duration>,
    /// `IDEMPOTENCY_RETENTION_SECS`.
    pub(crate) retention: Option<Duration>,
    /// `IDEMPOTENCY_WAIT_SECS`: duplicates wait this long instead of getting 409.
    pub(crate) wait: Option<Duration>,
}

impl IdempotencySettings {
    fn policy(&self) -> Policy {
        let mut p = Policy::default();
        if let Some(l) = self.lease {
            p = p.lease(l);
        }
        if let Some(r) = self.retention {
            p = p.retention(r);
        }
        p
    }
}

/// The authenticated caller (demo: whatever follows `Bearer `).
#[derive(Debug, Clone)]
pub(crate) struct User(String);

/// An order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Order {
    /// Its id, from 1 in each process.
    id: u64,
    /// The SKU, trimmed.
    #[schema(min_length = 1, max_length = 100)]
    sku: String,
    /// How many.
    #[schema(minimum = 1)]
    quantity: u64,
    /// The user who created it.
    created_by: String,
}

#[derive(Clone)]
pub(crate) struct AppState {
    orders: Arc<Mutex<Vec<Order>>>,
    next_id: Arc<AtomicU64>,
    metrics: Option<PrometheusHandle>,
}

/// Builds the service over `store`.
pub(crate) fn app(
    store: DynStore,
    settings: &IdempotencySettings,
    metrics: Option<PrometheusHandle>,
    audit: impl DecisionHook,
) -> Router {
    routes(store, settings, metrics, audit).router
}

/// Builds the service's routes over `store`.
pub(crate) fn routes(
    store: DynStore,
    settings: &IdempotencySettings,
    metrics: Option<PrometheusHandle>,
    audit: impl DecisionHook,
) -> Routes {
    let state = AppState {
        orders: Arc::default(),
        next_id: Arc::new(AtomicU64::new(1)),
        metrics,
    };
    let mut idempotency = IdempotencyLayer::new(store)
        .namespace("quickstart")
        .policy(settings.policy())
        .decision_hook(audit)
        .scope(|parts: &axum::http::request::Parts| {
            parts.extensions.get::<User>().map(|u| u.0.clone())
        });
    if let Some(wait) = settings.wait {
        idempotency = idempotency.concurrency(Concurrency::Wait(wait));
    }
    let orders = Routes::new()
        .route(Method::POST, "/orders", create_order)
        .route(Method::GET, "/orders", list_orders)
        .route(Method::GET, "/orders/{id}", get_order)
        // Layers run outside-in from the last one added: authentication
        // decides first, then the idempotency layer sees the user.
        .map(|r| {
            r.layer(idempotency)
                .layer(middleware::from_fn(authenticate))
        });
    Routes::new()
        .route(Method::GET, "/healthz", healthz)
        .route(Method::GET, "/metrics", render_metrics)
        .route(Method::GET, "/openapi.json", openapi::openapi_json)
        .route(Method::GET, "/docs", openapi::docs_page)
        .route(Method::GET, "/docs/{*file}", openapi::docs_asset)
        .merge(orders)
        // Outermost: every answer, a 401 from authentication included,
        // carries the request's `x-request-id`.
        .map(|r| r.layer(idempotency_tower::RequestIdLayer))
        .with_state(state)
}

/// A problem+json body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// The problem type: `about:blank` for the service's own answers, an
    /// `https://idempotency.rs/problems/...` URI for the idempotency layer's.
    #[schema(example = "about:blank")]
    r#type: &'static str,
    /// The same for every occurrence of the type.
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// This occurrence.
    detail: String,
}

/// A problem+json answer of the application itself.
pub(crate) fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = Problem {
        r#type: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail: detail.into(),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

/// Demo authentication: `Authorization: Bearer <user>` names the user.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.len() <= 64)
        .map(str::to_owned);
    let Some(user) = user else {
        let mut res = problem(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <user>",
        );
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    };
    req.extensions_mut().insert(User(user));
    next.run(req).await
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrder {
    /// 1 to 100 characters once trimmed.
    #[schema(min_length = 1, max_length = 100)]
    sku: String,
    /// Greater than 0.
    #[schema(minimum = 1)]
    quantity: i64,
    /// Make the handler slow or answer another status (demo).
    #[serde(default)]
    simulate: Option<Simulate>,
}

/// What the handler simulates instead of creating the order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Simulate {
    /// Sleep this long first (at most 60000).
    #[serde(default)]
    #[schema(maximum = 60000)]
    delay_ms: u64,
    /// Answer this status (200..=599) instead of creating the order.
    #[serde(default)]
    #[schema(minimum = 200, maximum = 599)]
    status: Option<u16>,
}

const MAX_DELAY_MS: u64 = 60_000;

/// Longest `sku`, in characters: every input the service keeps is bounded.
const MAX_SKU_CHARS: usize = 100;

/// Creates an order, exactly once per `Idempotency-Key` and user.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = String, Header, description = "Required: one key per operation, 1 to 255 printable characters, scoped per user"),
        ("x-request-id" = Option<String>, Header, description = "Correlation id: 1 to 128 visible ASCII characters, generated when absent or unacceptable"),
    ),
    request_body(content = CreateOrder, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, or the replay of the answer that created it", body = Order, headers(
            ("Location" = String, description = "`/orders/{id}`"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay of the first answer to this key"),
            ("x-request-id" = String, description = "The request's id, the client's or a generated one"),
        )),
        (status = "2XX", description = "`simulate.status` answered instead of creating the order: `{\"simulated_status\": n}`", body = Object, headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
        )),
        (status = 401, description = "`about:blank`: no `Authorization: Bearer <user>` (checked before the idempotency layer)", body = Problem, content_type = "application/problem+json", headers(
            ("WWW-Authenticate" = String, description = "`Bearer`"),
        )),
        (status = 422, description = "`about:blank`: a malformed body or an invalid field; the key is released, so the corrected request runs under it", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "`about:blank`: a simulated client error; replayed for the same key (except 401, 422 and 429, which release it)", body = Problem, content_type = "application/problem+json", headers(
            ("Idempotent-Replayed" = String, description = "`true` on a replay"),
        )),
        (status = "5XX", description = "`about:blank`: a simulated server error; a retryable failure, the same key runs again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_order(
    State(state): State<AppState>,
    Extension(User(user)): Extension<User>,
    body: Bytes,
) -> Response {
    let order: CreateOrder = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid order: {e}"),
            );
        }
    };
    let sku = order.sku.trim();
    if sku.is_empty() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "sku must not be empty");
    }
    if sku.chars().count() > MAX_SKU_CHARS {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("sku must be at most {MAX_SKU_CHARS} characters"),
        );
    }
    let Ok(quantity) = u64::try_from(order.quantity) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity must be greater than 0",
        );
    };
    if quantity == 0 {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantity must be greater than 0",
        );
    }
    if let Some(sim) = &order.simulate {
        if sim.delay_ms > MAX_DELAY_MS {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("simulate.delay_ms must be at most {MAX_DELAY_MS}"),
            );
        }
        if let Some(status) = sim.status
            && !(200..=599).contains(&status)
        {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "simulate.status must be within 200..=599",
            );
        }
        tokio::time::sleep(Duration::from_millis(sim.delay_ms)).await;
        if let Some(status) = sim.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            tracing::info!(%user, status = status.as_u16(), "answering a simulated status");
            if status.is_client_error() || status.is_server_error() {
                return problem(status, format!("simulated {status}"));
            }
            return (
                status,
                axum::Json(serde_json::json!({ "simulated_status": status.as_u16() })),
            )
                .into_response();
        }
    }
    // Fault injection (inert unless EXAMPLE_CRASH_AT / EXAMPLE_STOP_AT
    // names the point): the record is claimed, nothing is done yet.
    example_support::faults::point("after_claim").await;
    let created = Order {
        id: state.next_id.fetch_add(1, Ordering::Relaxed),
        sku: sku.to_owned(),
        quantity,
        created_by: user,
    };
    tracing::info!(id = created.id, user = %created.created_by, "order created");
    state
        .orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(created.clone());
    // The side effect, journaled when EXAMPLE_EFFECT_LOG is set (the fault
    // suite counts orders from it: this process's memory dies with it).
    example_support::faults::effect(&format!(
        "order {} {} {}",
        created.id, created.created_by, created.sku
    ));
    // The order exists, the record is not completed yet.
    example_support::faults::point("after_effect").await;
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{}", created.id))],
        axum::Json(created),
    )
        .into_response()
}

/// The orders this process created for the caller.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's orders", body = Vec<Order>),
        (status = 401, description = "`about:blank`: no `Authorization: Bearer <user>`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_orders(
    State(state): State<AppState>,
    Extension(User(user)): Extension<User>,
) -> Response {
    let orders: Vec<Order> = state
        .orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|o| o.created_by == user)
        .cloned()
        .collect();
    axum::Json(orders).into_response()
}

/// One of the caller's orders.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 401, description = "`about:blank`: no `Authorization: Bearer <user>`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`about:blank`: no such order for this user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    Extension(User(user)): Extension<User>,
    Path(id): Path<String>,
) -> Response {
    let found = id.parse::<u64>().ok().and_then(|id| {
        state
            .orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|o| o.id == id && o.created_by == user)
            .cloned()
    });
    match found {
        Some(order) => axum::Json(order).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("no order {id} for this user"),
        ),
    }
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text: `idempotency_requests_total{outcome}`, `idempotency_store_operation_seconds`", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "`about:blank`: metrics are not enabled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => problem(StatusCode::NOT_FOUND, "metrics are not enabled"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use idempotency_core::MemoryStore;
    use tower::ServiceExt;

    use super::*;

    fn metrics_handle() -> PrometheusHandle {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        HANDLE
            .get_or_init(|| {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .expect("one recorder per test process")
            })
            .clone()
    }

    fn service() -> Router {
        service_with(idempotency_audit::MemorySink::new())
    }

    fn service_with(trail: idempotency_audit::MemorySink) -> Router {
        app(
            DynStore::new(MemoryStore::new()),
            &IdempotencySettings::default(),
            Some(metrics_handle()),
            trail,
        )
    }

    fn order(user: Option<&str>, key: Option<&str>, body: &str) -> Request<Body> {
        let mut b = Request::post("/orders").header("content-type", "application/json");
        if let Some(u) = user {
            b = b.header("authorization", format!("Bearer {u}"));
        }
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    fn get_as(user: &str, uri: &str) -> Request<Body> {
        Request::get(uri)
            .header("authorization", format!("Bearer {user}"))
            .body(Body::empty())
            .unwrap()
    }

    async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
        let res = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    use axum::http::HeaderMap;

    #[tokio::test]
    async fn create_then_replay() {
        let app = service();
        let body = r#"{"sku":"book","quantity":2}"#;
        let (s, h, v) = send(&app, order(Some("alice"), Some("k1"), body)).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(h["location"], "/orders/1");
        assert_eq!(
            v,
            serde_json::json!({"id":1,"sku":"book","quantity":2,"created_by":"alice"})
        );
        let (s, h, v2) = send(&app, order(Some("alice"), Some("k1"), body)).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(h["idempotent-replayed"], "true");
        assert_eq!(v, v2);
        let (_, _, list) = send(&app, get_as("alice", "/orders")).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn every_decision_leaves_one_audit_event() {
        let trail = idempotency_audit::MemorySink::new();
        let app = service_with(trail.clone());
        let body = r#"{"sku":"book","quantity":2}"#;
        send(&app, order(Some("alice"), Some("k1"), body)).await;
        send(&app, order(Some("alice"), Some("k1"), body)).await;
        send(
            &app,
            order(Some("alice"), Some("k1"), r#"{"sku":"pen","quantity":1}"#),
        )
        .await;
        let types: Vec<String> = trail
            .events()
            .iter()
            .map(|e| e.event_type.clone())
            .collect();
        assert_eq!(
            types,
            [
                "idempotency.executed",
                "idempotency.replayed",
                "idempotency.mismatch"
            ]
        );
        let events = trail.events();
        // The key hash and a correlation id, never the raw key.
        assert!(
            events
                .iter()
                .all(|e| e.key_hash.is_some() && e.correlation_id.is_some())
        );
        assert!(!serde_json::to_string(&events).unwrap().contains("\"k1\""));
    }

    #[tokio::test]
    async fn authentication_comes_first() {
        let app = service();
        let (s, h, v) = send(&app, order(None, Some("k"), "{}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert_eq!(v["status"], 401);
        let (s, _, _) = send(&app, Request::get("/orders").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn missing_key_and_keys_per_user() {
        let app = service();
        let body = r#"{"sku":"pen","quantity":1}"#;
        let (s, _, v) = send(&app, order(Some("alice"), None, body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["type"], "https://idempotency.rs/problems/key-missing");
        let (_, _, a) = send(&app, order(Some("alice"), Some("same"), body)).await;
        let (_, h, b) = send(&app, order(Some("bob"), Some("same"), body)).await;
        assert!(h.get("idempotent-replayed").is_none());
        assert_eq!(a["created_by"], "alice");
        assert_eq!(b["created_by"], "bob");
        // Bob cannot read Alice's order.
        let (s, _, _) = send(&app, get_as("bob", &format!("/orders/{}", a["id"]))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, got) = send(&app, get_as("alice", &format!("/orders/{}", a["id"]))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(got, a);
        let (s, _, _) = send(&app, get_as("alice", "/orders/nope")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn invalid_orders_are_422_and_release_the_key() {
        let app = service();
        let long_sku = format!(r#"{{"sku":"{}","quantity":1}}"#, "s".repeat(101));
        for bad in [
            long_sku.as_str(),
            "not json",
            r#"{"sku":"","quantity":1}"#,
            r#"{"sku":"a","quantity":0}"#,
            r#"{"sku":"a","quantity":-1}"#,
            r#"{"sku":"a","quantity":1,"extra":true}"#,
            r#"{"sku":"a","quantity":1,"simulate":{"status":99}}"#,
            r#"{"sku":"a","quantity":1,"simulate":{"delay_ms":60001}}"#,
        ] {
            let (s, h, v) = send(&app, order(Some("alice"), Some("fixme"), bad)).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert_eq!(h["content-type"], "application/problem+json");
            assert_eq!(v["status"], 422);
        }
        // The corrected request runs under the same key.
        let (s, _, _) = send(
            &app,
            order(Some("alice"), Some("fixme"), r#"{"sku":"a","quantity":1}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn simulated_statuses_follow_the_outcome_policy() {
        let app = service();
        let fail = r#"{"sku":"a","quantity":1,"simulate":{"status":503}}"#;
        let (s, _, v) = send(&app, order(Some("alice"), Some("s5"), fail)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["status"], 503);
        // A retryable failure runs again (and fails again).
        let (s, h, _) = send(&app, order(Some("alice"), Some("s5"), fail)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.get("idempotent-replayed").is_none());
        // A business 4xx is replayed.
        let gone = r#"{"sku":"a","quantity":1,"simulate":{"status":409}}"#;
        let _ = send(&app, order(Some("alice"), Some("s4"), gone)).await;
        let (s, h, _) = send(&app, order(Some("alice"), Some("s4"), gone)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(h["idempotent-replayed"], "true");
        let ok = r#"{"sku":"a","quantity":1,"simulate":{"status":202,"delay_ms":1}}"#;
        let (s, _, v) = send(&app, order(Some("alice"), Some("s2"), ok)).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(v["simulated_status"], 202);
        let (_, _, list) = send(&app, get_as("alice", "/orders")).await;
        assert_eq!(
            list.as_array().unwrap().len(),
            0,
            "simulations create nothing"
        );
    }

    #[tokio::test]
    async fn health_and_metrics() {
        let app = service();
        let res = app
            .clone()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let _ = send(
            &app,
            order(Some("m"), Some("raw-key-m1"), r#"{"sku":"a","quantity":1}"#),
        )
        .await;
        let res = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        assert!(
            text.contains("idempotency_requests_total{outcome=\"executed\"}"),
            "{text}"
        );
        assert!(
            text.contains("idempotency_store_operation_seconds"),
            "{text}"
        );
        assert!(!text.contains("raw-key-m1"), "no raw key in metrics");
    }

    #[test]
    fn settings_make_the_policy() {
        let s = IdempotencySettings {
            lease: Some(Duration::from_secs(5)),
            retention: Some(Duration::from_secs(60)),
            wait: None,
        };
        assert_eq!(s.policy().lease_duration(), Duration::from_secs(5));
        assert_eq!(s.policy().retention_duration(), Duration::from_secs(60));
    }
}
