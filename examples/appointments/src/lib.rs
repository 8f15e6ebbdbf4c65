//! The appointments service: appointments created from estimates and work
//! orders (one active appointment per source), rescheduled with history,
//! audit and notifications, and their events consumed **exactly once, in
//! order** by Work Execution over NATS JetStream (a transactional outbox on
//! one side, the framework's inbox on the other); see `README.md`.
//!
//! The binary (`src/main.rs`) reads its settings from the environment and
//! runs [`Service`]; tests build the same service in process.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use example_support::ops;
use idempotency_core::Inbox;
use idempotency_postgres::{PostgresInbox, PostgresStore};
use idempotency_tower::{Concurrency, IdempotencyLayer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod auth;
pub mod body;
pub mod consumer;
mod create;
pub mod db;
pub mod fixtures;
pub mod gateway;
pub mod notify;
pub mod openapi;
pub mod outbox;
pub mod problem;
mod read;
pub mod relay;
mod reschedule;
pub mod schedule;

pub use consumer::{ConsumerConfig, Pause};
pub use reschedule::{FREE_RESCHEDULES, REASONS, RESCHEDULABLE};

use problem::ApiError;

/// Metric names (the `metrics` facade; `/metrics` renders them).
pub mod metrics_names {
    /// Creation attempts by `outcome` (`created` or the problem's slug).
    pub const CREATED_TOTAL: &str = "appointments_creations_total";
    /// Hard conflicts found, by `kind` and `operation`.
    pub const CONFLICTS_TOTAL: &str = "appointments_conflicts_total";
    /// Conflicts overridden, by `operation`.
    pub const OVERRIDES_TOTAL: &str = "appointments_overrides_total";
    /// Reschedule attempts by `outcome` (`rescheduled` or the problem's slug).
    pub const RESCHEDULES_TOTAL: &str = "appointments_reschedules_total";
    /// Assignments at a reschedule, by `outcome` (`PRESERVED`, `CLEARED`).
    pub const ASSIGNMENTS_TOTAL: &str = "appointments_assignments_total";
    /// Notification sends by `channel` and `outcome` (`sent`, `retried`, `failed`).
    pub const NOTIFICATIONS_TOTAL: &str = "appointments_notifications_total";
    /// Events the relay published.
    pub const RELAYED_TOTAL: &str = "appointments_events_relayed_total";
    /// Stream creations asked again because JetStream could not set up the
    /// stream's store (see [`crate::relay::ensure_stream`]).
    pub const STREAM_CREATE_RETRIES_TOTAL: &str = "appointments_stream_create_retries_total";
    /// Messages the consumer terminated as unusable. The consumer's other
    /// outcomes are the inbox's `idempotency_inbox_messages_total{consumer,outcome}`.
    pub const CONSUMER_REJECTED_TOTAL: &str = "appointments_consumer_rejected_total";
}

/// The idempotency namespace of the service's records.
pub const NAMESPACE: &str = "appointments";

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The HTTP API.
    pub api: bool,
    /// The outbox relay.
    pub relay: bool,
    /// The Work Execution consumer.
    pub consumer: bool,
    /// The notification dispatcher.
    pub dispatcher: bool,
}

impl Parts {
    /// Everything.
    pub const ALL: Self = Self {
        api: true,
        relay: true,
        consumer: true,
        dispatcher: true,
    };

