//! The staging service.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p example-staging`
//! and the simulated accounting system: `cargo run -p example-staging --bin staging-destination`;
//! see `examples/staging/README.md` for the curl walk-through.
//!
//! | setting | default | accepted | meaning |
//! |---|---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3004` | a socket address | listen address |
//! | `DATABASE_URL` | required | a `postgres://` URL | PostgreSQL |
//! | `STAGING_SCHEMA`, `STAGING_AUDIT_SCHEMA`, `STAGING_STORE_SCHEMA` | `staging`, `audit`, `idempotency` | 1 to 48 of `a-z0-9_` | schemas of the tables, the audit trail, the idempotency records |
//! | `STAGING_FILE_DIR` | `<temp>/example-staging-files` | a directory | uploaded files, named by their SHA-256 |
//! | `STAGING_MAX_UPLOAD_BYTES` | 20971520 | 1 to 1073741824 | largest upload |
//! | `STAGING_DESTINATION_URL` | `http://127.0.0.1:3007` | an `http://` URL | the accounting system |
//! | `STAGING_DESTINATION_TIMEOUT_MS` | 5000 | 50 to 120000 | one destination call's deadline |
//! | `IDEMPOTENCY_TTL_SECONDS` | 86400 | 60 to 31536000 | retention of post and rollback records |
//! | `IDEMPOTENCY_MAX_EXECUTIONS` | 3 | 1 to 20 | destination calls per post or rollback |
//! | `IDEMPOTENCY_CLEANUP_HOURS` | 1 | 1 to 168 | how often expired records are purged |
//! | `STAGING_QUALITY_THRESHOLD` | 70 | 0 to 100 | lowest quality score that can be approved |
//! | `STAGING_APPROVAL_TIMEOUT_HOURS` | 72 | 1 to 8760 | life of a first approval waiting for the second |
//! | `STAGING_MAX_BATCH_SIZE` | 1000 | 1 to 10000 | items per batch |
//! | `STAGING_ENABLE_DIFF_TRACKING`, `STAGING_ENABLE_APPROVAL_CHAINS`, `STAGING_ENABLE_ROLLBACK` | true | true, false | features |
//! | `STAGING_DEFAULT_PRIORITY` | 5 | 1 to 10 | priority of a staging that names none |
//! | `STAGING_COMPLIANCE_FLAGS` | `SOX,GDPR,FINANCIAL` | comma-separated, 1 to 16 of `A-Z0-9_` each | flags on every export |
//! | `STAGING_SECOND_APPROVAL_ABOVE` | 10000.00 | a decimal amount | totals above it need two approvers |
//! | `STAGING_LEASE_MS` | 10000 | 1000 to 3600000 | lease of a running post or rollback: how soon a crashed one is taken over |
//! | `STAGING_FAULT` | unset | `crash-after-booking` | tests and demonstrations only |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr and exit status 2,
//! before anything is bound or connected. SIGTERM and Ctrl-C stop it
//! gracefully: in-flight requests finish, exit status 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use example_staging::invoice::Money;
use example_staging::{Config, Fault, Service};
use example_support::{ops, settings, shutdown};

const DEFAULT_BIND: &str = "127.0.0.1:3004";

const USAGE: &str = "usage: example-staging [--bind ADDR]

Environment (see README.md): DATABASE_URL (required), BIND_ADDR, STAGING_SCHEMA,
STAGING_AUDIT_SCHEMA, STAGING_STORE_SCHEMA, STAGING_FILE_DIR, STAGING_MAX_UPLOAD_BYTES,
STAGING_DESTINATION_URL, STAGING_DESTINATION_TIMEOUT_MS, IDEMPOTENCY_TTL_SECONDS,
IDEMPOTENCY_MAX_EXECUTIONS, IDEMPOTENCY_CLEANUP_HOURS, STAGING_QUALITY_THRESHOLD,
STAGING_APPROVAL_TIMEOUT_HOURS, STAGING_MAX_BATCH_SIZE, STAGING_ENABLE_DIFF_TRACKING,
STAGING_ENABLE_APPROVAL_CHAINS, STAGING_ENABLE_ROLLBACK, STAGING_DEFAULT_PRIORITY,
STAGING_COMPLIANCE_FLAGS, STAGING_SECOND_APPROVAL_ABOVE, STAGING_LEASE_MS,
STAGING_FAULT (tests only), RUST_LOG";

