//! The simulated SMS/e-mail gateway of the appointments example, as its own
//! server: `cargo run -p example-appointments --bin appointments-gateway`
//! (`--bind ADDR` / `GATEWAY_BIND`, default `127.0.0.1:3006`).

use std::net::SocketAddr;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let raw = match args.as_slice() {
        [] => std::env::var("GATEWAY_BIND").unwrap_or_else(|_| "127.0.0.1:3006".into()),
        [flag, addr] if flag == "--bind" => addr.clone(),
        _ => {
            eprintln!("usage: appointments-gateway [--bind ADDR]");
            return ExitCode::from(2);
        }
    };
    let Ok(addr) = raw.parse::<SocketAddr>() else {
        eprintln!("error: {raw:?} is not a socket address such as 127.0.0.1:3006");
        return ExitCode::from(2);
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("gateway listening on http://{addr}");
    let gateway = example_appointments::gateway::Gateway::default();
    match axum::serve(listener, gateway.router()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
