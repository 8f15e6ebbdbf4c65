//! The example services as real processes: the quickstart on PostgreSQL or
//! Redis, the promotion service on PostgreSQL, and what the cases ask them.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use example_support::testing::{self, HttpClient, Reply, Server};
use http::{Method, StatusCode};
use idempotency_postgres::sqlx;

use super::env::{Journal, binaries};

/// The lease of every case but the store restarts: short, so a crashed
/// attempt is taken over within a second.
pub const LEASE: Duration = Duration::from_secs(1);

/// The store a quickstart process uses.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(String),
    Redis(String),
}

impl Store {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
        }
    }
}

/// A quickstart process on `store`, journaling its orders to `journal`,
/// with `extra` settings (a crash or stop point).
pub async fn quickstart(
    store: &Store,
    journal: &Journal,
    lease: Duration,
    extra: &[(&str, &str)],
) -> Server {
    let mut cmd = testing::command(&binaries().quickstart);
    cmd.env_remove("IDEMPOTENCY_WAIT_SECS")
        .env_remove("EXAMPLE_CRASH_AT")
        .env_remove("EXAMPLE_STOP_AT")
        .env("IDEMPOTENCY_LEASE_SECS", lease.as_secs().to_string())
        .env("EXAMPLE_EFFECT_LOG", &journal.path);
    match store {
        Store::Postgres(url) => {
            cmd.env("IDEMPOTENCY_STORE", "postgres")
                .env("DATABASE_URL", url);
        }
        Store::Redis(url) => {
            cmd.env("IDEMPOTENCY_STORE", "redis")
                .env("REDIS_URL", url)
                .env_remove("DATABASE_URL");
        }
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Server::spawn(cmd, "/healthz").await
}

/// A promotion process on the PostgreSQL database `url`; duplicates wait
/// 1 ms before their 409.
pub async fn promotion(url: &str, lease: Duration, extra: &[(&str, &str)]) -> Server {
    let mut cmd = testing::command(&binaries().promotion);
    cmd.env_remove("EXAMPLE_CRASH_AT")
        .env_remove("EXAMPLE_STOP_AT")
        .env_remove("PROMOTION_FAULT")
        .env("DATABASE_URL", url)
        .env("PROMOTION_LEASE_MS", lease.as_millis().to_string())
        .env("PROMOTION_WAIT_MS", "1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Server::spawn(cmd, "/readyz").await
}

/// A user of its own per case: keys of other cases and runs live in other scopes.
pub fn user() -> String {
    format!("faults-{}", uuid::Uuid::new_v4().simple())
}

/// An order body whose SKU names the key's effects in the journal.
pub fn order_body(sku: &str) -> String {
    format!(r#"{{"sku":"{sku}","quantity":1}}"#)
}

/// `POST /orders` as `user` with `key`.
pub async fn order(
    http: &HttpClient,
    server: &Server,
    user: &str,
    key: &str,
    sku: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    order_at(http, &server.url("/orders"), user, key, sku).await
}

/// `POST url` as an order of `user` with `key`.
pub async fn order_at(
    http: &HttpClient,
    url: &str,
    user: &str,
    key: &str,
    sku: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let auth = format!("Bearer {user}");
    testing::send(
        http,
        Method::POST,
        url,
        Some(&order_body(sku)),
        &[("authorization", &auth), ("idempotency-key", key)],
    )
    .await
}

/// A new estimate whose snapshot 1 is finalized, created on `server`.
pub async fn finalized_estimate(http: &HttpClient, server: &Server) -> String {
    let body = serde_json::json!({
        "customer_id": "C-faults",
        "lines": [{"description": "brake pads", "quantity": 2, "unit_price_cents": 4500}],
    })
    .to_string();
    let r = testing::send(
        http,
        Method::POST,
        &server.url("/estimates"),
        Some(&body),
        &[],
    )
    .await
    .expect("create an estimate");
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json()["estimate_id"].as_str().unwrap().to_owned();
    let r = testing::send(
        http,
        Method::POST,
        &server.url(&format!("/estimates/{id}/finalize")),
        None,
        &[],
    )
    .await
    .expect("finalize");
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    id
}

pub fn promote_path(estimate_id: &str) -> String {
    format!("/estimates/{estimate_id}/snapshots/1/promote")
}

/// `POST .../snapshots/1/promote` at `base` (`http://addr`).
pub async fn promote_at(
    http: &HttpClient,
    base: &str,
    estimate_id: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let url = format!("{base}{}", promote_path(estimate_id));
    testing::send(http, Method::POST, &url, None, &[]).await
}

pub fn base(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// Work orders of the estimate's snapshot 1: the promotion's system of record.
pub async fn work_orders(pool: &sqlx::PgPool, estimate_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM promotion.work_orders WHERE estimate_id = $1 AND snapshot_version = 1",
    )
    .bind(estimate_id)
    .fetch_one(pool)
    .await
    .expect("count work orders")
}

/// The process state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits (at most 10 s) until the process has stopped itself (SIGSTOP).
pub async fn wait_stopped(server: &Server) {
    let pid = server.child.id();
    testing::eventually(
        Duration::from_secs(10),
        "the process to stop",
        || async move { process_state(pid) == Some('T') },
    )
    .await;
}

/// Waits for the process to have died by SIGKILL (it killed itself).
///
/// # Panics
///
/// It exited otherwise, or is still running after 10 s.
pub fn wait_killed(server: &mut Server) {
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.signal(),
        Some(9),
        "died by SIGKILL ({status:?}): {}",
        server.log_text()
    );
}

/// Sends `request` every 20 ms while it answers 409 (a live lease): the
/// first other answer and how long after `since` it came. Bounded by `within`.
pub async fn until_not_in_flight<F, Fut>(
    since: Instant,
    within: Duration,
    mut request: F,
) -> (Reply, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Reply, hyper_util::client::legacy::Error>>,
{
    loop {
        let r = request().await.expect("the surviving process answers");
        if r.status != StatusCode::CONFLICT {
            return (r, since.elapsed());
        }
        assert!(
            since.elapsed() < within,
            "still in flight after {within:?}: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends SIGCONT to a stopped process.
pub fn resume(server: &Server) {
    server.signal("CONT");
}
