//! The simulated accounting system as a process of its own.
//!
//! Run with: `cargo run -p example-staging --bin staging-destination`
//! (`--bind ADDR` / `BIND_ADDR`, default `127.0.0.1:3007`;
//! `DESTINATION_LATENCY_MS`, 0 to 60000, default 0). See
//! [`example_staging::destination`] for its endpoints and faults.

use std::process::ExitCode;
use std::time::Duration;

use example_staging::destination::Destination;
use example_support::{settings, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let checked = (|| {
        let filter = settings::log_filter(env("RUST_LOG"))?;
        let addr = settings::bind_addr(&args, env("BIND_ADDR"), "127.0.0.1:3007")?;
        let latency = settings::millis(&env, "DESTINATION_LATENCY_MS", Duration::ZERO, 0..=60_000)?;
        Ok::<_, String>((filter, addr, latency))
    })();
    let (filter, addr, latency) = match checked {
        Ok(c) => c,
        Err(e) => return settings::refuse(e),
    };
    settings::init_logging(filter);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!("destination listening on http://{addr}");
    let app = Destination::new(latency).router();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown::signal())
        .await
    {
        eprintln!("error: server failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
