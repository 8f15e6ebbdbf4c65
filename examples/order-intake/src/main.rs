//! The order-intake service.
//!
//! Run with: `cargo run -p example-order-intake` (PostgreSQL and Temporal
//! from `scripts/services.sh`); see `examples/order-intake/README.md` for the
//! curl walk-through.
//!
//! | setting | default (`local`) | accepted | meaning |
//! |---|---|---|---|
//! | `OMS_PROFILE` | `local` | `local`, `dev`, `prod` | `local`: every setting has a default for this machine; `dev`: `DATABASE_URL` must be set, the rest may default; `prod`: every setting marked required must be set explicitly, `OMS_FAULT` is refused, logs are JSON |
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3002` | a socket address | listen address (required in `prod`) |
//! | `--run PARTS` / `OMS_RUN` | `api,relay,worker` | a non-empty subset | the parts this process runs |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` | a `postgres://` URL | PostgreSQL (required in `dev` and `prod`) |
//! | `TEMPORAL_ADDRESS` | `127.0.0.1:7233` | `host:port` | the Temporal frontend (required in `prod`) |
//! | `TEMPORAL_NAMESPACE` | `default` | 1 to 200 of `a-z A-Z 0-9 - _ .` | the namespace (required in `prod`) |
//! | `OMS_TASK_QUEUE` | `order-intake` | 1 to 200 of `a-z A-Z 0-9 - _ .` | the workers' task queue |
//! | `OMS_SCHEMA` | `order_intake` | `[a-z_][a-z0-9_]*`, ≤ 48 bytes | the order tables' schema |
//! | `OMS_IDEMPOTENCY_SCHEMA` | `order_intake_idempotency` | as `OMS_SCHEMA` | the activities' idempotency records |
//! | `OMS_SHIP_COUNTRIES` | `US,CA,GB,DE,FR` | ISO 3166-1 alpha-2 codes | where orders ship; others fail validation (required in `prod`) |
//! | `OMS_ACTIVITY_TIMEOUT_MS` | 30000 | 500 to 600000 | an activity attempt's start-to-close timeout |
//! | `OMS_RELAY_POLL_MS` | 500 | 10 to 60000 | how often the relay looks for unstarted workflows |
//! | `OMS_FAULT` | unset | `crash-after-activity-commit`, `crash-before-workflow-start`, `crash-after-workflow-start` | tests only |
//! | `LOG_FORMAT` | `text` (`json` in `prod`) | `text`, `json` | log lines |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr and exit status 2,
//! before anything is bound or connected; an unreachable database or
//! Temporal is one line naming the setting and exit status 1. SIGTERM and
//! Ctrl-C stop it gracefully: in-flight requests and activities finish,
//! exit 0. No secret has a default: credentials come in `DATABASE_URL`.

use std::net::SocketAddr;
use std::process::ExitCode;

use example_order_intake::{Config, Fault, Parts, Service};
use example_support::{ops, settings, shutdown};
use tokio::sync::watch;

const DEFAULT_BIND: &str = "127.0.0.1:3002";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_TEMPORAL: &str = "127.0.0.1:7233";

const USAGE: &str = "usage: example-order-intake [--bind ADDR] [--run api,relay,worker]

Environment (see README.md): OMS_PROFILE (local|dev|prod), DATABASE_URL, TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, BIND_ADDR, OMS_RUN, OMS_TASK_QUEUE, OMS_SCHEMA, OMS_IDEMPOTENCY_SCHEMA,
OMS_SHIP_COUNTRIES, OMS_ACTIVITY_TIMEOUT_MS, OMS_RELAY_POLL_MS, OMS_FAULT (tests only),
LOG_FORMAT (text|json), RUST_LOG";

/// `OMS_PROFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Local,
    Dev,
    Prod,
}

