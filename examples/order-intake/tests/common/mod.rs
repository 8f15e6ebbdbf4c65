//! Shared by the order-intake tests: a real PostgreSQL (`DATABASE_URL`) and
//! a real Temporal dev server (`TEMPORAL_ADDRESS`, started by
//! `scripts/services.sh`), the service as running binaries. Every test has
//! its own schemas and its own task queue, so tests never see each other's
//! orders, records or workflow tasks.

#![allow(dead_code, unreachable_pub)]

use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use example_support::testing::Reply;
use example_support::testing::{self, HttpClient, Server};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub fn temporal_address() -> String {
    std::env::var("TEMPORAL_ADDRESS").unwrap_or_else(|_| "127.0.0.1:7233".into())
}

/// One test's world: its schemas, task queue, database pool (on its
/// schema) and Temporal client.
pub struct World {
    pub schema: String,
    pub idempotency_schema: String,
    pub task_queue: String,
    pub pool: PgPool,
    pub temporal: temporalio_client::Client,
}

/// The services, or `None` (after a printed line) outside CI when one is
/// unreachable. Under CI a missing service fails the test.
pub async fn world() -> Option<World> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let schema = format!("oi_t_{tag}");
    let url = testing::database_url();
    let options: PgConnectOptions = url.parse().expect("DATABASE_URL parses");
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await;
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            assert!(
                !testing::in_ci(),
                "PostgreSQL at {url} is unreachable under CI: {e}"
            );
            println!("skipping: PostgreSQL at {url} is unreachable");
            return None;
        }
    };
    let address = temporal_address();
    let temporal = match example_order_intake::temporal::connect(&address, "default").await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !testing::in_ci(),
                "Temporal at {address} is unreachable under CI (scripts/services.sh temporal): {e}"
            );
            println!("skipping: Temporal at {address} is unreachable");
            return None;
        }
    };
    Some(World {
        idempotency_schema: format!("oi_i_{tag}"),
        task_queue: format!("order-intake-t-{tag}"),
        schema,
        pool,
        temporal,
    })
}

impl World {
    /// The service binary on this world, with `extra` settings.
    pub async fn start(&self, extra: &[(&str, &str)]) -> Process {
        let mut env = vec![
            ("OMS_SCHEMA", self.schema.as_str()),
            ("OMS_IDEMPOTENCY_SCHEMA", self.idempotency_schema.as_str()),
            ("OMS_TASK_QUEUE", self.task_queue.as_str()),
            ("OMS_ACTIVITY_TIMEOUT_MS", "3000"),
            ("OMS_RELAY_POLL_MS", "50"),
        ];
        env.extend_from_slice(extra);
        Process::start(&env).await
    }

    /// How many executions Temporal's visibility API lists for workflow
    /// `workflow_id` (any status).
    pub async fn executions(&self, workflow_id: &str) -> usize {
        let count = self
            .temporal
            .count_workflows(
                format!("WorkflowId = '{workflow_id}'"),
                temporalio_client::WorkflowCountOptions::default(),
            )
            .await
            .expect("count_workflows");
        count.count()
    }

    /// Waits until Temporal's visibility lists workflow `workflow_id`,
    /// then returns how many executions it lists.
    pub async fn executions_once_visible(&self, workflow_id: &str) -> usize {
        eventually(
            Duration::from_secs(30),
            "the workflow in visibility",
            || async {
                let n = self.executions(workflow_id).await;
                (n > 0).then_some(n)
            },
        )
        .await
    }

    /// `(type)` of every event of `order`, in order.
    pub async fn event_types(&self, order: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT type FROM order_events WHERE order_id = $1::uuid ORDER BY id")
            .bind(order)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// The stored status of `order`.
    pub async fn status(&self, order: &str) -> String {
        sqlx::query_scalar("SELECT status::text FROM orders WHERE id = $1::uuid")
            .bind(order)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// How many attempts of `activity` the workers logged for `order`.
    pub async fn attempts(&self, order: &str, activity: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM activity_attempts WHERE order_id = $1::uuid AND activity_type = $2",
        )
        .bind(order)
        .bind(activity)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Drops the test's schemas.
    pub async fn drop_schemas(&self) {
        for s in [&self.schema, &self.idempotency_schema] {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
            )))
            .execute(&self.pool)
            .await;
        }
    }
}

