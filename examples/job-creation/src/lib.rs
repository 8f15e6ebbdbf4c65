//! The job creation service: completing an assessment creates **exactly
//! one** processing job, however often and however concurrently the
//! completion is asked for, across processes, with the application's own
//! UNIQUE constraint as the guard; a worker then runs each of the job's
//! stages once. See `README.md`.
//!
//! The binary (`src/main.rs`) reads its settings from the environment and
//! serves [`Service::router`]; tests build the same [`Service`] in process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use example_support::ops;
use example_support::routes::Routes;
use idempotency_audit::BufferedSink;
use idempotency_audit::postgres::{PostgresSink, StreamBy};
use idempotency_core::{Idempotent, Policy};
use idempotency_postgres::PostgresStore;
use idempotency_postgres::natural::{Isolation, RetryPolicy};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

pub mod assessments;
pub mod db;
pub mod jobs;
pub mod openapi;
pub mod problem;
mod sql;
pub mod worker;

pub use jobs::{JobStatus, TransitionError};

use problem::ApiError;

/// The schema version of the API and of every job.
pub const SCHEMA_VERSION: &str = "v1";

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// A fault to inject, for tests and demonstrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every job insert fails in the database (`JOB_CREATION_FAULT=insert`):
    /// completions succeed without a job.
    Insert,
    /// Every stage fails (`JOB_CREATION_FAULT=stage`): jobs are retried up
    /// to their `max_attempts`, then fail.
    Stage,
}

/// The faults armed in one service, switchable while it runs.
#[derive(Debug, Default)]
pub struct Faults {
    insert: AtomicBool,
    stage: AtomicBool,
    creation_failures: AtomicU64,
}

impl Faults {
    /// Arms or disarms `fault`.
    pub fn set(&self, fault: Fault, on: bool) {
        match fault {
            Fault::Insert => self.insert.store(on, Ordering::SeqCst),
            Fault::Stage => self.stage.store(on, Ordering::SeqCst),
        }
    }

    pub(crate) fn insert_fails(&self) -> bool {
        self.insert.load(Ordering::SeqCst)
    }

    pub(crate) fn stage_fails(&self) -> bool {
        self.stage.load(Ordering::SeqCst)
    }

    pub(crate) fn count_creation_failure(&self) {
        self.creation_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The schema of the service's tables.
    pub schema: String,
    /// The schema of the audit trail (the audit sink's `events` table).
    pub audit_schema: String,
    /// The schema of the idempotency store (the stages' records).
    pub store_schema: String,
    /// The isolation level of the job creation's transaction.
    pub isolation: Isolation,
    /// Whether this process runs a worker.
    pub worker: bool,
    /// The lease of a claimed job and of a running stage: how soon the work
    /// of a crashed worker is taken over.
    pub lease: Duration,
    /// How long each stage works (a stand-in for real work).
    pub stage_time: Duration,
    /// How often an idle worker looks for jobs queued by other processes.
    pub poll: Duration,
    /// Wait before a failed attempt's retry, times the attempt number.
    pub retry_delay: Duration,
    /// A fault to inject.
    pub fault: Option<Fault>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            schema: "job_creation".into(),
            audit_schema: "audit".into(),
            store_schema: idempotency_postgres::DEFAULT_SCHEMA.into(),
            isolation: Isolation::ReadCommitted,
            worker: true,
            lease: Duration::from_secs(10),
            stage_time: Duration::from_millis(200),
            poll: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            fault: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A schema name is not accepted.
    #[error(
        "invalid schema name {0:?}: 1 to 48 of a-z, 0-9 and _, not starting with a digit or pg_"
    )]
    Schema(String),
    /// The service's own migrations failed.
    #[error("migrating the job creation tables failed: {0}")]
    Migrate(#[from] db::MigrateError),
    /// The idempotency store could not be set up.
    #[error("setting up the idempotency store failed: {0}")]
    Store(#[from] idempotency_postgres::SetupError),
    /// The audit trail could not be set up.
    #[error("setting up the audit trail failed: {0}")]
    Audit(#[from] idempotency_audit::AuditError),
}

/// What every handler and the worker share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<sql::Sql>,
    pub(crate) config: Arc<Config>,
    pub(crate) isolation: Isolation,
    pub(crate) retry: RetryPolicy,
    pub(crate) store: PostgresStore,
    pub(crate) stages: Idempotent<PostgresStore>,
    pub(crate) buffer: BufferedSink,
    pub(crate) faults: Arc<Faults>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) worker_wake: Arc<Notify>,
}

