//! The order-intake service: orders taken in exactly once per `(channel,
//! externalOrderId)` or `Idempotency-Key`, an append-only event log and a
//! guarded state machine enforced by PostgreSQL, and one Temporal workflow
//! per order (`OrderIntakeWorkflow`, id `order-intake-{orderId}`), started
//! exactly once through an outbox, whose activities run once per
//! `workflowId + activityId` however often Temporal retries them; see
//! `README.md`.
//!
//! The binary (`src/main.rs`) reads its settings and runs [`Service`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use example_support::routes::Routes;
use idempotency_postgres::PostgresStore;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

mod actions;
pub mod activities;
pub mod db;
pub mod domain;
pub mod intake;
pub mod lifecycle;
pub mod openapi;
pub mod problem;
pub mod read;
pub mod temporal;
pub mod workflow;

use problem::ApiError;

/// Metric names (the `metrics` facade; `/metrics` renders them).
pub mod metrics_names {
    /// Orders taken in.
    pub const ORDERS_CREATED: &str = "orders_created_total";
    /// Duplicate intakes, by `outcome` (`replayed`, `mismatch`).
    pub const DUPLICATES: &str = "orders_intake_duplicates_total";
    /// Transitions made through the API, by `to`.
    pub const TRANSITIONS: &str = "orders_transitions_total";
    /// Activity attempts, by `activity`.
    pub const ACTIVITY_ATTEMPTS: &str = "orders_activity_attempts_total";
    /// Activity executions, by `activity` and `outcome` (`executed`, `replayed`, `failed`).
    pub const ACTIVITY_RUNS: &str = "orders_activity_runs_total";
    /// Workflow starts by the relay, by `outcome` (`started`, `already_started`).
    pub const WORKFLOWS_STARTED: &str = "orders_workflow_starts_total";
}

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The HTTP API.
    pub api: bool,
    /// The outbox relay (starts workflows).
    pub relay: bool,
    /// The Temporal worker (the workflow and its activities).
    pub worker: bool,
}

impl Parts {
    /// Everything.
    pub const ALL: Self = Self {
        api: true,
        relay: true,
        worker: true,
    };

    /// Parses `api,relay,worker` (any non-empty subset).
    ///
    /// # Errors
    ///
    /// A one-line message naming what is not a part.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Self {
            api: false,
            relay: false,
            worker: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "api" => p.api = true,
                "relay" => p.relay = true,
                "worker" => p.worker = true,
                other => return Err(format!("{other:?} is not one of api, relay, worker")),
            }
        }
        Ok(p)
    }
}

/// A fault to inject (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The worker aborts right after an activity's transaction committed,
    /// before Temporal hears of it.
    CrashAfterActivityCommit,
    /// The process aborts after an order's commit, once the relay read its
    /// outbox row, before the workflow is started.
    CrashBeforeWorkflowStart,
    /// The process aborts after the relay started a workflow, before it
    /// marked the outbox row.
    CrashAfterWorkflowStart,
}

