//! Shared by the staging tests: a real PostgreSQL database (`DATABASE_URL`),
//! schemas and a file directory of their own per test, the destination as
//! a real HTTP server, the service on a real listener, and readers of the
//! rows both wrote.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use example_staging::destination::{Destination, Faults};
use example_staging::{Config, Service};
use example_support::testing::{self, HttpClient, Reply};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool};

pub use example_support::testing::{database_url, in_ci};

/// A pool on the test database; `None` (with a printed line) when it is
/// unreachable outside CI. Under CI an unreachable database fails the test.
pub async fn pool() -> Option<PgPool> {
    let url = database_url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await;
    match pool {
        Ok(p) => {
            drop_stale_schemas(&p).await;
            Some(p)
        }
        Err(e) => {
            assert!(!in_ci(), "PostgreSQL at {url} is unreachable under CI: {e}");
            println!("skipping: PostgreSQL at {url} is unreachable");
            None
        }
    }
}

/// A name no other test uses: `<prefix>_<unix seconds>_<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        now_secs(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Test schemas older than this are left over from an interrupted run.
const STALE_AFTER_SECS: u64 = 600;

/// Drops the `stg_*` schemas of runs that ended without cleaning up.
async fn drop_stale_schemas(pool: &PgPool) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'stg\\_%'")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let cutoff = now_secs().saturating_sub(STALE_AFTER_SECS);
    for name in names {
        let secs = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok());
        if secs.is_some_and(|s| s < cutoff) {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(pool)
            .await;
        }
    }
}

/// Serves `router` on 127.0.0.1 (a free port); the server lives as long as the runtime.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// The service, the destination and what a test needs of them.
pub struct App {
    pub service: Service,
    pub base: String,
    pub destination: Destination,
    pub pool: PgPool,
    pub config: Config,
    pub http: HttpClient,
}

/// Settings for a test: fresh schemas and file directory, a short
/// destination deadline.
pub fn config(destination: SocketAddr) -> Config {
    Config {
        schema: unique("stg_t"),
        audit_schema: unique("stg_a"),
        store_schema: unique("stg_i"),
        file_dir: std::env::temp_dir().join(unique("staging-files")),
        destination_url: format!("http://{destination}"),
        destination_timeout: Duration::from_millis(500),
        lease: Duration::from_secs(5),
        ..Config::default()
    }
}

pub async fn app() -> Option<App> {
    app_with(|_| {}).await
}

pub async fn app_with(edit: impl FnOnce(&mut Config)) -> Option<App> {
    let pool = pool().await?;
    let destination = Destination::new(Duration::ZERO);
    let dest_addr = serve(destination.router()).await;
    let mut config = config(dest_addr);
    edit(&mut config);
    let service = Service::start(pool.clone(), config.clone(), None)
        .await
        .expect("the service starts");
    let addr = serve(service.router()).await;
    Some(App {
        service,
        base: format!("http://{addr}"),
        destination,
        pool,
        config,
        http: testing::client(),
    })
}

impl App {
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        testing::send(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            body.as_deref(),
            &[],
        )
        .await
        .expect("the service answers")
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// `POST /api/v1/ingestion/upload?{query}` with `file` as the multipart field `file`.
    pub async fn upload(&self, query: &str, file: &[u8], content_type: &str) -> Reply {
        upload(&self.http, &self.base, query, file, content_type).await
    }

    /// A staged export of a fresh uploaded invoice with `data`; its id.
    pub async fn staged(&self, data: Value, prepared_by: &str) -> String {
        let invoice = self.invoice(&data).await;
        let r = self
            .post(
                "/api/v1/staging/stage",
                json!({"invoice_id": invoice, "export_format": "csv", "destination_system": "quickbooks",
                       "export_data": data, "prepared_by": prepared_by}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// The invoice id of a fresh upload of `data`.
    pub async fn invoice(&self, data: &Value) -> String {
        let vendor = unique("v");
        let r = self
            .upload(
                &format!("vendor_id={vendor}&uploaded_by=clerk"),
                data.to_string().as_bytes(),
                "application/json",
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.json()["invoice_id"].as_str().unwrap().to_owned()
    }

    /// A staged export moved to `UNDER_REVIEW` and approved by `approver`.
    pub async fn approved(&self, data: Value) -> String {
        let id = self.staged(data, "preparer").await;
        let r = self
            .post(
                &format!("/api/v1/staging/{id}/review"),
                json!({"reviewer": "rita"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = self
            .put(
                &format!("/api/v1/staging/{id}/approve"),
                json!({"approved_by": "alice"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        id
    }

    /// Bookings at the destination for export `id`, read over its HTTP API.
    pub async fn bookings(&self, id: &str) -> Vec<Value> {
        let dest = self.config.destination_url.clone();
        let r = testing::send(
            &self.http,
            Method::GET,
            &format!("{dest}/postings"),
            None,
            &[],
        )
        .await
        .unwrap();
        r.json()["bookings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["export_id"] == id)
            .cloned()
            .collect()
    }

    pub fn faults(&self, f: Faults) {
        self.destination.set_faults(f);
    }

    /// Rows of `table` in the service's schema where `filter` (SQL) holds.
    pub async fn count(&self, table: &str, filter: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".{table} WHERE {filter}",
            self.config.schema
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// The audit events of export `id`, in order.
    pub async fn audit_events(&self, id: &str) -> Vec<Value> {
        sqlx::query_scalar::<_, sqlx::types::Json<Value>>(AssertSqlSafe(format!(
            "SELECT content::jsonb FROM \"{}\".events WHERE stream = $1 ORDER BY seq",
            self.config.audit_schema
        )))
        .bind(format!("staging/export/{id}"))
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.0)
        .collect()
    }

    pub async fn drop(self) {
        for s in [
            &self.config.schema,
            &self.config.audit_schema,
            &self.config.store_schema,
        ] {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
            )))
            .execute(&self.pool)
            .await
            .unwrap();
        }
        let a = &self.config.audit_schema;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS \"{a}_owner\", \"{a}_writer\", \"{a}_reader\""
        )))
        .execute(&self.pool)
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&self.config.file_dir);
        self.service.shutdown().await;
    }
}

/// A multipart upload to `base`.
pub async fn upload(
    http: &HttpClient,
    base: &str,
    query: &str,
    file: &[u8],
    content_type: &str,
) -> Reply {
    let boundary = "----staging-test-boundary-7d1f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"invoice\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/api/v1/ingestion/upload?{query}"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    Reply::read(http.request(req).await.expect("the service answers")).await
}

/// A valid invoice of `total` (one line).
pub fn invoice_data(number: &str, total: &str) -> Value {
    json!({"vendor_name": "ACME Corp", "invoice_number": number, "invoice_date": "2026-01-15",
           "currency": "USD", "total_amount": total,
           "lines": [{"description": "services", "amount": total}]})
}

/// The problem slug of a reply.
pub fn slug(r: &Reply) -> String {
    r.problem_slug()
}