/// An order body shipping to `country`.
pub fn order(external: Option<&str>, country: &str) -> Value {
    let mut body = json!({
        "channel": "SHOPIFY",
        "priority": "HIGH",
        "shipTo": {"name": "Ada Lovelace", "line1": "12 St James's Sq", "city": "London",
                   "postalCode": "SW1Y 4JH", "country": country},
        "lines": [{"sku": "BOOK-1", "quantity": 2, "unitPrice": "19.99"},
                  {"sku": "PEN-7", "quantity": 1, "unitPrice": "3.5"}]
    });
    if let Some(e) = external {
        body["externalOrderId"] = json!(e);
    }
    body
}

/// An HTTP client of a base URL.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: HttpClient,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: testing::client(),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        tokio::time::timeout(
            Duration::from_secs(30),
            testing::send(&self.client, method, &url, body.as_deref(), headers),
        )
        .await
        .expect("the service answers in 30 s")
        .expect("request")
    }

    pub async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.raw(Method::POST, path, Some(body.to_string()), headers)
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, None, &[]).await
    }
}

/// Posts an order to a process that may die while answering (an injected
/// crash); returns the order's id from the database either way.
pub async fn post_then_find(world: &World, http: &Http, external: &str, body: Value) -> String {
    let url = format!("{}/orders", http.base);
    let body = body.to_string();
    let sent = testing::send(&http.client, Method::POST, &url, Some(&body), &[]);
    if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(30), sent).await {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM orders WHERE external_order_id = $1")
        .bind(external)
        .fetch_one(&world.pool)
        .await
        .expect("the order committed");
    id.to_string()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET /orders/{id}/workflow` reports `step`; returns the view.
pub async fn wait_for_step(http: &Http, order: &str, step: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("step {step}"), || async {
        let r = http.get(&format!("/orders/{order}/workflow")).await;
        (r.status == StatusCode::OK && r.json()["step"] == step).then(|| r.json())
    })
    .await
}

/// Waits until `GET /orders/{id}/workflow` reports `step` and Temporal's
/// execution `status` (the step is set just before the run returns).
pub async fn wait_for_end(http: &Http, order: &str, step: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("{step} and {status}"),
        || async {
            let r = http.get(&format!("/orders/{order}/workflow")).await;
            (r.status == StatusCode::OK && r.json()["step"] == step && r.json()["status"] == status)
                .then(|| r.json())
        },
    )
    .await
}

/// Waits until the stored status of `order` is `status`.
pub async fn wait_for_status(world: &World, order: &str, status: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("status {status}"),
        || async { (world.status(order).await == status).then_some(()) },
    )
    .await;
}

/// A running service binary (killed on drop), ready when `/readyz` is.
pub struct Process {
    pub server: Server,
    pub http: Http,
}

impl Process {
    /// Starts the binary with `env` (plus DATABASE_URL, TEMPORAL_ADDRESS)
    /// on a free port and waits until it is ready.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-order-intake"));
        cmd.env("DATABASE_URL", testing::database_url())
            .env("TEMPORAL_ADDRESS", temporal_address())
            .env("RUST_LOG", "info")
            .env_remove("OMS_FAULT")
            .env_remove("OMS_PROFILE")
            .env_remove("OMS_RUN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let server = Server::spawn(cmd, "/readyz").await;
        let http = Http::new(&server.url(""));
        Self { server, http }
    }

    /// Waits for the process to exit by itself (an injected crash).
    pub fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        self.server.wait_exit(limit)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.server.log_text()
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.server.terminate();
        self.server.wait_exit(Duration::from_secs(30))
    }
}
