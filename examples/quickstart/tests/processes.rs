//! The quickstart binary as a running process: a graceful shutdown on
//! SIGTERM that finishes in-flight requests and writes every audit event,
//! and start-up refusals of nonsense settings.
#![cfg(unix)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode};
use example_support::testing::{
    self, HttpClient, Server, client, database_url, free_port, in_ci, send,
};
use idempotency_audit::postgres::sqlx::{self, PgPool};

/// A pool on the test database; `None` (with a printed line) when it is
/// unreachable outside CI.
async fn pool() -> Option<PgPool> {
    let url = database_url();
    match PgPool::connect(&url).await {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(!in_ci(), "PostgreSQL at {url} is unreachable under CI: {e}");
            println!("skipping: PostgreSQL at {url} is unreachable");
            None
        }
    }
}

/// A name no other run uses (no `%` or `_`: it is a LIKE prefix).
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("qs-{}-{nanos}", std::process::id())
}

/// Starts the binary with `env` on a free port and waits for `/healthz`.
async fn spawn(env: &[(&str, &str)]) -> Server {
    let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-quickstart"));
    cmd.env("RUST_LOG", "info").env_remove("IDEMPOTENCY_STORE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn(cmd, "/healthz").await
}

/// `POST /orders` as `user` with `key`, request id `rid` and `body`.
async fn order(
    http: HttpClient,
    url: String,
    user: String,
    key: String,
    rid: String,
    body: &str,
) -> Result<StatusCode, hyper_util::client::legacy::Error> {
    let auth = format!("Bearer {user}");
    let headers = [
        ("authorization", auth.as_str()),
        ("idempotency-key", key.as_str()),
        ("x-request-id", rid.as_str()),
    ];
    send(&http, Method::POST, &url, Some(body), &headers)
        .await
        .map(|r| r.status)
}

/// Audit rows whose correlation id (the request's `x-request-id`) starts with `run`.
async fn audit_rows(pool: &PgPool, run: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE correlation_id LIKE $1")
        .bind(format!("{run}-%"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// 400 audited requests, 20 of them still running in their handler when
/// SIGTERM arrives: the process stops accepting, finishes the 20, writes
/// every audit event to PostgreSQL and exits 0: exactly 400 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_requests_and_writes_every_audit_event() {
    let Some(pool) = pool().await else {
        return;
    };
    let url = database_url();
    let mut server = spawn(&[("DATABASE_URL", &url)]).await;
    let http = client();
    let run = run_id();
    let orders = server.url("/orders");

    // 360 quick orders, at most 32 at a time.
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let quick: Vec<_> = (0..360)
        .map(|i| {
            let (http, limit, run, orders) =
                (http.clone(), limit.clone(), run.clone(), orders.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let (key, rid) = (format!("{run}-k{i}"), format!("{run}-{i}"));
                order(http, orders, run, key, rid, r#"{"sku":"pen","quantity":1}"#).await
            })
        })
        .collect();
    for t in quick {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::CREATED);
    }

    // 20 slow orders, each sent twice with one key: one of the two answers
    // 409 at once, which proves the other is running in its handler.
    let slow = r#"{"sku":"lamp","quantity":1,"simulate":{"delay_ms":1500}}"#;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for pair in 0..20 {
        for copy in 0..2 {
            let (http, run, orders, tx) =
                (http.clone(), run.clone(), orders.clone(), done_tx.clone());
            tokio::spawn(async move {
                let (key, rid) = (format!("{run}-slow{pair}"), format!("{run}-s{pair}-{copy}"));
                let _ = tx.send(order(http, orders, run, key, rid, slow).await);
            });
        }
    }
    drop(done_tx);
    for _ in 0..20 {
        let status = done_rx.recv().await.unwrap().expect("answered");
        assert_eq!(status, StatusCode::CONFLICT, "the duplicate answers first");
    }
    server.terminate();
    let mut finished = Vec::new();
    while let Some(status) = done_rx.recv().await {
        finished.push(status.expect("an in-flight request is finished, not cut"));
    }
    assert_eq!(finished, vec![StatusCode::CREATED; 20]);
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert_eq!(
        audit_rows(&pool, &run).await,
        400,
        "one audit row per request: {}",
        server.log_text()
    );
}

/// Runs the binary with `env` until it exits (killed after 10 s).
fn run_to_exit(env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = testing::command(env!("CARGO_BIN_EXE_example-quickstart"));
    cmd.env_remove("IDEMPOTENCY_STORE")
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    testing::run_to_exit(cmd, Duration::from_secs(10))
}

/// A nonsense setting is refused at start with one stderr line naming the
/// variable and exit status 2, before binding (the port is taken) or
/// connecting (the database is closed): either would fail otherwise.
#[test]
fn nonsense_settings_exit_2_with_one_line_before_binding_or_connecting() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let closed = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    for (name, value) in [
        ("IDEMPOTENCY_LEASE_SECS", "0"),
        ("IDEMPOTENCY_WAIT_SECS", "18446744073709551615"),
        ("IDEMPOTENCY_LEASE_SECS", "abc"),
        ("IDEMPOTENCY_RETENTION_SECS", "0"),
        ("IDEMPOTENCY_STORE", "mongo"),
    ] {
        let out = run_to_exit(&[
            (name, value.to_owned()),
            ("BIND_ADDR", bind.clone()),
            ("DATABASE_URL", closed.clone()),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}={value}: {err}");
        assert!(err.contains(name), "{name}={value}: {err}");
    }
    let out = run_to_exit(&[("IDEMPOTENCY_LEASE_SECS", "0".to_owned())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from 1 to 3600"), "the accepted range: {err}");
    drop(taken);
}
