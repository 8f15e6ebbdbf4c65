//! The promotion service: promote a finalized estimate snapshot to **exactly
//! one** work order, however often, however concurrently, and across however
//! many processes the promotion is asked for; see `README.md`.
//!
//! The binary (`src/main.rs`) reads its settings from the environment and
//! serves [`Service::router`]; tests build the same [`Service`] in process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use example_support::ops;
use example_support::routes::Routes;
use idempotency_audit::postgres::{PostgresSink, StreamBy};
use idempotency_audit::{AuditEvent, BufferedSink};
use idempotency_core::{
    BoxError, FingerprintMode, IdempotencyStore, RecordState, Resolution, StorageKey,
};
use idempotency_postgres::PostgresStore;
use idempotency_tower::{
    Concurrency, IdempotencyLayer, KeyMaterial, OutcomeAction, OutcomePolicy, PathParams,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;

pub mod db;
pub mod estimates;
pub mod ids;
pub mod openapi;
pub mod problem;
pub mod promote;

pub use promote::{
    ATTEMPTED, AttemptOutcome, PROMOTE_ROUTE, RESOLVED, SOURCE, canonical_version, subject,
};

use problem::ApiError;

/// The idempotency namespace of the promotion records.
pub const NAMESPACE: &str = "promotion";

/// How long a promotion record is kept: the link between a snapshot and its
/// work order is permanent, so effectively for ever (ten years).
pub const RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Executions one promotion may start (crash takeovers and retries included).
pub const MAX_ATTEMPTS: u32 = 10;

/// A fault to inject into the promotion transaction, for the crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The process aborts after writing the work order, the record's
    /// completion and the audit event, before the commit (`PROMOTION_FAULT=crash-before-commit`).
    CrashBeforeCommit,
    /// The transaction is rolled back before the commit and the attempt
    /// answers 503 (`PROMOTION_FAULT=fail-once`: the first promotion only).
    FailBeforeCommit,
}

/// A promotion held just before its transaction starts, until released:
/// lets a test act (take the record over, resolve it) while an attempt is
/// in flight. See [`Service::hold_next_promotion`].
#[derive(Debug, Clone, Default)]
pub struct Hold {
    reached: Arc<Notify>,
    release: Arc<Notify>,
}

impl Hold {
    /// Waits until the held promotion has reached the hold point.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held promotion go on.
    pub fn release(&self) {
        self.release.notify_one();
    }

    pub(crate) async fn hold(&self) {
        self.reached.notify_one();
        self.release.notified().await;
    }
}

/// The faults armed in one service.
#[derive(Debug, Default)]
pub struct Faults {
    crash: bool,
    fail_next: AtomicU32,
    hold: Mutex<Option<Hold>>,
}

impl Faults {
    /// Arms `fault`: a crash for every promotion, a failure for the next `times`.
    pub fn arm(&mut self, fault: Fault, times: u32) {
        match fault {
            Fault::CrashBeforeCommit => self.crash = true,
            Fault::FailBeforeCommit => {
                self.fail_next.fetch_add(times, Ordering::SeqCst);
            }
        }
    }

    /// The hold for this promotion, if one is armed (it is used up).
    pub(crate) fn take_hold(&self) -> Option<Hold> {
        self.hold.lock().map_or(None, |mut h| h.take())
    }

