//! The job creation service: completing an assessment creates exactly one
//! processing job, on PostgreSQL.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p example-job-creation`,
//! then (see `examples/job-creation/README.md` for the whole walk-through):
//!
//! ```text
//! curl -s localhost:3003/api/funnels/stress/assessments -H 'Content-Type: application/json' -d '{"patientId":"P-1"}'
//! curl -s -X POST localhost:3003/api/funnels/stress/assessments/$ID/complete
//! ```
//!
//! | setting | default | accepted | meaning |
//! |---|---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3003` | a socket address | listen address |
//! | `DATABASE_URL` | required | a `postgres://` URL | the PostgreSQL database |
//! | `JOB_CREATION_SCHEMA` | `job_creation` | 1 to 48 of `a-z0-9_` | the schema of the service's tables |
//! | `JOB_CREATION_AUDIT_SCHEMA` | `audit` | 1 to 48 of `a-z0-9_` | the schema of the audit trail |
//! | `JOB_CREATION_STORE_SCHEMA` | `idempotency` | 1 to 48 of `a-z0-9_` | the schema of the idempotency store (the stages' records) |
//! | `JOB_CREATION_ISOLATION` | `read-committed` | `read-committed`, `repeatable-read`, `serializable` | isolation of the job creation's transaction |
//! | `JOB_CREATION_WORKER` | `on` | `on`, `off` | whether this process runs a worker |
//! | `JOB_CREATION_LEASE_MS` | 10000 | 500 to 3600000 | lease of a claimed job and of a running stage: how soon a crashed worker's job is taken over |
//! | `JOB_CREATION_STAGE_MS` | 200 | 0 to 60000 | how long each stage works |
//! | `JOB_CREATION_POLL_MS` | 500 | 10 to 60000 | how often an idle worker looks for jobs |
//! | `JOB_CREATION_RETRY_MS` | 1000 | 0 to 3600000 | wait before a failed attempt's retry, times the attempt number |
//! | `JOB_CREATION_FAULT` | unset | `insert`, `stage` | tests and demonstrations only |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr naming the variable and
//! what it accepts, and exit status 2, before anything is bound or connected.
//! SIGTERM and Ctrl-C stop it gracefully: in-flight requests finish, the
//! worker finishes its job in hand, the audit buffer writes what was queued,
//! exit status 0.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::time::Duration;

use example_job_creation::{Config, Fault, Service, db};
use idempotency_postgres::natural::Isolation;
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DEFAULT_BIND: &str = "127.0.0.1:3003";

const USAGE: &str = "usage: example-job-creation [--bind ADDR]

Environment (see README.md for the accepted values): DATABASE_URL (required), BIND_ADDR,
JOB_CREATION_SCHEMA, JOB_CREATION_AUDIT_SCHEMA, JOB_CREATION_STORE_SCHEMA, JOB_CREATION_ISOLATION,
JOB_CREATION_WORKER,
JOB_CREATION_LEASE_MS, JOB_CREATION_STAGE_MS, JOB_CREATION_POLL_MS, JOB_CREATION_RETRY_MS,
JOB_CREATION_FAULT (tests only), RUST_LOG";

const LEASE_MS: RangeInclusive<u64> = 500..=3_600_000;
const STAGE_MS: RangeInclusive<u64> = 0..=60_000;
const POLL_MS: RangeInclusive<u64> = 10..=60_000;
const RETRY_MS: RangeInclusive<u64> = 0..=3_600_000;

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
    let defaults = Config::default();
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
    let schema = |name: &str, default: &str| match var(name).filter(|v| !v.is_empty()) {
        None => Ok(default.to_owned()),
        Some(v) if db::is_schema_name(&v) => Ok(v),
        Some(v) => Err(format!(
            "{name}={v:?} is not a schema name: 1 to 48 of a-z, 0-9 and _, not starting with a digit or pg_"
        )),
    };
    let isolation = match var("JOB_CREATION_ISOLATION").as_deref() {
        None | Some("") | Some("read-committed") => Isolation::ReadCommitted,
        Some("repeatable-read") => Isolation::RepeatableRead,
        Some("serializable") => Isolation::Serializable,
        Some(other) => {
            return Err(format!(
                "JOB_CREATION_ISOLATION={other:?} is not read-committed, repeatable-read or serializable"
            ));
        }
    };
    let worker = match var("JOB_CREATION_WORKER").as_deref() {
        None | Some("") | Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(format!("JOB_CREATION_WORKER={other:?} is not on or off")),
    };
    let fault = match var("JOB_CREATION_FAULT").as_deref() {
        None | Some("") => None,
        Some("insert") => Some(Fault::Insert),
        Some("stage") => Some(Fault::Stage),
        Some(other) => {
            return Err(format!(
                "JOB_CREATION_FAULT={other:?} is not insert or stage"
            ));
        }
    };
    Ok(Config {
        schema: schema("JOB_CREATION_SCHEMA", &defaults.schema)?,
        audit_schema: schema("JOB_CREATION_AUDIT_SCHEMA", &defaults.audit_schema)?,
        store_schema: schema("JOB_CREATION_STORE_SCHEMA", &defaults.store_schema)?,
        isolation,
        worker,
        lease: millis("JOB_CREATION_LEASE_MS", defaults.lease, LEASE_MS)?,
        stage_time: millis("JOB_CREATION_STAGE_MS", defaults.stage_time, STAGE_MS)?,
        poll: millis("JOB_CREATION_POLL_MS", defaults.poll, POLL_MS)?,
        retry_delay: millis("JOB_CREATION_RETRY_MS", defaults.retry_delay, RETRY_MS)?,
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
        .max_connections(16)
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
        schema = config.schema,
        isolation = ?config.isolation,
        worker = config.worker,
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
        assert!(bind_addr(&args(&["--bind"]), None).is_err());
        assert!(bind_addr(&args(&["--port", "1"]), None).is_err());
    }

    #[test]
    fn settings_from_the_environment() {
        let c = config(|_: &str| None).unwrap();
        assert_eq!(c.schema, "job_creation");
        assert!(c.worker && c.fault.is_none());
        assert_eq!(c.isolation, Isolation::ReadCommitted);
        let c = config(|n: &str| match n {
            "JOB_CREATION_FAULT" => Some("insert".into()),
            "JOB_CREATION_WORKER" => Some("off".into()),
            "JOB_CREATION_ISOLATION" => Some("serializable".into()),
            "JOB_CREATION_LEASE_MS" => Some("1500".into()),
            "JOB_CREATION_SCHEMA" => Some("jobs_test".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.fault, Some(Fault::Insert));
        assert!(!c.worker);
        assert_eq!(c.isolation, Isolation::Serializable);
        assert_eq!(c.lease, Duration::from_millis(1500));
        assert_eq!(c.schema, "jobs_test");
        for (name, value) in [
            ("JOB_CREATION_LEASE_MS", "499"),
            ("JOB_CREATION_LEASE_MS", "soon"),
            ("JOB_CREATION_STAGE_MS", "60001"),
            ("JOB_CREATION_POLL_MS", "0"),
            ("JOB_CREATION_RETRY_MS", "-1"),
            ("JOB_CREATION_FAULT", "explode"),
            ("JOB_CREATION_WORKER", "yes"),
            ("JOB_CREATION_ISOLATION", "snapshot"),
            ("JOB_CREATION_SCHEMA", "Bad-Name"),
            ("JOB_CREATION_AUDIT_SCHEMA", "pg_audit"),
            ("JOB_CREATION_STORE_SCHEMA", "1store"),
        ] {
            let err = config(|n: &str| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.contains(name), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
