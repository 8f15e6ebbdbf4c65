//! The quickstart binary as a running process: a graceful shutdown on
//! SIGTERM that finishes in-flight requests and writes every audit event,
//! and start-up refusals of nonsense settings.
#![cfg(unix)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idempotency_audit::postgres::sqlx::{self, PgPool};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A name no other run uses (no `%` or `_`: it is a LIKE prefix).
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("qs-{}-{nanos}", std::process::id())
}

/// A running quickstart, killed on drop unless it has exited.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM with the `kill` command.
    fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (at most 30 s) for the process to exit.
    async fn exit_status(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let status = child.wait();
                (child, status)
            }),
        )
        .await;
        match waited {
            Ok(Ok((_, status))) => status.expect("wait"),
            _ => panic!("the process did not exit: {}", self.log_text()),
        }
    }
}

/// Starts the binary with `env` on a free port and waits for `/healthz`.
async fn spawn(env: &[(&str, &str)]) -> Server {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::env::temp_dir().join(format!("example-quickstart-{}.log", run_id()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-quickstart"));
    cmd.env("BIND_ADDR", addr.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("IDEMPOTENCY_STORE")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = Server {
        child: Some(cmd.spawn().expect("start example-quickstart")),
        addr,
        log,
    };
    let http = client();
    for _ in 0..300 {
        if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the service exited with {status}: {}", server.log_text());
        }
        if let Ok((StatusCode::OK, _)) =
            send(&http, Method::GET, &server.url("/healthz"), &[], "").await
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service did not start: {}", server.log_text());
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    http: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Result<(StatusCode, Bytes), hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = http.request(req).await?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, body))
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
    let headers = [
        ("authorization", format!("Bearer {user}")),
        ("idempotency-key", key),
        ("x-request-id", rid),
        ("content-type", "application/json".to_owned()),
    ];
    send(&http, Method::POST, &url, &headers, body)
        .await
        .map(|(status, _)| status)
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
    let status = server.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert_eq!(
        audit_rows(&pool, &run).await,
        400,
        "one audit row per request: {}",
        server.log_text()
    );
}

/// Runs the binary with `env` until it exits; a process still running
/// after 10 s (it started serving) is killed, and its output returned.
fn run_to_exit(env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-quickstart"));
    cmd.env_remove("IDEMPOTENCY_STORE")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start example-quickstart");
    let pid = child.id().to_string();
    let (exited, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = exited.send(());
    let _ = watchdog.join();
    out
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
