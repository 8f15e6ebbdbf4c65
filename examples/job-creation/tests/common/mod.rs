//! Shared by the job creation tests: a real PostgreSQL database
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! schemas of their own per test, the service in process or as running
//! binaries, and readers of the rows it wrote.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use example_job_creation::{Config, Service};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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

/// Drops the test's schemas.
pub async fn drop_schemas(pool: &PgPool, config: &Config) {
    for s in [&config.schema, &config.audit_schema, &config.store_schema] {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
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

/// What a test reads back from a response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The problem `type` of a problem+json answer.
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.headers[http::header::CONTENT_TYPE],
            "application/problem+json",
            "{self:?}"
        );
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// `data.processingJob.jobId`.
    pub fn job_id(&self) -> Option<Uuid> {
        self.json()["data"]["processingJob"]["jobId"]
            .as_str()
            .map(|s| s.parse().unwrap())
    }

    pub fn correlation(&self) -> String {
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
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
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

/// Polls `check` every 20 ms until it is true; panics after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- running binaries -------------------------------------------------

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running service process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `KILL`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; kills it (SIGKILL) if it has not
    /// within `within`, so a hung process fails the test instead of hanging it.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let (exited, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(within).is_err() {
                let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
            }
        });
        let status = tokio::task::block_in_place(|| self.child.wait()).expect("wait");
        let _ = exited.send(());
        let _ = watchdog.join();
        status
    }
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
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::env::temp_dir().join(format!("example-job-creation-{}.log", Uuid::new_v4()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-job-creation"));
    cmd.env("DATABASE_URL", database_url())
        .env("BIND_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env_remove("JOB_CREATION_FAULT")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env_of(config) {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start example-job-creation");
    let mut server = Server { child, addr, log };
    let client = client();
    for _ in 0..300 {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("the service exited with {status}: {}", server.log_text());
        }
        if let Ok(r) = send(&client, Method::GET, &server.url("/readyz"), None, &[]).await
            && r.status == StatusCode::OK
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.child.kill();
    panic!("the service did not become ready: {}", server.log_text());
}

pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap();
    let res = client.request(req).await?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
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

/// Sum of a Prometheus counter in a `/metrics` text (0 when absent).
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}
