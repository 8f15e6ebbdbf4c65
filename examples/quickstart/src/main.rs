//! Quickstart: an axum order service whose `POST /orders` runs exactly once
//! per `Idempotency-Key`, with zero setup.
//!
//! Run with: `cargo run -p example-quickstart`, then:
//!
//! ```text
//! curl -si localhost:3000/orders -H 'Authorization: Bearer alice' \
//!   -H 'Idempotency-Key: order-1' -H 'Content-Type: application/json' \
//!   -d '{"sku":"book","quantity":1}'
//! ```
//!
//! See `examples/quickstart/README.md` for the whole session.
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3000` | listen address |
//! | `IDEMPOTENCY_STORE` | `memory` | `memory`, `postgres` (`DATABASE_URL`) or `redis` (`REDIS_URL`) |
//! | `IDEMPOTENCY_LEASE_SECS` | 10 | lease of an executing request |
//! | `IDEMPOTENCY_RETENTION_SECS` | 86400 | how long responses are replayed |
//! | `IDEMPOTENCY_WAIT_SECS` | unset | duplicates wait this long for the first response instead of getting 409 |
//! | `RUST_LOG` | `info` | log filter |

use std::net::SocketAddr;
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusBuilder;

mod app;
mod audit;
mod store;

const DEFAULT_BIND: &str = "127.0.0.1:3000";

const USAGE: &str = "usage: example-quickstart [--bind ADDR]

Environment: BIND_ADDR, IDEMPOTENCY_STORE (memory|postgres|redis), DATABASE_URL, REDIS_URL,
IDEMPOTENCY_LEASE_SECS, IDEMPOTENCY_RETENTION_SECS, IDEMPOTENCY_WAIT_SECS, RUST_LOG";

/// The listen address: `--bind ADDR` / `--bind=ADDR`, else `BIND_ADDR`, else the default.
fn bind_addr(args: &[String], env: Option<String>) -> Result<SocketAddr, String> {
    let mut from_args = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--bind" {
            from_args = Some(it.next().ok_or("--bind needs an address")?.clone());
        } else if let Some(v) = arg.strip_prefix("--bind=") {
            from_args = Some(v.to_owned());
        } else {
            return Err(format!("unknown argument {arg:?}"));
        }
    }
    let raw = from_args.or(env).unwrap_or_else(|| DEFAULT_BIND.to_owned());
    raw.parse()
        .map_err(|_| format!("{raw:?} is not a socket address such as {DEFAULT_BIND}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok();
    let addr = match bind_addr(&args, env("BIND_ADDR")) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = match app::IdempotencySettings::from_env(env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match store::from_env(env).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics is disabled");
            None
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (trail, trail_kind) = match audit::from_env(env).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store_name = env("IDEMPOTENCY_STORE").unwrap_or_else(|| "memory".to_owned());
    tracing::info!(store = %store_name, audit = trail_kind, "listening on http://{addr}");
    let service = app::app(store, &settings, metrics, trail.clone());
    // On SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish...
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("error: server failed: {e}");
        return ExitCode::FAILURE;
    }
    // ...then wait until the audit buffer has written what they queued.
    let report = trail.shutdown().await;
    tracing::info!(
        written = report.written,
        dropped = report.dropped,
        abandoned = report.abandoned,
        "stopped"
    );
    ExitCode::SUCCESS
}

/// Ctrl-C or SIGTERM (what `docker stop`, systemd and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bind_address_precedence() {
        assert_eq!(bind_addr(&[], None).unwrap().to_string(), DEFAULT_BIND);
        assert_eq!(
            bind_addr(&[], Some("0.0.0.0:8080".into())).unwrap().port(),
            8080
        );
        let a = args(&["--bind", "127.0.0.1:4000"]);
        assert_eq!(
            bind_addr(&a, Some("0.0.0.0:8080".into())).unwrap().port(),
            4000
        );
        let a = args(&["--bind=127.0.0.1:4001"]);
        assert_eq!(bind_addr(&a, None).unwrap().port(), 4001);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(bind_addr(&args(&["--bind"]), None).is_err());
        assert!(bind_addr(&args(&["--bind", "nope"]), None).is_err());
        assert!(bind_addr(&args(&["--port", "1"]), None).is_err());
    }
}