    /// Parses `api,relay,consumer,dispatcher` (any non-empty subset).
    ///
    /// # Errors
    ///
    /// A one-line message naming what is not a part.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Self {
            api: false,
            relay: false,
            consumer: false,
            dispatcher: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "api" => p.api = true,
                "relay" => p.relay = true,
                "consumer" => p.consumer = true,
                "dispatcher" => p.dispatcher = true,
                other => {
                    return Err(format!(
                        "{other:?} is not one of api, relay, consumer, dispatcher"
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The instance: JetStream stream name and subject prefix, and the
    /// outbox rows and notifications this process relays and sends.
    pub instance: String,
    /// Which parts run.
    pub parts: Parts,
    /// The gateway's base URL.
    pub gateway_url: String,
    /// The consumer's settings.
    pub consumer: ConsumerConfig,
    /// How often the relay and the dispatcher look for work.
    pub poll: Duration,
    /// Delay before a failed notification is retried.
    pub retry_delay: Duration,
    /// How long a duplicate request waits for the first one.
    pub wait: Duration,
}

impl Config {
    /// Defaults for `instance`: every part, the durable consumer
    /// `<instance>-work-execution`, the gateway on 127.0.0.1:3006.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            parts: Parts::ALL,
            gateway_url: "http://127.0.0.1:3006".into(),
            consumer: ConsumerConfig {
                durable: format!("{instance}-work-execution"),
                ack_wait: Duration::from_secs(30),
                nak_delay: Duration::from_millis(500),
                max_deliver: 100,
                pause: None,
            },
            poll: Duration::from_millis(100),
            retry_delay: Duration::from_secs(2),
            wait: Duration::from_secs(5),
        }
    }
}

/// Whether `s` is a usable instance name: 1 to 32 lowercase letters,
/// digits, `-` or `_` (a JetStream stream name and a subject token).
pub fn is_instance_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The service's migrations failed.
    #[error("migrating the appointment tables failed: {0}")]
    Migrate(#[from] db::MigrateError),
    /// The idempotency store could not be set up.
    #[error("setting up the idempotency store failed: {0}")]
    Store(#[from] idempotency_postgres::SetupError),
    /// JetStream could not be set up.
    #[error("setting up JetStream failed: {0}")]
    Nats(String),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) store: PostgresStore,
    pub(crate) instance: String,
    pub(crate) nats: async_nats::Client,
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// A running service: its router and background tasks.
pub struct Service {
    state: AppState,
    router: Router,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("instance", &self.state.instance)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Migrates, sets up the stream, and starts the configured parts.
    ///
    /// # Errors
    ///
    /// [`StartError`].
    pub async fn start(
        pool: PgPool,
        nats: async_nats::Client,
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartError> {
        db::migrate(&pool).await?;
        let store = PostgresStore::builder().build(pool.clone())?;
        store.migrate().await?;
        let js = async_nats::jetstream::new(nats.clone());
        relay::ensure_stream(&js, &config.instance)
            .await
            .map_err(StartError::Nats)?;
        let state = AppState {
            pool: pool.clone(),
            store: store.clone(),
            instance: config.instance.clone(),
            nats,
            metrics,
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if config.parts.consumer {
            // Bind before returning, so a caller may publish at once.
            consumer::durable(&js, &config.instance, &config.consumer)
                .await
                .map_err(StartError::Nats)?;
            let inbox = Inbox::new(PostgresInbox::new(&store));
            let (js, instance, cfg, stopped) = (
                js.clone(),
                config.instance.clone(),
                config.consumer.clone(),
                stopped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                if let Err(e) = consumer::run(inbox, js, instance, cfg, stopped).await {
                    tracing::error!(error = %e, "work execution consumer stopped");
                }
            }));
        }
        if config.parts.relay {
            let (pool, js, instance, mut stopped) = (
                pool.clone(),
                js.clone(),
                config.instance.clone(),
                stopped.clone(),
            );
            let poll = config.poll;
            tasks.push(tokio::spawn(async move {
                loop {
                    match relay::relay_once(&pool, &js, &instance).await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "relay failed; retrying"),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }));
        }
        if config.parts.dispatcher {
            let gateway = notify::Gateway::new(&config.gateway_url);
            let (pool, instance, mut stopped) =
                (pool.clone(), config.instance.clone(), stopped.clone());
            let (poll, retry) = (config.poll, config.retry_delay);
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = notify::dispatch_due(&pool, &instance, &gateway, retry).await {
                        tracing::warn!(error = %e, "notification dispatch failed; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }));
        }
        let router = if config.parts.api {
            router(state.clone(), store, config.wait)
        } else {
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(healthz))
                .route("/metrics", get(render_metrics))
                .with_state(state.clone())
        };
        Ok(Self {
            state,
            router,
            stop,
            tasks,
        })
    }

    /// The HTTP service.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Stops the background parts and waits for them (a message being
    /// handled finishes or rolls back first).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn router(state: AppState, store: PostgresStore, wait: Duration) -> Router {
    let keys = IdempotencyLayer::new(store)
        .namespace(NAMESPACE)
        // Keys belong to the caller: another user's same key is another request.
        .scope(|parts: &http::request::Parts| {
            parts
                .extensions
                .get::<auth::Caller>()
                .map(|c| c.user.clone())
        })
        .concurrency(Concurrency::Wait(wait));
    let writes = Router::new()
        .route("/appointments", post(create::create))
        .route(
            "/appointments/{id}/reschedule",
            post(reschedule::reschedule),
        )
        .route_layer(keys)
        .route_layer(axum::middleware::from_fn(auth::authenticate));
    Router::new()
        .route("/appointments", get(read::list))
        .route("/appointments/{id}", get(read::get))
        .route("/work-orders/{id}/planned", get(read::planned))
        .route("/shops", post(fixtures::create_shop))
        .route("/shops/{id}/bays", post(fixtures::create_bay))
        .route("/shops/{id}/mechanics", post(fixtures::create_mechanic))
        .route("/estimates", post(fixtures::create_estimate))
        .route("/estimates/{id}", get(fixtures::estimate))
        .route("/work-orders", post(fixtures::create_work_order))
        .route("/work-orders/{id}", get(fixtures::work_order))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs_page))
        .route("/docs/{*file}", get(openapi::docs_asset))
        .merge(writes)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such route",
                "no route matches this method and path",
            )
        })
        .with_state(state)
        .layer(idempotency_tower::RequestIdLayer)
}

async fn checks(app: &AppState) -> (bool, bool) {
    let db = ops::database_ready(&app.pool).await;
    // A round trip (PING/PONG), not the client's idea of its connection.
    let nats = app.nats.connection_state() == async_nats::connection::State::Connected
        && matches!(
            tokio::time::timeout(ops::READY_TIMEOUT, app.nats.flush()).await,
            Ok(Ok(()))
        );
    (db, nats)
}

/// `GET /healthz`: the database and NATS, 200 or 503.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{database, nats}`: both `ok`", body = Object), (status = 503, description = "One is `down`", body = Object)))]
pub(crate) async fn healthz(State(app): State<AppState>) -> Response {
    let (db, nats) = checks(&app).await;
    let body = json!({
        "database": if db { "ok" } else { "down" },
        "nats": if nats { "ok" } else { "down" },
    });
    let status = if db && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /readyz`: ready to serve when the database and NATS answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`ready`", body = String, content_type = "text/plain"), (status = 503, description = "`unavailable`", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    match checks(&app).await {
        (true, true) => "ready\n".into_response(),
        (db, _) => ApiError::unavailable(if db {
            "NATS is not connected"
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
    ops::metrics(app.metrics.as_ref())
}
