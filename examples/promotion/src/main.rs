//! The promotion service: an estimate snapshot becomes exactly one work
//! order, on PostgreSQL.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p example-promotion`,
//! then (see `examples/promotion/README.md` for the whole walk-through):
//!
//! ```text
//! curl -s localhost:3001/estimates -H 'Content-Type: application/json' \
//!   -d '{"customer_id":"C-1","lines":[{"description":"brake pads","quantity":2,"unit_price_cents":4500}]}'
//! curl -s -X POST localhost:3001/estimates/E-1/finalize
//! curl -si -X POST localhost:3001/estimates/E-1/snapshots/1/promote
//! ```
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3001` | listen address |
//! | `DATABASE_URL` | required | the PostgreSQL database (tables in schemas `promotion`, `idempotency`, `audit`) |
//! | `PROMOTION_LEASE_MS` | 10000 | lease of an executing promotion: how soon a crashed attempt is taken over |
//! | `PROMOTION_WAIT_MS` | 5000 | how long a duplicate waits for the first attempt before answering 409 |
//! | `PROMOTION_ADMIN_TOKEN` | unset (admin endpoints off) | bearer token of `POST /admin/...` |
//! | `PROMOTION_FAULT` | unset | tests only: `crash-before-commit` or `fail-once` |
//! | `RUST_LOG` | `info` | log filter |

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use example_promotion::{Config, Fault, Service};
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DEFAULT_BIND: &str = "127.0.0.1:3001";

const USAGE: &str = "usage: example-promotion [--bind ADDR]

Environment: DATABASE_URL (required), BIND_ADDR, PROMOTION_LEASE_MS, PROMOTION_WAIT_MS,
PROMOTION_ADMIN_TOKEN, PROMOTION_FAULT (tests only), RUST_LOG";

const START_POSTGRES: &str = "start PostgreSQL (e.g. `pg_ctlcluster 15 main start`) and set \
DATABASE_URL=postgres://postgres@127.0.0.1:5432/test";

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

/// The settings from the environment.
fn config(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let millis = |name: &str, default: Duration| -> Result<Duration, String> {
        match var(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(format!(
                    "{name}={v:?} is not a positive whole number of milliseconds"
                )),
            },
        }
    };
    let defaults = Config::default();
    let fault = match var("PROMOTION_FAULT").as_deref() {
        None | Some("") => None,
        Some("crash-before-commit") => Some(Fault::CrashBeforeCommit),
        Some("fail-once") => Some(Fault::FailBeforeCommit),
        Some(other) => {
            return Err(format!(
                "PROMOTION_FAULT={other:?} is not crash-before-commit or fail-once"
            ));
        }
    };
    Ok(Config {
        lease: millis("PROMOTION_LEASE_MS", defaults.lease)?,
        wait: millis("PROMOTION_WAIT_MS", defaults.wait)?,
        admin_token: var("PROMOTION_ADMIN_TOKEN").filter(|t| !t.is_empty()),
        fault,
    })
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
    let config = match config(env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(url) = env("DATABASE_URL").filter(|u| !u.is_empty()) else {
        eprintln!("error: DATABASE_URL is not set; {START_POSTGRES}");
        return ExitCode::from(2);
    };
    let options: PgConnectOptions = match url.parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: DATABASE_URL is not a PostgreSQL URL ({e})");
            return ExitCode::from(2);
        }
    };
    let pool = match PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.options([("statement_timeout", "5000")]))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot reach PostgreSQL at DATABASE_URL ({e}); {START_POSTGRES}");
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
    let service = match Service::start(pool, config.clone(), metrics).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        lease_ms = config.lease.as_millis(),
        wait_ms = config.wait.as_millis(),
        admin = config.admin_token.is_some(),
        fault = ?config.fault,
        "listening on http://{addr}"
    );
    if let Err(e) = axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("error: server failed: {e}");
        return ExitCode::FAILURE;
    }
    // The server has stopped and its in-flight requests have answered:
    // wait until the audit buffer has written what they queued.
    let report = service.shutdown().await;
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
        assert_eq!(
            bind_addr(&args(&["--bind=127.0.0.1:4001"]), None)
                .unwrap()
                .port(),
            4001
        );
        assert!(bind_addr(&args(&["--bind"]), None).is_err());
        assert!(bind_addr(&args(&["--port", "1"]), None).is_err());
    }

    #[test]
    fn settings_from_the_environment() {
        let none = |_: &str| None;
        let c = config(none).unwrap();
        assert_eq!(c.lease, Duration::from_secs(10));
        assert!(c.admin_token.is_none() && c.fault.is_none());
        let c = config(|n: &str| match n {
            "PROMOTION_LEASE_MS" => Some("1500".into()),
            "PROMOTION_FAULT" => Some("crash-before-commit".into()),
            "PROMOTION_ADMIN_TOKEN" => Some("t".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.lease, Duration::from_millis(1500));
        assert_eq!(c.fault, Some(Fault::CrashBeforeCommit));
        assert_eq!(c.admin_token.as_deref(), Some("t"));
        for (name, value) in [
            ("PROMOTION_LEASE_MS", "0"),
            ("PROMOTION_WAIT_MS", "soon"),
            ("PROMOTION_FAULT", "explode"),
        ] {
            let err = config(|n: &str| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }
}