/// Everything `main` needs, validated.
#[derive(Debug)]
struct Settings {
    profile: Profile,
    addr: SocketAddr,
    database_url: String,
    temporal_address: String,
    json_logs: bool,
    config: Config,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The settings from the arguments and environment.
fn settings(argv: &[String], var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let [bind, run] = settings::flags(argv, ["--bind", "--run"])?;
    let profile = settings::choice(
        &var,
        "OMS_PROFILE",
        &[
            ("local", Profile::Local),
            ("dev", Profile::Dev),
            ("prod", Profile::Prod),
        ],
    )?
    .unwrap_or(Profile::Local);
    // In `prod` nothing required may fall back to a default.
    let required = |name: &str, default: &str| -> Result<String, String> {
        match var(name) {
            Some(v) => Ok(v),
            None if profile == Profile::Prod => Err(format!(
                "{name} is required with OMS_PROFILE=prod (no default is used in prod)"
            )),
            None => Ok(default.to_owned()),
        }
    };
    let bind_env = match &bind {
        Some(_) => None,
        None => Some(required("BIND_ADDR", DEFAULT_BIND)?),
    };
    let addr = settings::listen_addr(bind, bind_env, DEFAULT_BIND)?;
    let database_url = match (var("DATABASE_URL"), profile) {
        (Some(u), _) => u,
        (None, Profile::Local) => DEFAULT_DATABASE_URL.to_owned(),
        (None, p) => {
            return Err(format!(
                "DATABASE_URL is required with OMS_PROFILE={}",
                if p == Profile::Dev { "dev" } else { "prod" }
            ));
        }
    };
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err("DATABASE_URL is not a postgres:// URL".into());
    }
    let temporal_address = required("TEMPORAL_ADDRESS", DEFAULT_TEMPORAL)?;
    let ok_address = temporal_address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !temporal_address.contains('/');
    if !ok_address {
        return Err(format!(
            "TEMPORAL_ADDRESS={temporal_address:?} is not host:port such as {DEFAULT_TEMPORAL}"
        ));
    }
    let mut config = Config {
        namespace: required("TEMPORAL_NAMESPACE", "default")?,
        ..Config::default()
    };
    if !is_name(&config.namespace) {
        return Err(format!(
            "TEMPORAL_NAMESPACE={:?} is not 1 to 200 of a-z, A-Z, 0-9, '-', '_', '.'",
            config.namespace
        ));
    }
    if let Some(q) = var("OMS_TASK_QUEUE") {
        if !is_name(&q) {
            return Err(format!(
                "OMS_TASK_QUEUE={q:?} is not 1 to 200 of a-z, A-Z, 0-9, '-', '_', '.'"
            ));
        }
        config.task_queue = q;
    }
    config.schema = settings::schema(&var, "OMS_SCHEMA", &config.schema)?;
    config.idempotency_schema =
        settings::schema(&var, "OMS_IDEMPOTENCY_SCHEMA", &config.idempotency_schema)?;
    if config.schema == config.idempotency_schema {
        return Err("OMS_SCHEMA and OMS_IDEMPOTENCY_SCHEMA must differ".into());
    }
    if let Some(parts) = run.or_else(|| var("OMS_RUN")) {
        config.parts = Parts::parse(&parts).map_err(|e| format!("--run/OMS_RUN: {e}"))?;
    }
    let countries = required("OMS_SHIP_COUNTRIES", "US,CA,GB,DE,FR")?;
    let list: Vec<String> = countries.split(',').map(|c| c.trim().to_owned()).collect();
    if list
        .iter()
        .any(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(format!(
            "OMS_SHIP_COUNTRIES={countries:?} is not a comma-separated list of ISO 3166-1 alpha-2 codes such as US,CA"
        ));
    }
    config.ship_countries = list;
    config.activity_timeout = settings::millis(
        &var,
        "OMS_ACTIVITY_TIMEOUT_MS",
        config.activity_timeout,
        500..=600_000,
    )?;
    config.relay_poll =
        settings::millis(&var, "OMS_RELAY_POLL_MS", config.relay_poll, 10..=60_000)?;
    config.fault = match var("OMS_FAULT") {
        None => None,
        Some(_) if profile == Profile::Prod => {
            return Err("OMS_FAULT is refused with OMS_PROFILE=prod".into());
        }
        Some(f) => Some(Fault::parse(&f).map_err(|e| format!("OMS_FAULT={e}"))?),
    };
    let json_logs = settings::choice(&var, "LOG_FORMAT", &[("text", false), ("json", true)])?
        .unwrap_or(profile == Profile::Prod);
    Ok(Settings {
        profile,
        addr,
        database_url,
        temporal_address,
        json_logs,
        config,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let filter = match settings::log_filter(std::env::var("RUST_LOG").ok()) {
        Ok(f) => f,
        Err(e) => return settings::refuse(e),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let s = match settings(&argv, env) {
        Ok(s) => s,
        Err(e) => return settings::refuse(e),
    };
    let options = match settings::postgres_url(Some(s.database_url.clone())) {
        Ok(o) => o,
        Err(e) => return settings::refuse(e),
    };
    if s.json_logs {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .init();
    } else {
        settings::init_logging(filter);
    }
    // Every statement of the service's own finds its tables first in its
    // schema.
    let options = options.options([("search_path", s.config.schema.as_str())]);
    let pool = match settings::connect(options, 20).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client =
        match example_order_intake::temporal::connect(&s.temporal_address, &s.config.namespace)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    let metrics = ops::install_metrics();
    let mut service = match Service::start(pool, client, s.config.clone(), metrics).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(s.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {} (BIND_ADDR): {e}", s.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(s.addr);
    tracing::info!(
        profile = ?s.profile,
        parts = ?s.config.parts,
        taskQueue = %s.config.task_queue,
        temporal = %s.temporal_address,
        "listening on http://{addr}"
    );
    // One signal stops the HTTP server and the worker.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(
        axum::serve(listener, service.router())
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let worker = service.run_worker(stopped(stop_rx.clone())).await;
    let served = server.await;
    service.shutdown().await;
    let mut code = ExitCode::SUCCESS;
    if let Err(e) = worker {
        eprintln!("error: {e}");
        code = ExitCode::FAILURE;
    }
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: server failed: {e}");
            code = ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: server task failed: {e}");
            code = ExitCode::FAILURE;
        }
    }
    tracing::info!("stopped");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn local_needs_nothing() {
        let s = settings(&[], |_| None).unwrap();
        assert_eq!(s.profile, Profile::Local);
        assert_eq!(s.addr.to_string(), DEFAULT_BIND);
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.temporal_address, DEFAULT_TEMPORAL);
        assert_eq!(s.config.task_queue, "order-intake");
        assert_eq!(s.config.parts, Parts::ALL);
        assert!(!s.json_logs);
        let s = settings(&argv(&["--bind", "127.0.0.1:0", "--run=worker"]), |n| {
            (n == "OMS_FAULT").then(|| "crash-after-activity-commit".into())
        })
        .unwrap();
        assert_eq!(s.addr.port(), 0);
        assert!(s.config.parts.worker && !s.config.parts.api);
        assert_eq!(s.config.fault, Some(Fault::CrashAfterActivityCommit));
    }

    #[test]
    fn dev_needs_the_database_and_prod_everything() {
        let dev = |n: &str| (n == "OMS_PROFILE").then(|| "dev".to_owned());
        let err = settings(&[], dev).unwrap_err();
        assert!(err.contains("DATABASE_URL"), "{err}");
        let full = |n: &str| {
            Some(
                match n {
                    "OMS_PROFILE" => "prod",
                    "DATABASE_URL" => "postgres://app@db:5432/oms",
                    "TEMPORAL_ADDRESS" => "temporal:7233",
                    "TEMPORAL_NAMESPACE" => "oms",
                    "BIND_ADDR" => "0.0.0.0:8080",
                    "OMS_SHIP_COUNTRIES" => "US",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let s = settings(&[], full).unwrap();
        assert_eq!(s.profile, Profile::Prod);
        assert!(s.json_logs);
        for missing in [
            "DATABASE_URL",
            "TEMPORAL_ADDRESS",
            "TEMPORAL_NAMESPACE",
            "BIND_ADDR",
            "OMS_SHIP_COUNTRIES",
        ] {
            let err =
                settings(&[], |n: &str| if n == missing { None } else { full(n) }).unwrap_err();
            assert!(err.contains(missing), "{missing}: {err}");
        }
        let err = settings(&[], |n: &str| {
            if n == "OMS_FAULT" {
                Some("crash-before-workflow-start".into())
            } else {
                full(n)
            }
        })
        .unwrap_err();
        assert!(err.contains("OMS_FAULT"), "{err}");
    }

    #[test]
    fn every_bad_value_is_one_line_naming_its_setting() {
        for (name, value) in [
            ("OMS_PROFILE", "staging"),
            ("BIND_ADDR", "nowhere"),
            ("DATABASE_URL", "mysql://x"),
            ("TEMPORAL_ADDRESS", "http://x:7233"),
            ("TEMPORAL_NAMESPACE", "a b"),
            ("OMS_TASK_QUEUE", ""),
            ("OMS_SCHEMA", "Orders"),
            ("OMS_IDEMPOTENCY_SCHEMA", "order_intake"),
            ("OMS_RUN", "api,everything"),
            ("OMS_SHIP_COUNTRIES", "USA"),
            ("OMS_ACTIVITY_TIMEOUT_MS", "10"),
            ("OMS_RELAY_POLL_MS", "soon"),
            ("OMS_FAULT", "explode"),
            ("LOG_FORMAT", "xml"),
        ] {
            let err = settings(&[], |n: &str| (n == name).then(|| value.to_owned()))
                .err()
                .unwrap_or_else(|| panic!("{name}={value} accepted"));
            assert!(err.contains(name), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(settings(&argv(&["--port", "1"]), |_| None).is_err());
    }
}
