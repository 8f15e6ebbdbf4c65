//! The appointments service.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p example-appointments`
//! (and the gateway: `cargo run -p example-appointments --bin appointments-gateway`);
//! see `examples/appointments/README.md` for the curl walk-through.
//!
//! | setting | default | accepted | meaning |
//! |---|---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3005` | a socket address | listen address |
//! | `--run PARTS` / `APPOINTMENTS_RUN` | `api,relay,consumer,dispatcher` | a non-empty subset | the parts this process runs |
//! | `DATABASE_URL` | required | a `postgres://` URL | PostgreSQL (schemas `appointments`, `work_execution`, `idempotency`) |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | a `nats://` URL | NATS with JetStream |
//! | `APPOINTMENTS_INSTANCE` | `appointments` | 1 to 32 of `a-z 0-9 - _` | stream name and subject prefix |
//! | `APPOINTMENTS_CONSUMER` | `<instance>-work-execution` | 1 to 64 of `a-z A-Z 0-9 - _` | durable consumer (and inbox) name |
//! | `APPOINTMENTS_GATEWAY_URL` | `http://127.0.0.1:3006` | an `http://` URL | the SMS/e-mail gateway |
//! | `APPOINTMENTS_ACK_WAIT_MS` | 30000 | 100 to 600000 | JetStream's redelivery timeout |
//! | `APPOINTMENTS_NAK_DELAY_MS` | 500 | 10 to 60000 | redelivery delay of an out-of-order or failed event |
//! | `APPOINTMENTS_RETRY_DELAY_MS` | 2000 | 10 to 600000 | delay before a notification is retried |
//! | `APPOINTMENTS_PAUSE` | unset | `consumer-before-commit`, `consumer-after-commit` | tests only |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//!
//! A value outside its range is one line on stderr and exit status 2,
//! before anything is bound or connected. SIGTERM and Ctrl-C stop it
//! gracefully: in-flight requests finish, background parts stop, exit 0.

use std::net::SocketAddr;
use std::process::ExitCode;

use example_appointments::{Config, Parts, Pause, Service, is_instance_name};
use example_support::{ops, settings, shutdown};

const DEFAULT_BIND: &str = "127.0.0.1:3005";

const USAGE: &str =
    "usage: example-appointments [--bind ADDR] [--run api,relay,consumer,dispatcher]

Environment (see README.md): DATABASE_URL (required), NATS_URL, BIND_ADDR, APPOINTMENTS_RUN,
APPOINTMENTS_INSTANCE, APPOINTMENTS_CONSUMER, APPOINTMENTS_GATEWAY_URL, APPOINTMENTS_ACK_WAIT_MS,
APPOINTMENTS_NAK_DELAY_MS, APPOINTMENTS_RETRY_DELAY_MS, APPOINTMENTS_PAUSE (tests only), RUST_LOG";

