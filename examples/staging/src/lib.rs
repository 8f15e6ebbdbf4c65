//! The staging service: AP invoices uploaded once per file content, staged
//! for export through a guarded, audited approval workflow, posted to an
//! accounting system exactly once, and rolled back once.
//!
//! | shape of idempotency | where | the framework's tool |
//! |---|---|---|
//! | a row that may be inserted twice | an upload (`vendor + SHA-256(file) + user`), a staging (`invoice + destination + format`) | [`idempotency_postgres::natural::NaturalKey`] on the table's UNIQUE constraint |
//! | an operation that may run twice | a post or a rollback (`export + user + action`) | [`idempotency_core::Idempotent`] over [`PostgresStore`], completed inside the transition's transaction (`complete_in`) |
//! | an external system that must receive a call once | the destination's booking and reversal | one key per export derived from the framework's record key ([`idempotency_core::downstream_key`]), the same on every retry |
//!
//! Every transition is a guarded update, and its audit event (with the
//! export's before and after snapshots) is appended to the export's hash
//! chain in the same transaction ([`idempotency_audit::postgres::PostgresSink::append_in`]).

pub mod destination;
pub mod exports;
pub mod intake;
pub mod invoice;
pub mod openapi;
pub mod posting;
pub mod problem;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use example_support::migrate::{self, MigrateError, Migration};
use example_support::ops;
use example_support::routes::Routes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idempotency_audit::postgres::PostgresSink;
use idempotency_audit::{Actor, AuditEvent, Outcome};
use idempotency_core::{Idempotent, Policy};
use idempotency_postgres::{PostgresStore, Reaper};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use invoice::Money;
use problem::ApiError;

/// Metric names.
pub mod metric {
    /// Duplicates answered with the first result, by `operation`.
    pub const DUPLICATES: &str = "staging_duplicates_prevented_total";
    /// Reused idempotency keys refused and recorded.
    pub const CONFLICTS: &str = "staging_idempotency_conflicts_total";
    /// Postings by `outcome` (`posted`, `failed`, `replayed`).
    pub const POSTINGS: &str = "staging_postings_total";
    /// Rollbacks done.
    pub const ROLLBACKS: &str = "staging_rollbacks_total";
    /// Transitions by `to` state.
    pub const TRANSITIONS: &str = "staging_transitions_total";
    /// Seconds an export spent in a state, by `state`, observed when it leaves it.
    pub const STAGE_SECONDS: &str = "staging_stage_seconds";
}