    /// The fault for this promotion, if any (a failure is used up).
    pub(crate) fn take(&self) -> Option<Fault> {
        if self.crash {
            return Some(Fault::CrashBeforeCommit);
        }
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| Fault::FailBeforeCommit)
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lease of an executing promotion (renewed while it runs): how soon a
    /// crashed attempt is taken over.
    pub lease: Duration,
    /// How long a duplicate waits for the first attempt's result before
    /// answering 409 `in-flight`.
    pub wait: Duration,
    /// The bearer token of the admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// A fault to inject (tests only).
    pub fault: Option<Fault>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            wait: Duration::from_secs(5),
            admin_token: None,
            fault: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The service's own migrations failed.
    #[error("migrating the promotion tables failed: {0}")]
    Migrate(#[from] db::MigrateError),
    /// The idempotency store could not be set up.
    #[error("setting up the idempotency store failed: {0}")]
    Store(#[from] idempotency_postgres::SetupError),
    /// The audit trail could not be set up.
    #[error("setting up the audit trail failed: {0}")]
    Audit(#[from] idempotency_audit::AuditError),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) store: PostgresStore,
    pub(crate) keys: IdempotencyLayer<PostgresStore>,
    pub(crate) audit: PostgresSink,
    pub(crate) buffer: BufferedSink,
    pub(crate) faults: Arc<Faults>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) admin_token: Option<Arc<str>>,
}

/// A running promotion service: its router and what tests look into.
#[derive(Clone)]
pub struct Service {
    state: AppState,
    router: Router,
    routes: Vec<(Method, &'static str)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Migrates the promotion tables, the idempotency store and the audit
    /// trail on `pool`, then builds the service.
    ///
    /// # Errors
    ///
    /// [`StartError`] when a migration fails.
    pub async fn start(
        pool: PgPool,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartError> {
        db::migrate(&pool).await?;
        let store = PostgresStore::builder().build(pool.clone())?;
        store.migrate().await?;
        // One hash chain per snapshot: promotions of different snapshots never wait on each other.
        // Appended as the trail's writer role, whatever the pool connects as.
        let audit = PostgresSink::new(pool.clone())
            .with_least_privilege()
            .with_stream(StreamBy::Custom(Arc::new(|e: &AuditEvent| {
                format!("promotion/{}", e.subject.as_deref().unwrap_or("-"))
            })));
        audit.migrate().await?;
        let buffer = BufferedSink::new(audit.clone(), 10_000);
        let mut faults = Faults::default();
        if let Some(fault) = config.fault {
            faults.arm(fault, 1);
        }
        let verify_pool = pool.clone();
        let layer = IdempotencyLayer::new(store.clone())
            .namespace(NAMESPACE)
            // Decoded and canonical, as the handler reads them: the estimate id
            // case-sensitive text, the version a number (`/estimates/%45-1/snapshots/01/`
            // and `/estimates/E-1/snapshots/+1/` are promotion E-1/1, one record).
            .key_source(
                PathParams::new(["estimate_id", "snapshot_version"])
                    .normalise("snapshot_version", |v: &str| {
                        Ok(promote::canonical_version(v))
                    }),
            )
            // The path is the whole request: no body to compare, and the query
            // (`?utm=1`) does not count.
            .fingerprint(FingerprintMode::None)
            .lease(config.lease)
            .retention(RETENTION)
            .max_attempts(MAX_ATTEMPTS)
            .concurrency(Concurrency::Wait(config.wait))
            // An unknown estimate or version may exist later: never keep a 404.
            .outcomes(OutcomePolicy::default().with(StatusCode::NOT_FOUND, OutcomeAction::Release))
            .verify_resource(move |resource: String| {
                let pool = verify_pool.clone();
                async move {
                    promote::work_order_exists(&pool, &resource)
                        .await
                        .map_err(BoxError::from)
                }
            })
            .decision_hook(promote::PromotionHook {
                buffer: buffer.clone(),
            });
        let state = AppState {
            pool,
            store,
            keys: layer.clone(),
            audit,
            buffer,
            faults: Arc::new(faults),
            metrics,
            admin_token: config.admin_token.map(Arc::from),
        };
        // A path naming no snapshot is answered before the layer: nothing is
        // claimed, stored or audited for it (see `ids`).
        let promotion = Routes::new()
            .route(Method::POST, PROMOTE_ROUTE, promote::promote)
            .map(|r| {
                r.route_layer(layer)
                    .route_layer(axum::middleware::from_fn(ids::bounded_snapshot_path))
            });
        let Routes { router, list } = Routes::new()
            .route(Method::POST, "/estimates", estimates::create)
            .route(Method::GET, "/estimates/{estimate_id}", estimates::get)
            .route(
                Method::POST,
                "/estimates/{estimate_id}/finalize",
                estimates::finalize,
            )
            .route(
                Method::POST,
                "/estimates/{estimate_id}/revise",
                estimates::revise,
            )
            .route(Method::GET, "/work-orders/{id}", work_order)
            .route(Method::GET, "/promotions", list_promotions)
            .route(
                Method::POST,
                "/admin/promotions/{estimate_id}/{snapshot_version}/resolve",
                resolve,
            )
            .route(Method::GET, "/healthz", healthz)
            .route(Method::GET, "/readyz", readyz)
            .route(Method::GET, "/metrics", render_metrics)
            .route(Method::GET, "/openapi.json", openapi::openapi_json)
            .route(Method::GET, "/docs", openapi::docs_page)
            .route(Method::GET, "/docs/{*file}", openapi::docs_asset)
            .merge(promotion)
            .map(|r| {
                r.fallback(|| async {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not-found",
                        "No such route",
                        "no route matches this method and path",
                    )
                })
            });
        let router = router
            .with_state(state.clone())
            .layer(idempotency_tower::RequestIdLayer);
        Ok(Self {
            state,
            router,
            routes: list,
        })
    }

    /// The HTTP service.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Every `(method, path)` the router serves, paths in axum's syntax
    /// (`{*file}` for a wildcard).
    pub fn routes(&self) -> &[(Method, &'static str)] {
        &self.routes
    }

    /// The idempotency store.
    pub fn store(&self) -> &PostgresStore {
        &self.state.store
    }

    /// The storage key of the promotion of `snapshot_version` of `estimate_id`.
    pub fn promotion_key(&self, estimate_id: &str, snapshot_version: &str) -> StorageKey {
        promotion_key(&self.state, estimate_id, snapshot_version)
    }

    /// Holds the next promotion just before its transaction starts, until
    /// the returned [`Hold`] is released (test support).
    pub fn hold_next_promotion(&self) -> Hold {
        let hold = Hold::default();
        if let Ok(mut slot) = self.state.faults.hold.lock() {
            *slot = Some(hold.clone());
        }
        hold
    }

    /// Waits until every queued audit event is written.
    ///
    /// # Errors
    ///
    /// When the buffer's worker is gone.
    pub async fn flush_audit(&self) -> Result<(), idempotency_audit::AuditError> {
        self.state.buffer.flush().await
    }

    /// Audit events dropped by the fire-and-forget buffer.
    pub fn audit_dropped(&self) -> u64 {
        self.state.buffer.dropped()
    }

    /// Stops the audit buffer once it has written what is queued (at most
    /// 10 s; what is left then is counted as abandoned), and says how it went.
    pub async fn shutdown(&self) -> idempotency_audit::ShutdownReport {
        self.state.buffer.shutdown().await
    }
}

/// The record of a promotion: `estimate_id` as the handler reads it
/// (decoded), `version` in any spelling.
fn promotion_key(state: &AppState, estimate_id: &str, version: &str) -> StorageKey {
    let material = KeyMaterial::Derived(vec![
        estimate_id.as_bytes().to_vec(),
        promote::canonical_version(version).into_bytes(),
    ]);
    state
        .keys
        .storage_key(&http::Method::POST, PROMOTE_ROUTE, "", &material)
}

/// `GET /work-orders/{id}`.
#[utoipa::path(
    get,
    path = "/work-orders/{id}",
    tag = "promotion",
    params(("id" = String, Path, description = "`WO-` and 1 to 19 digits")),
    responses((status = 200, description = "The work order", body = openapi::WorkOrder))
)]
pub(crate) async fn work_order(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !ids::is_work_order_id(&id) {
        return Err(ApiError::not_a_work_order_id());
    }
    let Some(row) = sqlx::query(
        "SELECT id, estimate_id, snapshot_version, customer_id, lines, total_cents, status, \
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at \
         FROM promotion.work_orders WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&app.pool)
    .await?
    else {
        return Err(ApiError::work_order_not_found(&id));
    };
    let lines: sqlx::types::Json<Value> = row.try_get("lines")?;
    Ok(axum::Json(json!({
        "workorder_id": row.try_get::<String, _>("id")?,
        "estimate_id": row.try_get::<String, _>("estimate_id")?,
        "snapshot_version": row.try_get::<i32, _>("snapshot_version")?,
        "customer_id": row.try_get::<String, _>("customer_id")?,
        "total_cents": row.try_get::<i64, _>("total_cents")?,
        "status": row.try_get::<String, _>("status")?,
        "created_at": row.try_get::<String, _>("created_at")?,
        "lines": lines.0,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    estimate_id: Option<String>,
}

/// The record's lifecycle fields, as the list and the admin answer show them.
fn record_json(record: Option<&idempotency_core::Record>) -> Value {
    let Some(r) = record else {
        return json!({"status": "EXPIRED", "attempts": null, "fence": null, "detail": null});
    };
    let detail = match &r.state {
        RecordState::Failed(f) => Some(f.reason.clone()),
        RecordState::Corrupted(c) => Some(c.detail.clone()),
        _ => None,
    };
    json!({
        "status": r.state.name(),
        "attempts": r.attempts,
        "fence": r.fence,
        "detail": detail,
    })
}

/// `GET /promotions?estimate_id=...`: the estimate's promotion records.
#[utoipa::path(
    get,
    path = "/promotions",
    tag = "promotion",
    params(("estimate_id" = String, Query, description = "`E-` and 1 to 19 digits")),
    responses((status = 200, description = "The estimate's promotion records", body = openapi::PromotionRecords))
)]
pub(crate) async fn list_promotions(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let Some(estimate_id) = q.estimate_id.filter(|e| !e.is_empty()) else {
        return Err(ApiError::missing_parameter("estimate_id"));
    };
    if !ids::is_estimate_id(&estimate_id) {
        return Err(ApiError::not_an_estimate_id());
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM promotion.estimates WHERE id = $1)")
            .bind(&estimate_id)
            .fetch_one(&app.pool)
            .await?;
    if !exists {
        return Err(ApiError::estimate_not_found(&estimate_id));
    }
    let rows = sqlx::query(
        "SELECT id, snapshot_version, workorder_id, \
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at, \
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS updated_at \
         FROM promotion.promotions WHERE estimate_id = $1 ORDER BY snapshot_version",
    )
    .bind(&estimate_id)
    .fetch_all(&app.pool)
    .await?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.try_get("snapshot_version")?;
        let key = promotion_key(&app, &estimate_id, &version.to_string());
        let record = app.store.get(&key).await.map_err(store_error)?;
        let mut item = json!({
            "promotion_id": row.try_get::<uuid::Uuid, _>("id")?,
            "estimate_id": estimate_id,
            "snapshot_version": version,
            "workorder_id": row.try_get::<Option<String>, _>("workorder_id")?,
            "created_at": row.try_get::<String, _>("created_at")?,
            "updated_at": row.try_get::<String, _>("updated_at")?,
        });
        if let (Some(obj), Value::Object(rec)) =
            (item.as_object_mut(), record_json(record.as_ref()))
        {
            obj.extend(rec);
        }
        list.push(item);
    }
    Ok(axum::Json(json!({"estimate_id": estimate_id, "promotions": list})).into_response())
}

fn store_error(e: idempotency_core::StoreError) -> ApiError {
    tracing::warn!(error = %e, "idempotency store failed");
    if e.is_transient() {
        ApiError::unavailable("the idempotency store is unavailable; retry later")
    } else {
        ApiError::internal("the idempotency store failed")
    }
}

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.admin_token else {
        return Err(ApiError::admin_disabled());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time over the token's length.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// `POST /admin/promotions/{estimate_id}/{snapshot_version}/resolve`: an
/// operator clears a CORRUPTED record. The dangling link is removed, an
/// audited `promotion.resolved` event is written, and the record becomes
/// FAILED (retryable), so the next promotion creates the work order afresh.
/// Body (optional): `{"reason": "..."}`.
#[utoipa::path(
    post,
    path = "/admin/promotions/{estimate_id}/{snapshot_version}/resolve",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("estimate_id" = String, Path, description = "`E-` and 1 to 19 digits"),
        ("snapshot_version" = String, Path, description = "1 to 2147483647"),
    ),
    request_body(content = Option<openapi::Resolve>, content_type = "application/json", description = "Optional"),
    responses((status = 200, description = "The record is now `FAILED` with no work order; the next promotion creates one", body = openapi::Resolved))
)]
pub(crate) async fn resolve(
    State(app): State<AppState>,
    path: Result<ids::SnapshotPath, ApiError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let ids::SnapshotPath {
        estimate_id,
        version: version_num,
    } = path?;
    let version = version_num.to_string();
    let reason = if body.is_empty() {
        "resolved by an operator".to_owned()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => match o.get("reason") {
                None => "resolved by an operator".to_owned(),
                Some(Value::String(r)) if !r.trim().is_empty() && r.len() <= 1000 => r.clone(),
                Some(_) => {
                    return Err(ApiError::validation(vec![(
                        "/reason".into(),
                        "must be a non-empty string of at most 1000 bytes".into(),
                    )]));
                }
            },
            _ => return Err(ApiError::invalid_json("the body must be a JSON object")),
        }
    };
    let key = promotion_key(&app, &estimate_id, &version);
    let Some(record) = app.store.get(&key).await.map_err(store_error)? else {
        return Err(ApiError::promotion_not_found(&estimate_id, &version));
    };
    let RecordState::Corrupted(corrupted) = &record.state else {
        return Err(ApiError::not_corrupted(record.state.name()));
    };
    let correlation = headers
        .get(idempotency_tower::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let before_link: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE promotion.promotions p SET workorder_id = NULL, updated_at = now() \
         FROM (SELECT id, workorder_id FROM promotion.promotions \
               WHERE estimate_id = $1 AND snapshot_version = $2 FOR UPDATE) old \
         WHERE p.id = old.id RETURNING old.workorder_id",
    )
    .bind(&estimate_id)
    .bind(version_num)
    .fetch_optional(&app.pool)
    .await?;
    let before = json!({
        "status": "CORRUPTED",
        "detail": corrupted.detail,
        "workorderId": before_link.flatten(),
    });
    // The failed attempts' fire-and-forget events go first, so the trail
    // reads in causal order: attempts, then their resolution.
    if let Err(e) = app.buffer.flush().await {
        tracing::warn!(error = %e, "audit buffer could not be flushed before the resolution");
    }
    promote::audit_resolution(
        &app.audit,
        &estimate_id,
        &version,
        &reason,
        before,
        &correlation,
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "could not write the resolution's audit event");
        ApiError::unavailable("the audit trail could not be written; retry the resolution")
    })?;
    let failure = idempotency_core::Failure::retryable(format!("resolved: {reason}"));
    app.store
        .resolve(&key, Resolution::Fail(failure))
        .await
        .map_err(store_error)?;
    tracing::warn!(estimate_id, version, %reason, "corrupted promotion record resolved by an operator");
    let after = app.store.get(&key).await.map_err(store_error)?;
    let mut out =
        json!({"estimate_id": estimate_id, "snapshot_version": version_num, "workorder_id": null});
    if let (Some(obj), Value::Object(rec)) = (out.as_object_mut(), record_json(after.as_ref())) {
        obj.extend(rec);
    }
    Ok(axum::Json(out).into_response())
}

/// `GET /readyz`: 200 when the database answers, else 503.
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

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "`ready`: the database answers", body = String, content_type = "text/plain"))
)]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    if ops::database_ready(&app.pool).await {
        "ready\n".into_response()
    } else {
        ApiError::unavailable("the database does not answer").into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "Metrics are disabled", body = String, content_type = "text/plain"),
    )
)]
pub(crate) async fn render_metrics(State(app): State<AppState>) -> Response {
    ops::metrics(app.metrics.as_ref())
}
