//! Shared by the promotion tests: a real PostgreSQL database (`DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`), the service in process
//! or as running binaries, and readers of the rows it wrote.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use example_promotion::{Config, Service};
use http::{Method, Request, StatusCode};
use idempotency_core::{IdempotencyStore, Record};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tower::ServiceExt;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub use example_support::testing::{database_url, in_ci};

/// A pool on the test database; `None` (with a printed skip line) when it is
/// unreachable outside CI. Under CI an unreachable database fails the test.
pub async fn pool() -> Option<PgPool> {
    let url = database_url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await;
    match pool {
        Ok(p) if sqlx::query("SELECT 1").execute(&p).await.is_ok() => Some(p),
        _ => {
            assert!(!in_ci(), "PostgreSQL at {url} is unreachable under CI");
            println!("skipping: PostgreSQL at {url} is unreachable");
            None
        }
    }
}

#[allow(unused_imports)]
pub use example_support::testing::{HttpClient, Reply, Server, client, counter, free_port};

/// What the promotion tests read from a reply beyond [`Reply`]'s own.
pub trait PromotionReply {
    /// `workorder_id` of the JSON body.
    fn workorder_id(&self) -> String;
}

impl PromotionReply for Reply {
    fn workorder_id(&self) -> String {
        self.json()["workorder_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no workorder_id: {self:?}"))
            .to_owned()
    }
}

/// The service in process, on the test database.
pub struct App {
    pub service: Service,
    pub router: Router,
    pub pool: PgPool,
}

pub async fn app(config: Config) -> Option<App> {
    let pool = pool().await?;
    let service = Service::start(pool.clone(), config, None)
        .await
        .expect("the service starts");
    Some(App {
        router: service.router(),
        service,
        pool,
    })
}

pub fn config() -> Config {
    Config {
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..Config::default()
    }
}

pub fn lines() -> Value {
    json!([
        {"description": "brake pads", "quantity": 2, "unit_price_cents": 4500},
        {"description": "labour", "quantity": 1, "unit_price_cents": 12000}
    ])
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

    pub async fn post(&self, uri: &str, body: Option<&str>) -> Reply {
        self.call(Method::POST, uri, body, &[]).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, &[]).await
    }

    /// A new estimate (snapshot 1, DRAFT).
    pub async fn estimate(&self) -> String {
        let body = json!({"customer_id": "C-42", "lines": lines()}).to_string();
        let r = self.post("/estimates", Some(&body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        r.json()["estimate_id"].as_str().unwrap().to_owned()
    }

    /// A new estimate whose snapshot 1 is FINALIZED.
    pub async fn finalized_estimate(&self) -> String {
        let id = self.estimate().await;
        let r = self.post(&format!("/estimates/{id}/finalize"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        id
    }

    pub async fn promote(&self, estimate_id: &str, version: u32) -> Reply {
        self.post(
            &format!("/estimates/{estimate_id}/snapshots/{version}/promote"),
            None,
        )
        .await
    }

    pub async fn resolve(&self, estimate_id: &str, version: u32, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.call(
            Method::POST,
            &format!("/admin/promotions/{estimate_id}/{version}/resolve"),
            Some(r#"{"reason":"work order deleted by mistake"}"#),
            &headers,
        )
        .await
    }

    pub async fn record(&self, estimate_id: &str, version: u32) -> Option<Record> {
        record(&self.service, estimate_id, version).await
    }

    /// Audit events of the snapshot's promotion, after flushing the buffer.
    pub async fn audit(&self, estimate_id: &str, version: u32) -> Vec<Value> {
        self.service.flush_audit().await.unwrap();
        audit_events(&self.pool, estimate_id, version).await
    }
}

pub async fn record(service: &Service, estimate_id: &str, version: u32) -> Option<Record> {
    service
        .store()
        .get(&service.promotion_key(estimate_id, &version.to_string()))
        .await
        .unwrap()
}

/// Work order ids of the snapshot.
pub async fn work_orders(pool: &PgPool, estimate_id: &str, version: u32) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT id FROM promotion.work_orders WHERE estimate_id = $1 AND snapshot_version = $2",
    )
    .bind(estimate_id)
    .bind(i32::try_from(version).unwrap())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Promotion rows of the snapshot: (promotion_id, workorder_id).
pub async fn promotions(
    pool: &PgPool,
    estimate_id: &str,
    version: u32,
) -> Vec<(uuid::Uuid, Option<String>)> {
    sqlx::query(
        "SELECT id, workorder_id FROM promotion.promotions WHERE estimate_id = $1 AND snapshot_version = $2",
    )
    .bind(estimate_id)
    .bind(i32::try_from(version).unwrap())
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("id"), r.get("workorder_id")))
    .collect()
}

/// The audit events of the snapshot's promotion, as stored, in the order
/// they happened (`time`): a fire-and-forget event is chained when its buffer
/// writes it, which may be after a later attempt's atomic event.
pub async fn audit_events(pool: &PgPool, estimate_id: &str, version: u32) -> Vec<Value> {
    sqlx::query_scalar::<_, sqlx::types::Json<Value>>(
        "SELECT content::jsonb FROM audit.events WHERE stream = $1 ORDER BY content::jsonb->>'time', seq",
    )
    .bind(format!("promotion/{estimate_id}/{version}"))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|j| j.0)
    .collect()
}

/// `(type, attributes.outcome, attributes.isFirstAttempt, attributes.workorderId)` of each event.
pub fn summary(events: &[Value]) -> Vec<(String, String, bool, Option<String>)> {
    events
        .iter()
        .map(|e| {
            let a = &e["attributes"];
            (
                e["type"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap_or_default().to_owned(),
                a["isFirstAttempt"].as_bool().unwrap_or_default(),
                a["workorderId"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

// ---- running binaries -------------------------------------------------

/// Starts the binary with `env` on a free port and waits for `/readyz`.
pub async fn spawn(env: &[(&str, &str)]) -> Server {
    let mut cmd = example_support::testing::command(env!("CARGO_BIN_EXE_example-promotion"));
    cmd.env("DATABASE_URL", database_url())
        .env("PROMOTION_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("PROMOTION_FAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn(cmd, "/readyz").await
}

/// `method url` with an optional JSON body.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<&str>,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    example_support::testing::send(client, method, url, body, &[]).await
}

/// A finalized estimate, created through a running server.
pub async fn finalized_estimate_on(client: &HttpClient, server: &Server) -> String {
    let body = json!({"customer_id": "C-7", "lines": lines()}).to_string();
    let r = send(client, Method::POST, &server.url("/estimates"), Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json()["estimate_id"].as_str().unwrap().to_owned();
    let r = send(
        client,
        Method::POST,
        &server.url(&format!("/estimates/{id}/finalize")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    id
}
