//! Two quickstart processes on one PostgreSQL database
//! (`IDEMPOTENCY_STORE=postgres`): 200 keys, each sent 50 times concurrently
//! and split across both processes, create exactly one order per key in
//! total; every other answer is a 409 or a marked replay of the first.
//!
//! The test builds the quickstart binary (`cargo build -p example-quickstart`)
//! and starts it twice on free loopback ports.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idempotency_postgres::sqlx;

const KEYS: usize = 200;
const DUPLICATES: usize = 50;
/// Keys whose duplicates are in flight at once (each key's 50 together).
const KEYS_AT_ONCE: usize = 4;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

async fn database_reachable() -> bool {
    let url = database_url();
    let reachable = match sqlx::PgPool::connect(&url).await {
        Ok(pool) => sqlx::query("SELECT 1").execute(&pool).await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        assert!(!in_ci(), "PostgreSQL at {url} unreachable under CI");
        println!("skipping: postgres unreachable");
    }
    reachable
}

/// Builds the quickstart binary and returns its path.
fn quickstart_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "example-quickstart"])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p example-quickstart failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug").join(format!(
        "example-quickstart{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running quickstart process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &PathBuf, env: &[(&str, String)]) -> Server {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(bin);
    cmd.env_remove("IDEMPOTENCY_WAIT_SECS")
        .env("BIND_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        child: cmd.spawn().expect("start quickstart"),
        addr,
    }
}

async fn wait_ready(client: &HttpClient, server: &mut Server) {
    for _ in 0..300 {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("quickstart exited early: {status}");
        }
        let req = Request::get(format!("http://{}/healthz", server.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            && res.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("quickstart at {} never became ready", server.addr);
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    body: Bytes,
}

async fn send(
    client: &HttpClient,
    method: Method,
    addr: SocketAddr,
    path: &str,
    user: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {user}"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("answer within a minute")
        .expect("request");
    let status = res.status();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        replayed,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_order_per_key() {
    if !database_reachable().await {
        return;
    }
    let bin = quickstart_binary();
    let env = [
        ("IDEMPOTENCY_STORE", "postgres".to_owned()),
        ("DATABASE_URL", database_url()),
    ];
    let mut servers = [spawn(&bin, &env), spawn(&bin, &env)];
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for s in &mut servers {
        wait_ready(&client, s).await;
    }
    let addrs = [servers[0].addr, servers[1].addr];
    // A user of its own: keys of earlier runs live in other scopes.
    let user = format!("mp-{}", uuid::Uuid::new_v4().simple());

    let mut answers: HashMap<usize, Vec<Answer>> = HashMap::new();
    for wave in (0..KEYS).collect::<Vec<_>>().chunks(KEYS_AT_ONCE) {
        let mut tasks = Vec::new();
        for &k in wave {
            for d in 0..DUPLICATES {
                let client = client.clone();
                let user = user.clone();
                let addr = addrs[(k + d) % 2];
                tasks.push(tokio::spawn(async move {
                    let body = format!(r#"{{"sku":"key-{k}","quantity":1}}"#);
                    let key = format!("key-{k}");
                    let a = send(
                        &client,
                        Method::POST,
                        addr,
                        "/orders",
                        &user,
                        Some(&key),
                        &body,
                    )
                    .await;
                    (k, a)
                }));
            }
        }
        for t in tasks {
            let (k, a) = t.await.unwrap();
            answers.entry(k).or_default().push(a);
        }
    }

    let mut executed_total = 0;
    for (k, answers) in &answers {
        assert_eq!(answers.len(), DUPLICATES);
        let executed: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.status == StatusCode::CREATED && !a.replayed)
            .collect();
        assert_eq!(executed.len(), 1, "key-{k}: exactly one execution");
        executed_total += 1;
        for a in answers {
            match (a.status, a.replayed) {
                (StatusCode::CREATED, false) => {}
                (StatusCode::CREATED, true) => {
                    assert_eq!(
                        a.body, executed[0].body,
                        "key-{k}: a replay is the first answer"
                    );
                }
                (StatusCode::CONFLICT, false) => {}
                other => panic!(
                    "key-{k}: unexpected answer {other:?}: {}",
                    String::from_utf8_lossy(&a.body)
                ),
            }
        }
    }
    assert_eq!(executed_total, KEYS);

    // The orders the two processes hold, together: one per key.
    let mut per_sku: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for addr in addrs {
        let a = send(&client, Method::GET, addr, "/orders", &user, None, "").await;
        assert_eq!(a.status, StatusCode::OK);
        let orders: Vec<serde_json::Value> = serde_json::from_slice(&a.body).unwrap();
        for o in orders {
            *per_sku
                .entry(o["sku"].as_str().unwrap().to_owned())
                .or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(total, KEYS, "orders over both processes");
    for k in 0..KEYS {
        assert_eq!(per_sku.get(&format!("key-{k}")), Some(&1), "key-{k}");
    }
    drop(servers);
}

/// Start-up failures of the postgres store are reported and exit non-zero:
/// no `DATABASE_URL`, or a database that cannot be reached.
#[test]
fn postgres_store_startup_failures_exit_nonzero() {
    let bin = quickstart_binary();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        cmd.env_remove("DATABASE_URL")
            .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "off")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run quickstart")
    };
    let out = run(&[("IDEMPOTENCY_STORE", "postgres")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));

    let closed = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = run(&[("IDEMPOTENCY_STORE", "postgres"), ("DATABASE_URL", &closed)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
