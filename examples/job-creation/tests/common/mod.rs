//! Shared by the job creation tests: a real PostgreSQL database
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! schemas of their own per test, the service in process or as running
//! binaries, and readers of the rows it wrote.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use example_job_creation::{Config, Service};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool, Row};
use tower::ServiceExt;
use uuid::Uuid;

pub use idempotency_core::conformance::support::{database_url, in_ci};

/// Test schemas are `jobs_t_<unix seconds>_<random>`; ones older than this
/// are left over from an interrupted run and are dropped.
const STALE_AFTER_SECS: u64 = 600;

/// A pool on the test database; `None` (with a printed skip line) when it is
/// unreachable outside CI. Under CI an unreachable database fails the test.
pub async fn pool(connections: u32) -> Option<PgPool> {
    let url = database_url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await;
    match pool {
        Ok(p) if sqlx::query("SELECT 1").execute(&p).await.is_ok() => {
            drop_stale_schemas(&p).await;
            Some(p)
        }
        _ => {
            assert!(!in_ci(), "PostgreSQL at {url} is unreachable under CI");
            println!("skipping: PostgreSQL at {url} is unreachable");
            None
        }
    }
}

async fn drop_stale_schemas(pool: &PgPool) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'jobs\\_t\\_%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for name in names {
        let secs = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if now.saturating_sub(secs) > STALE_AFTER_SECS {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(pool)
            .await;
        }
    }
}

/// Fresh schema names: the service's, its audit trail's and its store's.
pub fn fresh_schemas() -> (String, String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rand = Uuid::new_v4().simple().to_string();
    let schema = format!("jobs_t_{secs}_{}", &rand[..10]);
    let audit = format!("{schema}_audit");
    let store = format!("{schema}_idem");
    (schema, audit, store)
}

/// Drops the test's schemas (and the audit trail's roles).
pub async fn drop_schemas(pool: &PgPool, config: &Config) {
    for s in [&config.schema, &config.audit_schema, &config.store_schema] {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    let a = &config.audit_schema;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP ROLE IF EXISTS \"{a}_owner\", \"{a}_writer\", \"{a}_reader\""
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// Settings for a test: fresh schemas, fast leases and retries, no worker.
pub fn config() -> Config {
    let (schema, audit_schema, store_schema) = fresh_schemas();
    Config {
        schema,
        audit_schema,
        store_schema,
        worker: false,
        lease: Duration::from_millis(1000),
        stage_time: Duration::from_millis(20),
        poll: Duration::from_millis(50),
        retry_delay: Duration::from_millis(20),
        ..Config::default()
    }
}

#[allow(unused_imports)]
pub use example_support::testing::{
    HttpClient, Reply, Server, client, counter, eventually, free_port, send,
};

/// What the job creation tests read from a reply beyond [`Reply`]'s own.
pub trait JobReply {
    /// `data.processingJob.jobId`.
    fn job_id(&self) -> Option<Uuid>;
    /// The `x-correlation-id` header.
    fn correlation(&self) -> String;
}

impl JobReply for Reply {
    fn job_id(&self) -> Option<Uuid> {
        self.json()["data"]["processingJob"]["jobId"]
            .as_str()
            .map(|s| s.parse().unwrap())
    }

    fn correlation(&self) -> String {
        self.headers["x-correlation-id"]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// The problem type URI of `slug`.
pub fn problem(slug: &str) -> String {
    format!("{}{slug}", example_job_creation::problem::PROBLEM_BASE)
}

/// The service in process, on the test database.
pub struct App {
    pub service: Service,
    pub router: Router,
    pub pool: PgPool,
    pub config: Config,
}

pub async fn app(config: Config) -> Option<App> {
    let pool = pool(12).await?;
    Some(app_on(pool, config).await)
}

pub async fn app_on(pool: PgPool, config: Config) -> App {
    let service = Service::start(pool.clone(), config.clone(), None)
        .await
        .expect("the service starts");
    App {
        router: service.router(),
        service,
        pool,
        config,
    }
}

impl App {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        Reply::read(res).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, &[]).await
    }

    /// A new assessment of `funnel`, in progress.
    pub async fn assessment(&self, funnel: &str) -> Uuid {
        let r = self
            .call(
                Method::POST,
                &format!("/api/funnels/{funnel}/assessments"),
                Some(r#"{"patientId":"P-1"}"#),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r.json()["data"]["assessmentId"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub async fn complete(&self, funnel: &str, id: Uuid, headers: &[(&str, &str)]) -> Reply {
        self.call(
            Method::POST,
            &format!("/api/funnels/{funnel}/assessments/{id}/complete"),
            None,
            headers,
        )
        .await
    }

    pub async fn jobs(&self, assessment: Uuid) -> Vec<JobRow> {
        jobs(&self.pool, &self.config.schema, assessment).await
    }

    /// The audit events of `assessment`'s jobs, after flushing the buffer.
    pub async fn audit(&self, assessment: Uuid) -> Vec<Value> {
        self.service.flush_audit().await.unwrap();
        audit_events(&self.pool, &self.config.audit_schema, assessment).await
    }

    pub async fn drop(self) {
        self.service.shutdown().await;
        drop_schemas(&self.pool, &self.config).await;
    }
}

/// A job row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: Uuid,
    pub correlation_id: String,
    pub schema_version: String,
    pub status: String,
    pub stage: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
}

pub async fn jobs(pool: &PgPool, schema: &str, assessment: Uuid) -> Vec<JobRow> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT id, correlation_id, schema_version, status, stage, attempt, max_attempts, last_error \
         FROM \"{schema}\".processing_jobs WHERE assessment_id = $1 ORDER BY created_at"
    )))
    .bind(assessment)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| JobRow {
        id: r.get("id"),
        correlation_id: r.get("correlation_id"),
        schema_version: r.get("schema_version"),
        status: r.get("status"),
        stage: r.get("stage"),
        attempt: r.get("attempt"),
        max_attempts: r.get("max_attempts"),
        last_error: r.get("last_error"),
    })
    .collect()
}

