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
//! | setting | default | accepted | meaning |
//! |---|---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3001` | a socket address | listen address |
//! | `DATABASE_URL` | required | a `postgres://` URL | the PostgreSQL database (tables in schemas `promotion`, `idempotency`, `audit`) |
//! | `PROMOTION_LEASE_MS` | 10000 | 1000 to 3600000 | lease of an executing promotion: how soon a crashed attempt is taken over |
//! | `PROMOTION_WAIT_MS` | 5000 | 1 to 300000 | how long a duplicate waits for the first attempt before answering 409 |
//! | `PROMOTION_ADMIN_TOKEN` | unset (admin endpoints off) | 8 to 256 visible ASCII characters | bearer token of `POST /admin/...` |
//! | `PROMOTION_FAULT` | unset | `crash-before-commit`, `fail-once` | tests only |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr naming the variable and
//! what it accepts, and exit status 2, before anything is bound or connected.
//! SIGTERM and Ctrl-C stop it gracefully: in-flight requests finish, the
//! audit buffer writes what they queued, exit status 0.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::time::Duration;

use example_promotion::{Config, Fault, Service};
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DEFAULT_BIND: &str = "127.0.0.1:3001";

const USAGE: &str = "usage: example-promotion [--bind ADDR]

Environment (see README.md for the accepted ranges): DATABASE_URL (required), BIND_ADDR,
PROMOTION_LEASE_MS (1000..=3600000), PROMOTION_WAIT_MS (1..=300000), PROMOTION_ADMIN_TOKEN
(8 to 256 visible ASCII characters), PROMOTION_FAULT (tests only), RUST_LOG";

/// Accepted `PROMOTION_LEASE_MS`: under a second a running promotion would
/// be taken over (and run again); over an hour, a crashed one blocks its
/// snapshot that long.
const LEASE_MS: RangeInclusive<u64> = 1_000..=3_600_000;
/// Accepted `PROMOTION_WAIT_MS`: a duplicate holds its connection at most five minutes.
const WAIT_MS: RangeInclusive<u64> = 1..=300_000;
/// Accepted length of `PROMOTION_ADMIN_TOKEN`.
const ADMIN_TOKEN_LEN: RangeInclusive<usize> = 8..=256;

const START_POSTGRES: &str = "start PostgreSQL (e.g. `pg_ctlcluster 15 main start`) and set \
DATABASE_URL=postgres://postgres@127.0.0.1:5432/test";

/// The listen address: `--bind ADDR` / `--bind=ADDR`, else `BIND_ADDR`, else the default.
fn bind_addr(args: &[String], env: Option<String>) -> Result<SocketAddr, String> {
    let mut from_args = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--bind" {
            from_args = Some(
                it.next()
                    .ok_or("--bind needs an address (see --help)")?
                    .clone(),
            );
        } else if let Some(v) = arg.strip_prefix("--bind=") {
            from_args = Some(v.to_owned());
        } else {
            return Err(format!("unknown argument {arg:?} (see --help)"));
        }
    }
    let name = if from_args.is_some() {
        "--bind"
    } else {
        "BIND_ADDR"
    };
    let raw = from_args.or(env).unwrap_or_else(|| DEFAULT_BIND.to_owned());
    raw.parse()
        .map_err(|_| format!("{name}={raw:?} is not a socket address such as {DEFAULT_BIND}"))
}

/// The settings from the environment.
fn config(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let millis = |name: &str, default: Duration, range: RangeInclusive<u64>| match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if range.contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{name}={v:?} is not a whole number of milliseconds from {} to {}",
                range.start(),
                range.end()
            )),
        },
    };
    let admin_token = match var("PROMOTION_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
        Some(t)
            if !ADMIN_TOKEN_LEN.contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            return Err(format!(
                "PROMOTION_ADMIN_TOKEN is not {} to {} visible ASCII characters",
                ADMIN_TOKEN_LEN.start(),
                ADMIN_TOKEN_LEN.end()
            ));
        }
        t => t,
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
        lease: millis("PROMOTION_LEASE_MS", defaults.lease, LEASE_MS)?,
        wait: millis("PROMOTION_WAIT_MS", defaults.wait, WAIT_MS)?,
        admin_token,
        fault,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    // Every setting is checked before anything is bound or connected; a
    // nonsense value is one line on stderr and exit status 2.
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
        Ok(v) => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: RUST_LOG={v:?} is not a log filter such as info or warn ({e})");
                return ExitCode::from(2);
            }
        },
    };
    let env = |name: &str| std::env::var(name).ok();
    let addr = match bind_addr(&args, env("BIND_ADDR")) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
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
        Ok(o) if url.starts_with("postgres://") || url.starts_with("postgresql://") => o,
        Ok(_) => {
            eprintln!("error: DATABASE_URL is not a postgres:// or postgresql:// URL");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: DATABASE_URL is not a PostgreSQL URL ({e})");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
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
            "PROMOTION_ADMIN_TOKEN" => Some("test-token".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.lease, Duration::from_millis(1500));
        assert_eq!(c.fault, Some(Fault::CrashBeforeCommit));
        assert_eq!(c.admin_token.as_deref(), Some("test-token"));
        for (name, value) in [
            ("PROMOTION_LEASE_MS", "0"),
            ("PROMOTION_LEASE_MS", "999"),
            ("PROMOTION_LEASE_MS", "3600001"),
            ("PROMOTION_LEASE_MS", "abc"),
            ("PROMOTION_WAIT_MS", "soon"),
            ("PROMOTION_WAIT_MS", "0"),
            ("PROMOTION_WAIT_MS", "18446744073709551615"),
            ("PROMOTION_ADMIN_TOKEN", "short"),
            ("PROMOTION_ADMIN_TOKEN", "has a space"),
            ("PROMOTION_FAULT", "explode"),
        ] {
            let err = config(|n: &str| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.contains(name), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let err = config(|n: &str| (n == "PROMOTION_LEASE_MS").then(|| "0".into())).unwrap_err();
        assert!(err.contains("from 1000 to 3600000"), "{err}");
        let wait = config(|n: &str| (n == "PROMOTION_WAIT_MS").then(|| "300000".into())).unwrap();
        assert_eq!(wait.wait, Duration::from_secs(300));
    }
}
