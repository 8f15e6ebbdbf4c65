//! Child-process servers: the published peers, run by the `peer-server`
//! binary built from `benches/peers` (a separate cargo project, so the
//! workspace does not carry their dependencies), and, with `--isolate`, this
//! harness's own variants, run by this binary with `--serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Workload;
use crate::server::{Peer, PeerStore, Variant};

/// Where the peer server binary is: `PEER_SERVER`, or the release build of `benches/peers`.
fn binary() -> PathBuf {
    std::env::var_os("PEER_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/target/release/peer-server"),
        PathBuf::from,
    )
}

/// A running peer server.
pub(crate) struct PeerProcess {
    pub(crate) addr: SocketAddr,
    pub(crate) cookie: Option<String>,
    child: Child,
}

async fn get(addr: SocketAddr, path: &str) -> Result<(http::HeaderMap, Bytes), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {path}: status {}", resp.status()));
    }
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((headers, body))
}

impl PeerProcess {
    pub(crate) async fn spawn(
        peer: Peer,
        store: PeerStore,
        delay: Duration,
    ) -> Result<Self, String> {
        let bin = binary();
        if !bin.exists() {
            return Err(format!(
                "{} not built: run `cargo build --release --manifest-path benches/peers/Cargo.toml`",
                bin.display()
            ));
        }
        let peer_name = match peer {
            Peer::AxumIdempotent => "axum-idempotent",
            Peer::Idempotent => "idempotent",
        };
        let store_name = match store {
            PeerStore::Memory => "memory",
            PeerStore::Redis => "redis",
            PeerStore::Postgres => "postgres",
        };
        let mut command = Command::new(&bin);
        command
            .args(["--peer", peer_name, "--store", store_name])
            .args(["--delay-ms", &delay.as_millis().to_string()]);
        let (addr, child) = Self::start(command, &format!("{peer_name}/{store_name}")).await?;
        let cookie = match peer {
            // Session-scoped: the same client retrying carries its session cookie.
            Peer::AxumIdempotent => {
                let (headers, _) = get(addr, "/session").await?;
                let set = headers
                    .get(http::header::SET_COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or("GET /session returned no Set-Cookie")?;
                Some(set.split(';').next().unwrap_or(set).to_owned())
            }
            Peer::Idempotent => None,
        };
        Ok(Self {
            addr,
            cookie,
            child,
        })
    }

    /// One of this harness's own variants, run by this same binary (`--serve`).
    pub(crate) async fn spawn_own(variant: Variant, workload: Workload) -> Result<Self, String> {
        let bin = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let mut command = Command::new(bin);
        command.args(["--serve", variant.name(), "--workload", workload.name()]);
        let (addr, child) = Self::start(command, variant.name()).await?;
        Ok(Self {
            addr,
            cookie: None,
            child,
        })
    }

    /// Runs `command --bind ADDR` on a free loopback port and waits for its
    /// `listening on` line.
    async fn start(mut command: Command, name: &str) -> Result<(SocketAddr, Child), String> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = command
            .args(["--bind", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("listening on") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !ready {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err)).await;
            }
            let _ = child.kill().await;
            return Err(format!("{name} did not start: {}", err.trim()));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((addr, child))
    }

    pub(crate) async fn effects(&self) -> Result<HashMap<String, u32>, String> {
        let (_, body) = get(self.addr, "/effects").await?;
        serde_json::from_slice(&body).map_err(|e| format!("GET /effects: {e}"))
    }

    /// Closes the child's stdin, so that it stops and removes its keys or
    /// tables; kills it if it has not exited after 30 seconds.
    pub(crate) async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}