/// The service's settings (see `main.rs` for the environment variables).
#[derive(Debug, Clone)]
pub struct Config {
    /// Schema of the service's tables.
    pub schema: String,
    /// Schema of the audit trail.
    pub audit_schema: String,
    /// Schema of the idempotency store (post and rollback records).
    pub store_schema: String,
    /// Where uploaded files are kept, content-addressed by SHA-256.
    pub file_dir: PathBuf,
    /// `STAGING_MAX_UPLOAD_BYTES`.
    pub max_upload_bytes: usize,
    /// `IDEMPOTENCY_TTL_SECONDS`: retention of post and rollback records.
    pub idempotency_ttl: Duration,
    /// `IDEMPOTENCY_MAX_EXECUTIONS`: destination calls per post or rollback.
    pub max_executions: u32,
    /// `IDEMPOTENCY_CLEANUP_HOURS`: how often expired records are purged.
    pub cleanup_every: Duration,
    /// `STAGING_QUALITY_THRESHOLD`.
    pub quality_threshold: i32,
    /// `STAGING_APPROVAL_TIMEOUT_HOURS`.
    pub approval_timeout: Duration,
    /// `STAGING_MAX_BATCH_SIZE`.
    pub max_batch_size: usize,
    /// `STAGING_ENABLE_DIFF_TRACKING`.
    pub diff_tracking: bool,
    /// `STAGING_ENABLE_APPROVAL_CHAINS`.
    pub approval_chains: bool,
    /// `STAGING_ENABLE_ROLLBACK`.
    pub rollback: bool,
    /// `STAGING_DEFAULT_PRIORITY`.
    pub default_priority: i32,
    /// `STAGING_COMPLIANCE_FLAGS`.
    pub compliance_flags: Vec<String>,
    /// `STAGING_SECOND_APPROVAL_ABOVE`: totals above it need two approvers.
    pub second_approval_above: Money,
    /// `STAGING_DESTINATION_URL`.
    pub destination_url: String,
    /// `STAGING_DESTINATION_TIMEOUT_MS`: one destination call's deadline.
    pub destination_timeout: Duration,
    /// `STAGING_LEASE_MS`: lease of a running post or rollback (renewed
    /// while it runs): how soon a crashed one is taken over.
    pub lease: Duration,
    /// `STAGING_FAULT`: a fault to inject (tests and demonstrations only).
    pub fault: Option<Fault>,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The process exits right after the destination booked a posting,
    /// before its transition commits (a crash at the worst moment).
    CrashAfterBooking,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            schema: "staging".into(),
            audit_schema: "audit".into(),
            store_schema: "idempotency".into(),
            file_dir: std::env::temp_dir().join("example-staging-files"),
            max_upload_bytes: 20 * 1024 * 1024,
            idempotency_ttl: Duration::from_secs(86_400),
            max_executions: 3,
            cleanup_every: Duration::from_secs(3_600),
            quality_threshold: 70,
            approval_timeout: Duration::from_secs(72 * 3_600),
            max_batch_size: 1_000,
            diff_tracking: true,
            approval_chains: true,
            rollback: true,
            default_priority: 5,
            compliance_flags: vec!["SOX".into(), "GDPR".into(), "FINANCIAL".into()],
            second_approval_above: Money(1_000_000),
            destination_url: "http://127.0.0.1:3007".into(),
            destination_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(10),
            fault: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A schema name is not valid.
    #[error("{0:?} is not a schema name")]
    Schema(String),
    /// The service's own migrations failed.
    #[error("migrating the staging tables failed: {0}")]
    Migrate(#[from] MigrateError),
    /// The idempotency store could not be set up.
    #[error("setting up the idempotency store failed: {0}")]
    Store(#[from] idempotency_postgres::SetupError),
    /// The audit trail could not be set up.
    #[error("setting up the audit trail failed: {0}")]
    Audit(#[from] idempotency_audit::AuditError),
    /// The file directory cannot be created.
    #[error("cannot create STAGING_FILE_DIR {0}: {1}")]
    Files(PathBuf, std::io::Error),
}

/// The HTTP client of the destination.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<Config>,
    pub(crate) store: PostgresStore,
    pub(crate) actions: Idempotent<PostgresStore>,
    pub(crate) audit: PostgresSink,
    pub(crate) http: HttpClient,
    pub(crate) metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// `template` with `{{schema}}` as the service's schema.
    pub(crate) fn sql(&self, template: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(migrate::apply(template, &self.config.schema))
    }

    /// `template` with `{{schema}}` as the service's schema, as text.
    pub(crate) fn sql_text(&self, template: &str) -> String {
        migrate::apply(template, &self.config.schema)
    }

    /// Appends `event` to `stream` inside the caller's transaction.
    pub(crate) async fn audit_in(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        event: &AuditEvent,
    ) -> Result<(), ApiError> {
        self.audit
            .append_to_stream(conn, stream, event)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, stream, "audit event not written");
                ApiError::unavailable("the audit trail could not be written; nothing was changed")
            })
    }
}

/// An audit event of the service by `actor`.
pub(crate) fn event(
    kind: &str,
    subject: &str,
    actor: &str,
    outcome: Outcome,
) -> idempotency_audit::AuditEventBuilder {
    AuditEvent::builder(kind, "/staging")
        .subject(subject)
        .actor(Actor::user(actor))
        .outcome(outcome)
}

/// The migrations, in order (`{{schema}}` stands for the quoted schema).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "staging",
    sql: include_str!("../migrations/0001_staging.sql"),
}];