/// The settings from the arguments and environment.
fn read_settings(
    argv: &[String],
    var: impl Fn(&str) -> Option<String>,
) -> Result<(SocketAddr, Config, String), String> {
    let [bind, run] = settings::flags(argv, ["--bind", "--run"])?;
    let addr = settings::listen_addr(bind, var("BIND_ADDR"), DEFAULT_BIND)?;
    let instance = var("APPOINTMENTS_INSTANCE").unwrap_or_else(|| "appointments".into());
    if !is_instance_name(&instance) {
        return Err(format!(
            "APPOINTMENTS_INSTANCE={instance:?} is not 1 to 32 of a-z, 0-9, '-' or '_'"
        ));
    }
    let mut config = Config::new(&instance);
    if let Some(parts) = run.or_else(|| var("APPOINTMENTS_RUN")) {
        config.parts = Parts::parse(&parts).map_err(|e| format!("--run/APPOINTMENTS_RUN: {e}"))?;
    }
    if let Some(durable) = var("APPOINTMENTS_CONSUMER") {
        let ok = !durable.is_empty()
            && durable.len() <= 64
            && durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "APPOINTMENTS_CONSUMER={durable:?} is not 1 to 64 of a-z, A-Z, 0-9, '-' or '_'"
            ));
        }
        config.consumer.durable = durable;
    }
    if let Some(url) = var("APPOINTMENTS_GATEWAY_URL") {
        if !url.starts_with("http://") || url.len() > 200 {
            return Err(format!(
                "APPOINTMENTS_GATEWAY_URL={url:?} is not an http:// URL"
            ));
        }
        config.gateway_url = url;
    }
    config.consumer.ack_wait = settings::millis(
        &var,
        "APPOINTMENTS_ACK_WAIT_MS",
        config.consumer.ack_wait,
        100..=600_000,
    )?;
    config.consumer.nak_delay = settings::millis(
        &var,
        "APPOINTMENTS_NAK_DELAY_MS",
        config.consumer.nak_delay,
        10..=60_000,
    )?;
    config.retry_delay = settings::millis(
        &var,
        "APPOINTMENTS_RETRY_DELAY_MS",
        config.retry_delay,
        10..=600_000,
    )?;
    config.consumer.pause = settings::choice(
        &var,
        "APPOINTMENTS_PAUSE",
        &[
            ("consumer-before-commit", Pause::BeforeCommit),
            ("consumer-after-commit", Pause::AfterCommit),
        ],
    )?;
    let nats = var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    if !nats.starts_with("nats://") {
        return Err(format!("NATS_URL={nats:?} is not a nats:// URL"));
    }
    Ok((addr, config, nats))
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let checked = (|| {
        let filter = settings::log_filter(env("RUST_LOG"))?;
        let (addr, config, nats_url) = read_settings(&argv, env)?;
        let options = settings::postgres_url(env("DATABASE_URL"))?;
        Ok::<_, String>((filter, addr, config, nats_url, options))
    })();
    let (filter, addr, config, nats_url, options) = match checked {
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
    let nats = match async_nats::connect(&nats_url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: cannot reach NATS at {nats_url} ({e}); start it with scripts/services.sh nats"
            );
            return ExitCode::FAILURE;
        }
    };
    let metrics = ops::install_metrics();
    let service = match Service::start(pool, nats, config.clone(), metrics).await {
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
    tracing::info!(instance = %config.instance, parts = ?config.parts, "listening on http://{addr}");
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

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn settings_and_their_errors() {
        let none = |_: &str| None;
        let (addr, c, nats) = read_settings(&[], none).unwrap();
        assert_eq!(addr.to_string(), DEFAULT_BIND);
        assert_eq!(c.instance, "appointments");
        assert_eq!(c.consumer.durable, "appointments-work-execution");
        assert_eq!(c.parts, Parts::ALL);
        assert_eq!(nats, "nats://127.0.0.1:4222");
        let (addr, c, _) = read_settings(
            &argv(&["--bind", "127.0.0.1:0", "--run=api,relay"]),
            |n: &str| (n == "APPOINTMENTS_PAUSE").then(|| "consumer-after-commit".into()),
        )
        .unwrap();
        assert_eq!(addr.port(), 0);
        assert!(c.parts.api && c.parts.relay && !c.parts.consumer);
        assert_eq!(c.consumer.pause, Some(Pause::AfterCommit));
        for (name, value) in [
            ("BIND_ADDR", "nowhere"),
            ("APPOINTMENTS_INSTANCE", "Has.Dots"),
            ("APPOINTMENTS_RUN", "api,everything"),
            ("APPOINTMENTS_CONSUMER", "a b"),
            ("APPOINTMENTS_GATEWAY_URL", "ftp://x"),
            ("APPOINTMENTS_ACK_WAIT_MS", "5"),
            ("APPOINTMENTS_NAK_DELAY_MS", "soon"),
            ("APPOINTMENTS_RETRY_DELAY_MS", "0"),
            ("APPOINTMENTS_PAUSE", "explode"),
            ("NATS_URL", "http://x"),
        ] {
            let err =
                read_settings(&[], |n: &str| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.contains(name), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(read_settings(&argv(&["--port", "1"]), none).is_err());
    }
}
