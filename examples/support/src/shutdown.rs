//! Graceful shutdown: the signal a service stops on.

/// Completes on Ctrl-C or SIGTERM (what `docker stop`, systemd and
/// Kubernetes send). Pass it to `axum::serve(..).with_graceful_shutdown`:
/// the listener stops accepting and in-flight requests finish.
///
/// # Cancel safety
///
/// Dropping it unregisters nothing that matters: a later call listens again.
pub async fn signal() {
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
    tracing::info!("shutting down: finishing in-flight requests");
}
