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

use std::ops::RangeInclusive;
use std::process::ExitCode;

use example_job_creation::{Config, Fault, Service};
use example_support::{ops, settings, shutdown};
use idempotency_postgres::natural::Isolation;

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

/// The settings from the environment.
fn config(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let defaults = Config::default();
    let isolation = settings::choice(
        &var,
        "JOB_CREATION_ISOLATION",
        &[
            ("read-committed", Isolation::ReadCommitted),
            ("repeatable-read", Isolation::RepeatableRead),
            ("serializable", Isolation::Serializable),
        ],
    )?
    .unwrap_or(Isolation::ReadCommitted);
    let worker = settings::choice(&var, "JOB_CREATION_WORKER", &[("on", true), ("off", false)])?
        .unwrap_or(true);
    let fault = settings::choice(
        &var,
        "JOB_CREATION_FAULT",
        &[("insert", Fault::Insert), ("stage", Fault::Stage)],
    )?;
    Ok(Config {
        schema: settings::schema(&var, "JOB_CREATION_SCHEMA", &defaults.schema)?,
        audit_schema: settings::schema(&var, "JOB_CREATION_AUDIT_SCHEMA", &defaults.audit_schema)?,
        store_schema: settings::schema(&var, "JOB_CREATION_STORE_SCHEMA", &defaults.store_schema)?,
        isolation,
        worker,
        lease: settings::millis(&var, "JOB_CREATION_LEASE_MS", defaults.lease, LEASE_MS)?,
        stage_time: settings::millis(&var, "JOB_CREATION_STAGE_MS", defaults.stage_time, STAGE_MS)?,
        poll: settings::millis(&var, "JOB_CREATION_POLL_MS", defaults.poll, POLL_MS)?,
        retry_delay: settings::millis(
            &var,
            "JOB_CREATION_RETRY_MS",
            defaults.retry_delay,
            RETRY_MS,
        )?,
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
    let pool = match settings::connect(options, 16).await {
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
        schema = config.schema,
        isolation = ?config.isolation,
        worker = config.worker,
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
