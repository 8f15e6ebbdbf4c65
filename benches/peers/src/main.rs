//! `peer-server`: one HTTP server over a published idempotency crate, for comparison runs.
//!
//! ```text
//! peer-server --peer <axum-idempotent|idempotent> --store <memory|redis|postgres>
//!             --bind 127.0.0.1:PORT [--delay-ms N]
//! ```
//!
//! Prints `listening on ADDR` once ready and exits on SIGTERM, SIGINT or when stdin closes.
//! Exit codes: 0 clean stop, 1 start-up failure (service unreachable, bind), 2 usage,
//! 3 the peer cannot run on that store (one-line reason on stderr).

mod axum_idempotent_peer;
mod idempotent_peer;

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// Header that carries the client's key, on both peers.
pub(crate) const KEY_HEADER: &str = "idempotency-key";

/// How long a peer keeps a key's outcome (and a session cookie lives).
pub(crate) const RETENTION: Duration = Duration::from_secs(3600);

/// The side effect shared by every peer and the counters behind `GET /effects`.
#[derive(Clone)]
pub(crate) struct App {
    effects: Arc<Mutex<HashMap<String, u32>>>,
    next_id: Arc<AtomicU64>,
    delay: Option<Duration>,
}

impl App {
    /// Runs the operation once: waits `--delay-ms`, counts one execution for `key`
    /// (sf-string quotes trimmed) and answers 201 with a `Location`.
    pub(crate) async fn create_order(&self, key: &str) -> Response {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(key);
        *self
            .effects
            .lock()
            .expect("effects lock")
            .entry(key.to_owned())
            .or_insert(0) += 1;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        (
            StatusCode::CREATED,
            [(LOCATION, format!("/orders/{id}"))],
            Json(json!({ "id": id, "key": key, "status": "created" })),
        )
            .into_response()
    }

    fn effects(&self) -> HashMap<String, u32> {
        self.effects.lock().expect("effects lock").clone()
    }
}

/// Routes outside any idempotency handling.
fn plain_routes(app: App) -> Router {
    Router::new()
        .route(
            "/effects",
            get(
                |axum::extract::State(app): axum::extract::State<App>| async move {
                    Json(app.effects())
                },
            ),
        )
        .route("/healthz", get(|| async { StatusCode::OK }))
        .with_state(app)
}

/// Work to run after the server stopped (removing this run's tables or keys).
pub(crate) type Cleanup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A peer ready to serve: its `POST /orders` (and any extra) routes.
pub(crate) struct Peer {
    pub(crate) router: Router,
    pub(crate) cleanup: Option<Cleanup>,
}

/// Why a peer could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// This peer cannot work on this store (exit 3).
    Unsupported(String),
    /// A service could not be reached or set up (exit 1).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    Memory,
    Redis,
    Postgres,
}

/// A name unique to this process run, usable in table, schema and key names.
pub(crate) fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

struct Args {
    peer: String,
    store: Store,
    bind: SocketAddr,
    delay: Option<Duration>,
}

const USAGE: &str = "usage: peer-server --peer <axum-idempotent|idempotent> \
--store <memory|redis|postgres> --bind 127.0.0.1:PORT [--delay-ms N]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut peer, mut store, mut bind, mut delay) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--peer" => match value.as_str() {
                "axum-idempotent" | "idempotent" => peer = Some(value),
                _ => return Err(format!("unknown peer {value:?}")),
            },
            "--store" => {
                store = Some(match value.as_str() {
                    "memory" => Store::Memory,
                    "redis" => Store::Redis,
                    "postgres" => Store::Postgres,
                    _ => return Err(format!("unknown store {value:?}")),
                });
            }
            "--bind" => bind = Some(value.parse().map_err(|e| format!("--bind {value}: {e}"))?),
            "--delay-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|e| format!("--delay-ms {value}: {e}"))?;
                delay = (ms > 0).then(|| Duration::from_millis(ms));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        peer: peer.ok_or("--peer is required")?,
        store: store.ok_or("--store is required")?,
        bind: bind.ok_or("--bind is required")?,
        delay,
    })
}

/// Resolves on SIGTERM, SIGINT or end of stdin.
async fn shutdown_signal() {
    let (tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a blocking read inside the runtime would hold up its shutdown.
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("peer-server: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let app = App {
        effects: Arc::default(),
        next_id: Arc::default(),
        delay: args.delay,
    };
    let peer = match args.peer.as_str() {
        "axum-idempotent" => axum_idempotent_peer::build(args.store, app.clone()).await,
        _ => idempotent_peer::build(args.store, app.clone()).await,
    };
    let peer = match peer {
        Ok(peer) => peer,
        Err(StartError::Unsupported(reason)) => {
            eprintln!("peer-server: unsupported: {reason}");
            return ExitCode::from(3);
        }
        Err(StartError::Failed(reason)) => {
            eprintln!("peer-server: cannot start: {reason}");
            return ExitCode::from(1);
        }
    };

    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("peer-server: cannot bind {}: {err}", args.bind);
            if let Some(cleanup) = peer.cleanup {
                cleanup.await;
            }
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().expect("bound address");
    let router = peer.router.merge(plain_routes(app));
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Some(cleanup) = peer.cleanup {
        cleanup.await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("peer-server: server error: {err}");
            ExitCode::from(1)
        }
    }
}