impl Fault {
    /// Parses an `OMS_FAULT` value.
    ///
    /// # Errors
    ///
    /// A one-line message listing the faults.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "crash-after-activity-commit" => Ok(Self::CrashAfterActivityCommit),
            "crash-before-workflow-start" => Ok(Self::CrashBeforeWorkflowStart),
            "crash-after-workflow-start" => Ok(Self::CrashAfterWorkflowStart),
            other => Err(format!(
                "{other:?} is not crash-after-activity-commit, crash-before-workflow-start or crash-after-workflow-start"
            )),
        }
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL schema of the order tables (also the connection's
    /// `search_path`).
    pub schema: String,
    /// The schema of the idempotency store (the activities' records).
    pub idempotency_schema: String,
    /// Temporal's namespace.
    pub namespace: String,
    /// The task queue of the workflow and its activities.
    pub task_queue: String,
    /// Which parts run.
    pub parts: Parts,
    /// The countries orders ship to (ISO 3166-1 alpha-2).
    pub ship_countries: Vec<String>,
    /// Each activity attempt's start-to-close timeout.
    pub activity_timeout: Duration,
    /// How often the relay looks for unstarted workflows.
    pub relay_poll: Duration,
    /// A fault to inject.
    pub fault: Option<Fault>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            schema: "order_intake".into(),
            idempotency_schema: "order_intake_idempotency".into(),
            namespace: "default".into(),
            task_queue: "order-intake".into(),
            parts: Parts::ALL,
            ship_countries: ["US", "CA", "GB", "DE", "FR"].map(String::from).to_vec(),
            activity_timeout: Duration::from_secs(30),
            relay_poll: Duration::from_millis(500),
            fault: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The service's migrations failed.
    #[error("migrating the order tables failed: {0}{cause}", cause = cause(.0))]
    Migrate(#[from] example_support::migrate::MigrateError),
    /// The idempotency store could not be set up.
    #[error("setting up the idempotency store failed: {0}")]
    Store(#[from] idempotency_postgres::SetupError),
    /// The Temporal worker could not be built.
    #[error("{0}")]
    Worker(String),
}

/// `: <the error's source>`, or nothing: the one line names the cause.
fn cause(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) temporal: temporalio_client::Client,
    pub(crate) relay_wake: Arc<Notify>,
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// A running service: its router, its background relay, and its worker.
pub struct Service {
    state: AppState,
    router: Router,
    routes: Vec<(Method, &'static str)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    worker: Option<(temporalio_sdk::Worker, temporalio_sdk::Runtime)>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// Migrates, and starts the configured parts (the worker is built here
    /// and runs in [`run_worker`](Self::run_worker)).
    ///
    /// # Errors
    ///
    /// [`StartError`].
    pub async fn start(
        pool: PgPool,
        temporal: temporalio_client::Client,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartError> {
        db::migrate(&pool, &config.schema).await?;
        let store = PostgresStore::builder()
            .schema(config.idempotency_schema.clone())
            .build(pool.clone())?;
        store.migrate().await?;
        for name in [
            metrics_names::ORDERS_CREATED,
            metrics_names::ACTIVITY_ATTEMPTS,
        ] {
            metrics::counter!(name).increment(0);
        }
        let state = AppState {
            pool: pool.clone(),
            temporal: temporal.clone(),
            relay_wake: Arc::new(Notify::new()),
            metrics,
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if config.parts.relay {
            let faults = Arc::new(temporal::RelayFaults::default());
            match config.fault {
                Some(Fault::CrashBeforeWorkflowStart) => {
                    faults.crash_before_start.store(true, Ordering::SeqCst);
                }
                Some(Fault::CrashAfterWorkflowStart) => {
                    faults.crash_after_start.store(true, Ordering::SeqCst);
                }
                _ => {}
            }
            let relay = temporal::Relay {
                pool: pool.clone(),
                client: temporal.clone(),
                task_queue: config.task_queue.clone(),
                activity_timeout: config.activity_timeout,
                faults,
            };
            let (wake, mut stopped, poll) =
                (state.relay_wake.clone(), stopped.clone(), config.relay_poll);
            tasks.push(tokio::spawn(async move {
                loop {
                    match relay.relay_once().await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "relay failed; retrying"),
                    }
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(poll) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }));
        }
        let worker = if config.parts.worker {
            let faults = Arc::new(activities::Faults::default());
            if config.fault == Some(Fault::CrashAfterActivityCommit) {
                faults.crash_after_commit.store(true, Ordering::SeqCst);
            }
            let acts = activities::OrderActivities::new(
                pool.clone(),
                store,
                config.ship_countries.clone(),
                faults,
            );
            Some(temporal::worker(temporal, &config.task_queue, acts).map_err(StartError::Worker)?)
        } else {
            None
        };
        let routes = if config.parts.api {
            routes(state.clone())
        } else {
            operations().with_state(state.clone())
        };
        Ok(Self {
            state,
            router: routes.router,
            routes: routes.list,
            stop,
            tasks,
            worker,
        })
    }

    /// The HTTP service.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Every `(method, path)` the router serves (axum's path syntax).
    pub fn routes(&self) -> &[(Method, &'static str)] {
        &self.routes
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Runs the Temporal worker (if this process runs one) until `stop`
    /// resolves, then shuts it down gracefully. Its future is not `Send`
    /// (workflows run on a local task set): await it on the caller's task.
    ///
    /// # Errors
    ///
    /// The worker's, as one line.
    pub async fn run_worker(
        &mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let Some((worker, _runtime)) = self.worker.as_mut() else {
            stop.await;
            return Ok(());
        };
        let shutdown = worker.shutdown_handle();
        let stopper = tokio::spawn(async move {
            stop.await;
            shutdown();
        });
        let ran = worker.run().await;
        stopper.abort();
        ran.map_err(|e| format!("the Temporal worker stopped: {e}"))
    }

    /// Stops the background parts and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The service's routes; every one of them is in the OpenAPI document
/// (the operations test checks both ways).
fn routes(state: AppState) -> Routes {
    Routes::new()
        .route(Method::POST, "/orders", intake::create)
        .route(Method::GET, "/orders", read::list)
        .route(Method::GET, "/orders/{id}", read::get)
        .route(Method::GET, "/orders/{id}/events", read::events)
        .route(Method::POST, "/orders/{id}/cancel", actions::cancel)
        .route(Method::POST, "/orders/{id}/shipment", actions::shipment)
        .route(Method::GET, "/orders/{id}/workflow", actions::workflow)
        .merge(operations())
        .route(Method::GET, "/openapi.json", openapi::openapi_json)
        .route(Method::GET, "/docs", openapi::docs_page)
        .route(Method::GET, "/docs/{*file}", openapi::docs_asset)
        .map(|r| {
            r.fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "No such route",
                    "no route matches this method and path",
                )
            })
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        })
        .with_state(state)
}

/// What every process serves, API or not.
fn operations() -> Routes<AppState> {
    Routes::new()
        .route(Method::GET, "/healthz", healthz)
        .route(Method::GET, "/readyz", readyz)
        .route(Method::GET, "/metrics", render_metrics)
}

async fn checks(app: &AppState) -> (bool, bool) {
    let db = example_support::ops::database_ready(&app.pool);
    let temporal = async {
        matches!(
            tokio::time::timeout(
                example_support::ops::READY_TIMEOUT,
                temporal::ping(&app.temporal)
            )
            .await,
            Ok(Ok(()))
        )
    };
    tokio::join!(db, temporal)
}

fn up(ok: bool) -> &'static str {
    if ok { "UP" } else { "DOWN" }
}

/// `GET /healthz`: the database and Temporal, 200 or 503.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{status: UP, components: {db: UP, temporal: UP}}`", body = Object),
              (status = 503, description = "A component is `DOWN` (and so is `status`)", body = Object)))]
pub(crate) async fn healthz(State(app): State<AppState>) -> Response {
    let (db, temporal) = checks(&app).await;
    let body = json!({
        "status": up(db && temporal),
        "components": {"db": up(db), "temporal": up(temporal)},
    });
    let status = if db && temporal {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /readyz`: ready to serve when the database and Temporal answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`ready`", body = String, content_type = "text/plain"),
              (status = 503, description = "`unavailable`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    match checks(&app).await {
        (true, true) => "ready\n".into_response(),
        (db, _) => ApiError::unavailable(if db {
            "Temporal does not answer"
        } else {
            "the database does not answer"
        })
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain; version=0.0.4"),
              (status = 404, description = "Metrics are disabled", body = String, content_type = "text/plain")))]
pub(crate) async fn render_metrics(State(app): State<AppState>) -> Response {
    example_support::ops::metrics(app.metrics.as_ref())
}