pub async fn job(pool: &PgPool, schema: &str, id: Uuid) -> JobRow {
    let r = sqlx::query(AssertSqlSafe(format!(
        "SELECT assessment_id FROM \"{schema}\".processing_jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    jobs(pool, schema, r.get("assessment_id"))
        .await
        .into_iter()
        .find(|j| j.id == id)
        .unwrap()
}

/// `(stage, count)` of the stage outputs of `job`, in stage order.
pub async fn stage_outputs(pool: &PgPool, schema: &str, job: Uuid) -> Vec<(String, i64)> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT stage, count(*) AS n FROM \"{schema}\".stage_outputs WHERE job_id = $1 \
         GROUP BY stage ORDER BY min(id)"
    )))
    .bind(job)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("stage"), r.get("n")))
    .collect()
}

/// The audit events of `assessment`'s jobs, as stored.
pub async fn audit_events(pool: &PgPool, audit_schema: &str, assessment: Uuid) -> Vec<Value> {
    sqlx::query_scalar::<_, sqlx::types::Json<Value>>(AssertSqlSafe(format!(
        "SELECT content::jsonb FROM \"{audit_schema}\".events WHERE stream = $1 ORDER BY seq"
    )))
    .bind(format!("job-creation/{assessment}"))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|j| j.0)
    .collect()
}

/// The environment of a binary running with `config`'s settings.
pub fn env_of(config: &Config) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    vec![
        ("JOB_CREATION_SCHEMA", config.schema.clone()),
        ("JOB_CREATION_AUDIT_SCHEMA", config.audit_schema.clone()),
        ("JOB_CREATION_STORE_SCHEMA", config.store_schema.clone()),
        (
            "JOB_CREATION_WORKER",
            if config.worker { "on" } else { "off" }.into(),
        ),
        ("JOB_CREATION_LEASE_MS", ms(config.lease)),
        ("JOB_CREATION_STAGE_MS", ms(config.stage_time)),
        ("JOB_CREATION_POLL_MS", ms(config.poll)),
        ("JOB_CREATION_RETRY_MS", ms(config.retry_delay)),
    ]
}

/// Starts the binary with `config`'s settings and `extra` on a free port,
/// and waits for `/readyz`.
pub async fn spawn(config: &Config, extra: &[(&str, &str)]) -> Server {
    let mut cmd = example_support::testing::command(env!("CARGO_BIN_EXE_example-job-creation"));
    cmd.env("DATABASE_URL", database_url())
        .env_remove("JOB_CREATION_FAULT");
    for (k, v) in env_of(config) {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Server::spawn(cmd, "/readyz").await
}

/// A new assessment of `funnel`, through a running server.
pub async fn assessment_on(client: &HttpClient, server: &Server, funnel: &str) -> Uuid {
    let r = send(
        client,
        Method::POST,
        &server.url(&format!("/api/funnels/{funnel}/assessments")),
        Some(&json!({"patientId": "P-7"}).to_string()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.json()["data"]["assessmentId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
