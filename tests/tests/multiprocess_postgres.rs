//! Two quickstart processes on one PostgreSQL database
//! (`IDEMPOTENCY_STORE=postgres`): 200 keys, each sent 50 times concurrently
//! and split across both processes, create exactly one order per key in
//! total; every other answer is a 409 or a marked replay of the first.
//!
//! The test builds the quickstart binary (`cargo build -p example-quickstart`)
//! and starts it twice on free loopback ports.

mod common;

use std::process::{Command, Stdio};

use common::{free_port, quickstart_binary};
use idempotency_core::conformance::support::{database_url, in_ci};
use idempotency_postgres::sqlx;

async fn database_reachable() -> bool {
    let url = database_url();
    let reachable = match sqlx::PgPool::connect(&url).await {
        Ok(pool) => sqlx::query("SELECT 1").execute(&pool).await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        assert!(!in_ci(), "PostgreSQL at {url} unreachable under CI");
        println!("skipping: postgres unreachable");
    }
    reachable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_order_per_key() {
    if !database_reachable().await {
        return;
    }
    common::two_processes_one_order_per_key(&[
        ("IDEMPOTENCY_STORE", "postgres".to_owned()),
        ("DATABASE_URL", database_url()),
    ])
    .await;
}

/// Start-up failures of the postgres store are reported and exit non-zero:
/// no `DATABASE_URL`, or a database that cannot be reached.
#[test]
fn postgres_store_startup_failures_exit_nonzero() {
    let bin = quickstart_binary();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        cmd.env_remove("DATABASE_URL")
            .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "off")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run quickstart")
    };
    let out = run(&[("IDEMPOTENCY_STORE", "postgres")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));

    let closed = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let out = run(&[("IDEMPOTENCY_STORE", "postgres"), ("DATABASE_URL", &closed)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