/// A running job creation service: its router, its worker, and what tests
/// look into.
#[derive(Clone)]
pub struct Service {
    state: AppState,
    router: Router,
    routes: Vec<(Method, &'static str)>,
    stop: Arc<watch::Sender<bool>>,
    worker: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Migrates the service's tables, the idempotency store and the audit
    /// trail on `pool`, builds the service and starts its worker (when
    /// [`Config::worker`]).
    ///
    /// # Errors
    ///
    /// [`StartError`] when a setting or a migration fails.
    pub async fn start(
        pool: PgPool,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartError> {
        for name in [&config.schema, &config.audit_schema, &config.store_schema] {
            if !db::is_schema_name(name) {
                return Err(StartError::Schema(name.clone()));
            }
        }
        db::migrate(&pool, &config.schema).await?;
        let store = PostgresStore::builder()
            .schema(&config.store_schema)
            .build(pool.clone())?;
        store.migrate().await?;
        // One hash chain per assessment: creations of different assessments
        // never wait on each other.
        // Appended as the trail's writer role, whatever the pool connects as.
        let audit = PostgresSink::new(pool.clone())
            .with_schema(&config.audit_schema)?
            .with_least_privilege()
            .with_stream(StreamBy::Custom(Arc::new(|e| {
                let assessment = e
                    .attributes
                    .get("metadata")
                    .and_then(|m| m.get("assessment_id"))
                    .and_then(|a| a.as_str())
                    .unwrap_or("-");
                format!("job-creation/{assessment}")
            })));
        audit.migrate().await?;
        let buffer = BufferedSink::new(audit, 10_000);
        // The counters exist from the start, at zero.
        for name in [
            "processing_jobs_created_total",
            "processing_job_creation_failed_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        let faults = Faults::default();
        if let Some(fault) = config.fault {
            faults.set(fault, true);
        }
        // A stage's record: its lease is renewed while it runs; a duplicate
        // claim (a worker that took the job over) waits for it up to a lease
        // and a bit, so a crashed stage is taken over rather than skipped.
        let policy = Policy::default()
            .lease(config.lease)
            .wait(config.lease + Duration::from_secs(1))
            .max_attempts(10)
            .retention(Duration::from_secs(30 * 24 * 3600));
        let state = AppState {
            sql: Arc::new(sql::Sql::new(&config.schema)),
            isolation: config.isolation,
            retry: RetryPolicy::default(),
            stages: Idempotent::new(store.clone(), policy),
            store,
            buffer,
            faults: Arc::new(faults),
            metrics,
            worker_wake: Arc::new(Notify::new()),
            config: Arc::new(config),
            pool,
        };
        let Routes { router, list } = Routes::new()
            .route(
                Method::POST,
                "/api/funnels/{slug}/assessments",
                assessments::create,
            )
            .route(
                Method::POST,
                "/api/funnels/{slug}/assessments/{assessmentId}/complete",
                assessments::complete,
            )
            .route(Method::GET, "/api/processing-jobs/{jobId}", jobs::get)
            .route(
                Method::GET,
                "/api/assessments/{assessmentId}/processing-jobs",
                jobs::list,
            )
            .route(Method::GET, "/healthz", healthz)
            .route(Method::GET, "/readyz", readyz)
            .route(Method::GET, "/metrics", render_metrics)
            .route(Method::GET, "/openapi.json", openapi::openapi_json)
            .route(Method::GET, "/docs", openapi::docs_page)
            .route(Method::GET, "/docs/{*file}", openapi::docs_asset);
        let router = router
            .fallback(|| async { ApiError::no_route("no route matches this method and path") })
            .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state.clone())
            .layer(idempotency_tower::RequestIdLayer);
        let (stop, stop_rx) = watch::channel(false);
        let worker = state
            .config
            .worker
            .then(|| tokio::spawn(worker::run(state.clone(), stop_rx)));
        Ok(Self {
            state,
            router,
            routes: list,
            stop: Arc::new(stop),
            worker: Arc::new(tokio::sync::Mutex::new(worker)),
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

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The faults, to arm or disarm while the service runs.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Completions whose job could not be created, since the start.
    pub fn creation_failures(&self) -> u64 {
        self.state.faults.creation_failures.load(Ordering::Relaxed)
    }

    /// The idempotency store of the stage records.
    pub fn store(&self) -> &PostgresStore {
        &self.state.store
    }

    /// Moves `job`, held by the claim `(worker, attempt)`, from one status
    /// to another, or refuses (see [`JobStatus::may_become`]).
    ///
    /// # Errors
    ///
    /// [`TransitionError`]; nothing was changed then.
    pub async fn transition(
        &self,
        job: Uuid,
        claim: (&str, i32),
        from: JobStatus,
        to: JobStatus,
    ) -> Result<(), TransitionError> {
        jobs::transition_state(&self.state, job, claim, (from, to), None, Duration::ZERO).await
    }

    /// Waits until every queued audit event is written (or dropped).
    ///
    /// # Errors
    ///
    /// When the buffer's worker is gone.
    pub async fn flush_audit(&self) -> Result<(), idempotency_audit::AuditError> {
        self.state.buffer.flush().await
    }

    /// Audit events the fire-and-forget buffer dropped.
    pub fn audit_dropped(&self) -> u64 {
        self.state.buffer.dropped()
    }

    /// Stops the worker once its job in hand is done (at most 30 s), then
    /// the audit buffer once it has written what is queued (at most 10 s).
    pub async fn shutdown(&self) -> idempotency_audit::ShutdownReport {
        let _ = self.stop.send(true);
        if let Some(handle) = self.worker.lock().await.take() {
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .is_err()
            {
                tracing::warn!("the worker did not stop in 30 s; its job is taken over later");
                abort.abort();
            }
        }
        self.state.buffer.shutdown().await
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
