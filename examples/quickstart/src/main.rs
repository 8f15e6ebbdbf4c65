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
//! | setting | default | accepted | meaning |
//! |---|---|---|---|
//! | `--bind ADDR` / `BIND_ADDR` | `127.0.0.1:3000` | a socket address | listen address |
//! | `IDEMPOTENCY_STORE` | `memory` | `memory`, `postgres`, `redis` | the store (`postgres` needs `DATABASE_URL`; `redis` uses `REDIS_URL`) |
//! | `DATABASE_URL` | unset | a `postgres://` URL | the PostgreSQL audit trail (and store) |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | a `redis://`, `rediss://` or `unix://` URL | the Redis store |
//! | `IDEMPOTENCY_LEASE_SECS` | 10 | 1 to 3600 | lease of an executing request |
//! | `IDEMPOTENCY_RETENTION_SECS` | 86400 | 1 to 31536000 | how long responses are replayed |
//! | `IDEMPOTENCY_WAIT_SECS` | unset | 1 to 300 | duplicates wait this long for the first response instead of getting 409 |
//! | `RUST_LOG` | `info` | a `tracing` filter | log filter |
//! | `EXAMPLE_CRASH_AT`, `EXAMPLE_STOP_AT` | unset | `after_claim`, `after_effect` | fault suite only: SIGKILL (SIGSTOP) at that point of `POST /orders` |
//! | `EXAMPLE_EFFECT_LOG` | unset | a file path | fault suite only: one line per order created |
//!
//! A value outside its range is one line on stderr naming the variable and
//! what it accepts, and exit status 2, before anything is bound or connected.
//! SIGTERM and Ctrl-C stop it gracefully: in-flight requests finish, the
//! audit buffer writes what they queued, exit status 0.

use std::process::ExitCode;

use example_support::settings as support;

mod app;
mod audit;
mod openapi;
mod settings;
mod store;

const USAGE: &str = "usage: example-quickstart [--bind ADDR]

Environment (see README.md for the accepted ranges): BIND_ADDR, IDEMPOTENCY_STORE
(memory|postgres|redis), DATABASE_URL, REDIS_URL, IDEMPOTENCY_LEASE_SECS (1..=3600),
IDEMPOTENCY_RETENTION_SECS (1..=31536000), IDEMPOTENCY_WAIT_SECS (1..=300), RUST_LOG";

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
    let checked = support::log_filter(env("RUST_LOG"))
        .and_then(|filter| Ok((filter, settings::Settings::from_env(&args, env)?)));
    let (filter, settings) = match checked {
        Ok(c) => c,
        Err(e) => return support::refuse(e),
    };
    support::init_logging(filter);

    let store = match store::from_settings(&settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = example_support::ops::install_metrics();
    let addr = settings.bind;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (trail, trail_kind) = match audit::from_url(settings.database_url.as_deref()).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        store = settings.store.as_str(),
        audit = trail_kind,
        "listening on http://{addr}"
    );
    let service = app::app(store, &settings.idempotency, metrics, trail.clone());
    // On SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish...
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(example_support::shutdown::signal())
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
