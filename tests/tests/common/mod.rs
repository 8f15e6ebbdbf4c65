//! Shared by the multi-process tests: builds the quickstart binary, runs
//! two processes on one shared store, and checks that 200 keys × 50
//! concurrent duplicates split across both create exactly one order per key.

#![allow(dead_code, unreachable_pub)]

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

pub const KEYS: usize = 200;
pub const DUPLICATES: usize = 50;
/// Keys whose duplicates are in flight at once (each key's 50 together).
pub const KEYS_AT_ONCE: usize = 4;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the quickstart binary and returns its path.
pub fn quickstart_binary() -> PathBuf {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running quickstart process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(bin: &PathBuf, env: &[(&str, String)]) -> Server {
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

pub async fn wait_ready(client: &HttpClient, server: &mut Server) {
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

pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub body: Bytes,
}

pub async fn send(
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

/// Two quickstart processes with `env` (which selects a shared store);
/// 200 keys × 50 concurrent duplicates split across both: exactly one order
/// per key in total, every other answer a 409 or a marked replay.
pub async fn two_processes_one_order_per_key(env: &[(&str, String)]) {
    let bin = quickstart_binary();
    let mut servers = [spawn(&bin, env), spawn(&bin, env)];
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