/// The settings from the environment.
fn config(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let d = Config::default();
    let hours = |name: &str, default: Duration, max: u64| {
        settings::number(&var, name, default.as_secs() / 3600, 1..=max)
            .map(|h| Duration::from_secs(h * 3600))
    };
    let flags = match var("STAGING_COMPLIANCE_FLAGS") {
        None => d.compliance_flags.clone(),
        Some(v) => {
            let flags: Vec<String> = v
                .split(',')
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect();
            let ok = flags.len() <= 16
                && flags.iter().all(|f| {
                    f.len() <= 16
                        && f.bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                });
            if !ok {
                return Err(format!(
                    "STAGING_COMPLIANCE_FLAGS={v:?} is not up to 16 comma-separated flags of 1 to 16 of A-Z, 0-9 and _"
                ));
            }
            flags
        }
    };
    let above = match var("STAGING_SECOND_APPROVAL_ABOVE") {
        None => d.second_approval_above,
        Some(v) => Money::parse(&v).filter(|m| m.0 >= 0).ok_or_else(|| {
            format!("STAGING_SECOND_APPROVAL_ABOVE={v:?} is not a decimal amount such as 10000.00")
        })?,
    };
    let destination_url = match var("STAGING_DESTINATION_URL") {
        None => d.destination_url.clone(),
        Some(u) if u.starts_with("http://") && u.len() <= 200 => u.trim_end_matches('/').to_owned(),
        Some(u) => {
            return Err(format!(
                "STAGING_DESTINATION_URL={u:?} is not an http:// URL"
            ));
        }
    };
    let file_dir = var("STAGING_FILE_DIR").map_or_else(|| d.file_dir.clone(), PathBuf::from);
    Ok(Config {
        schema: settings::schema(&var, "STAGING_SCHEMA", &d.schema)?,
        audit_schema: settings::schema(&var, "STAGING_AUDIT_SCHEMA", &d.audit_schema)?,
        store_schema: settings::schema(&var, "STAGING_STORE_SCHEMA", &d.store_schema)?,
        file_dir,
        max_upload_bytes: settings::number(
            &var,
            "STAGING_MAX_UPLOAD_BYTES",
            d.max_upload_bytes,
            1..=1 << 30,
        )?,
        idempotency_ttl: Duration::from_secs(settings::number(
            &var,
            "IDEMPOTENCY_TTL_SECONDS",
            d.idempotency_ttl.as_secs(),
            60..=31_536_000,
        )?),
        max_executions: settings::number(
            &var,
            "IDEMPOTENCY_MAX_EXECUTIONS",
            d.max_executions,
            1..=20,
        )?,
        cleanup_every: hours("IDEMPOTENCY_CLEANUP_HOURS", d.cleanup_every, 168)?,
        quality_threshold: settings::number(
            &var,
            "STAGING_QUALITY_THRESHOLD",
            d.quality_threshold,
            0..=100,
        )?,
        approval_timeout: hours("STAGING_APPROVAL_TIMEOUT_HOURS", d.approval_timeout, 8_760)?,
        max_batch_size: settings::number(
            &var,
            "STAGING_MAX_BATCH_SIZE",
            d.max_batch_size,
            1..=10_000,
        )?,
        diff_tracking: settings::switch(&var, "STAGING_ENABLE_DIFF_TRACKING", d.diff_tracking)?,
        approval_chains: settings::switch(
            &var,
            "STAGING_ENABLE_APPROVAL_CHAINS",
            d.approval_chains,
        )?,
        rollback: settings::switch(&var, "STAGING_ENABLE_ROLLBACK", d.rollback)?,
        default_priority: settings::number(
            &var,
            "STAGING_DEFAULT_PRIORITY",
            d.default_priority,
            1..=10,
        )?,
        compliance_flags: flags,
        second_approval_above: above,
        destination_url,
        destination_timeout: settings::millis(
            &var,
            "STAGING_DESTINATION_TIMEOUT_MS",
            d.destination_timeout,
            50..=120_000,
        )?,
        lease: settings::millis(&var, "STAGING_LEASE_MS", d.lease, 1_000..=3_600_000)?,
        fault: settings::choice(
            &var,
            "STAGING_FAULT",
            &[("crash-after-booking", Fault::CrashAfterBooking)],
        )?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
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
        schema = config.schema,
        destination = config.destination_url,
        "listening on http://{addr}"
    );
    if let Err(e) = axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown::signal())
        .await
    {
        eprintln!("error: server failed: {e}");
        return ExitCode::FAILURE;
    }
    service.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment() {
        let c = config(|_: &str| None).unwrap();
        assert_eq!(c.quality_threshold, 70);
        assert_eq!(c.max_executions, 3);
        assert_eq!(c.approval_timeout, Duration::from_secs(72 * 3600));
        assert_eq!(c.compliance_flags, ["SOX", "GDPR", "FINANCIAL"]);
        assert!(c.rollback && c.approval_chains && c.diff_tracking);
        let c = config(|n: &str| match n {
            "STAGING_ENABLE_ROLLBACK" => Some("false".into()),
            "STAGING_COMPLIANCE_FLAGS" => Some("SOX, PCI".into()),
            "STAGING_SECOND_APPROVAL_ABOVE" => Some("500.5".into()),
            "IDEMPOTENCY_MAX_EXECUTIONS" => Some("5".into()),
            _ => None,
        })
        .unwrap();
        assert!(!c.rollback);
        assert_eq!(c.compliance_flags, ["SOX", "PCI"]);
        assert_eq!(c.second_approval_above, Money(50_050));
        assert_eq!(c.max_executions, 5);
        for (name, value) in [
            ("IDEMPOTENCY_TTL_SECONDS", "0"),
            ("IDEMPOTENCY_MAX_EXECUTIONS", "0"),
            ("IDEMPOTENCY_CLEANUP_HOURS", "soon"),
            ("STAGING_QUALITY_THRESHOLD", "101"),
            ("STAGING_APPROVAL_TIMEOUT_HOURS", "0"),
            ("STAGING_MAX_BATCH_SIZE", "-1"),
            ("STAGING_ENABLE_DIFF_TRACKING", "maybe"),
            ("STAGING_ENABLE_APPROVAL_CHAINS", "2"),
            ("STAGING_ENABLE_ROLLBACK", "yes please"),
            ("STAGING_DEFAULT_PRIORITY", "11"),
            ("STAGING_COMPLIANCE_FLAGS", "sox"),
            ("STAGING_SECOND_APPROVAL_ABOVE", "ten"),
            ("STAGING_DESTINATION_URL", "ftp://x"),
            ("STAGING_DESTINATION_TIMEOUT_MS", "1"),
            ("STAGING_MAX_UPLOAD_BYTES", "0"),
            ("STAGING_SCHEMA", "Bad-Name"),
            ("STAGING_LEASE_MS", "999"),
            ("STAGING_FAULT", "explode"),
        ] {
            let err = config(|n: &str| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.contains(name), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
