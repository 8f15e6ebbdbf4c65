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
//! | `EXAMPLE_CRASH_AT`, `EXAMPLE_STOP_AT` | unset | `after_claim`, `before_commit`, `after_commit` | fault suite only: SIGKILL (SIGSTOP) at that point of the promotion |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr naming the variable and
//! what it accepts, and exit status 2, before anything is bound or connected.
//! SIGTERM and Ctrl-C stop it gracefully: in-flight requests finish, the
//! audit buffer writes what they queued, exit status 0.

use std::ops::RangeInclusive;
use std::process::ExitCode;

use example_promotion::{Config, Fault, Service};
use example_support::{ops, settings, shutdown};

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

/// The settings from the environment.
fn config(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
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
    let fault = settings::choice(
        &var,
        "PROMOTION_FAULT",
        &[
            ("crash-before-commit", Fault::CrashBeforeCommit),
            ("fail-once", Fault::FailBeforeCommit),
        ],
    )?;
    Ok(Config {
        lease: settings::millis(&var, "PROMOTION_LEASE_MS", defaults.lease, LEASE_MS)?,
        wait: settings::millis(&var, "PROMOTION_WAIT_MS", defaults.wait, WAIT_MS)?,
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
    let env = |name: &str| std::env::var(name).ok();
    let checked = (|| {
        let filter = settings::log_filter(env("RUST_LOG"))?;
        let addr = settings::bind_addr(&args, env("BIND_ADDR"), DEFAULT_BIND)?;
        let config = config(env)?;
        let options = settings::postgres_url(env("DATABASE_URL"))?;
        Ok::<_, String>((filter, addr, config, options))
    })();
    let (filter, addr, config, options) = match checked {
        Ok(c) => c,
        Err(e) => return settings::refuse(e),
    };
    settings::init_logging(filter);
    let pool = match settings::connect(options, 20).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service = match Service::start(pool, config.clone(), ops::install_metrics()).await {
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
        .with_graceful_shutdown(shutdown::signal())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