/// A running staging service.
pub struct Service {
    state: AppState,
    router: Router,
    routes: Vec<(Method, &'static str)>,
    reaper: Option<Reaper>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Migrates (the service's schema, the store's, the audit trail's) and
    /// builds the router.
    ///
    /// # Errors
    ///
    /// [`StartError`].
    pub async fn start(
        pool: PgPool,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartError> {
        for name in [&config.schema, &config.audit_schema, &config.store_schema] {
            if !example_support::settings::is_schema_name(name) {
                return Err(StartError::Schema(name.clone()));
            }
        }
        std::fs::create_dir_all(&config.file_dir)
            .map_err(|e| StartError::Files(config.file_dir.clone(), e))?;
        migrate::run(
            &pool,
            &config.schema,
            &format!("example-staging:migrate:{}", config.schema),
            MIGRATIONS,
        )
        .await?;
        let store = PostgresStore::builder()
            .schema(&config.store_schema)
            .build(pool.clone())?;
        store.migrate().await?;
        // Migrated with the pool's (broad) role; appended as the trail's
        // writer role and read as its reader, whatever the pool connects as.
        let audit = PostgresSink::new(pool.clone())
            .with_schema(&config.audit_schema)?
            .with_least_privilege();
        audit.migrate().await?;
        for name in [metric::CONFLICTS, metric::ROLLBACKS] {
            metrics::counter!(name).increment(0);
        }
        // A post or rollback: renewed while it runs; a duplicate waits for
        // it (every destination attempt and a margin) and gets its result.
        let per_action = config.destination_timeout * config.max_executions.max(1);
        let policy = Policy::default()
            .lease(config.lease)
            .wait(per_action + config.lease + Duration::from_secs(5))
            .max_attempts(1_000)
            .retention(config.idempotency_ttl);
        let reaper = Some(store.spawn_reaper(config.cleanup_every, 1_000));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        let state = AppState {
            actions: Idempotent::new(store.clone(), policy),
            store,
            audit,
            http,
            metrics,
            config: Arc::new(config),
            pool,
        };
        let max_body = state.config.max_upload_bytes + 64 * 1024;
        let Routes { router, list } = Routes::new()
            .route(Method::POST, "/api/v1/ingestion/upload", intake::upload)
            .route(Method::GET, "/api/v1/ingestion/jobs/{id}", intake::get_job)
            .route(Method::GET, "/api/v1/invoices/{id}", intake::get_invoice)
            .route(Method::POST, "/api/v1/staging/stage", exports::stage)
            .route(Method::POST, "/api/v1/staging/batch", exports::batch)
            .route(
                Method::GET,
                "/api/v1/staging/batches/{id}",
                exports::get_batch,
            )
            .route(Method::GET, "/api/v1/staging/{id}", exports::get)
            .route(Method::POST, "/api/v1/staging/{id}/review", exports::review)
            .route(
                Method::PUT,
                "/api/v1/staging/{id}/approve",
                exports::approve,
            )
            .route(Method::PUT, "/api/v1/staging/{id}/reject", exports::reject)
            .route(Method::GET, "/api/v1/staging/{id}/diff", exports::diff)
            .route(Method::GET, "/api/v1/staging/{id}/audit", exports::audit)
            .route(Method::POST, "/api/v1/staging/{id}/post", posting::post)
            .route(
                Method::POST,
                "/api/v1/staging/{id}/rollback",
                posting::rollback,
            )
            .route(Method::GET, "/healthz", healthz)
            .route(Method::GET, "/readyz", readyz)
            .route(Method::GET, "/metrics", render_metrics)
            .route(Method::GET, "/openapi.json", openapi::openapi_json)
            .route(Method::GET, "/docs", openapi::docs_page)
            .route(Method::GET, "/docs/{*file}", openapi::docs_asset);
        let router = router
            .fallback(|| async {
                ApiError::new(
                    http::StatusCode::NOT_FOUND,
                    "no-route",
                    "No such route",
                    "no route matches this method and path",
                )
            })
            .layer(DefaultBodyLimit::max(max_body))
            .with_state(state.clone())
            .layer(idempotency_tower::RequestIdLayer);
        Ok(Self {
            state,
            router,
            routes: list,
            reaper,
        })
    }

    /// The HTTP service.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Every `(method, path)` the router serves.
    pub fn routes(&self) -> &[(Method, &'static str)] {
        &self.routes
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The audit trail.
    pub fn audit(&self) -> &PostgresSink {
        &self.state.audit
    }

    /// Stops the background record purge.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.reaper.take() {
            r.shutdown().await;
        }
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`ready`", body = String, content_type = "text/plain"),
              (status = 503, description = "`unavailable`", body = openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    if ops::database_ready(&app.pool).await {
        "ready\n".into_response()
    } else {
        ApiError::unavailable("the database does not answer").into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain; version=0.0.4"),
              (status = 404, description = "Metrics are disabled", body = String, content_type = "text/plain")))]
pub(crate) async fn render_metrics(State(app): State<AppState>) -> Response {
    ops::metrics(app.metrics.as_ref())
}

/// A bounded text field of a request: 1 to `max` characters after trimming.
pub(crate) fn text_field(
    v: &Value,
    name: &str,
    max: usize,
    errors: &mut Vec<(String, String)>,
) -> String {
    match v.get(name).and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().count() <= max => s.to_owned(),
        _ => {
            errors.push((
                format!("/{name}"),
                format!("{name} is required: 1 to {max} characters"),
            ));
            String::new()
        }
    }
}

/// An optional bounded text field.
pub(crate) fn optional_text(
    v: &Value,
    name: &str,
    max: usize,
    errors: &mut Vec<(String, String)>,
) -> Option<String> {
    match v.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().chars().count() <= max => {
            Some(s.trim().to_owned()).filter(|s| !s.is_empty())
        }
        _ => {
            errors.push((
                format!("/{name}"),
                format!("{name} must be a string of at most {max} characters"),
            ));
            None
        }
    }
}

/// The JSON object of a request body.
pub(crate) fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(format!("the body is not JSON: {e}"))),
    }
}
