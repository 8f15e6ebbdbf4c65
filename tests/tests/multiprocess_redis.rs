//! Two quickstart processes on one Redis (`IDEMPOTENCY_STORE=redis`): 200
//! keys, each sent 50 times concurrently and split across both processes,
//! create exactly one order per key in total; every other answer is a 409
//! or a marked replay of the first.
//!
//! The test builds the quickstart binary (`cargo build -p example-quickstart`)
//! and starts it twice on free loopback ports.

mod common;

use std::process::{Command, Stdio};

use common::{free_port, quickstart_binary};
use idempotency_core::conformance::support::{in_ci, redis_url};
use idempotency_redis::{RedisConfig, RedisStore};

async fn redis_reachable() -> bool {
    let url = redis_url();
    let reachable = match RedisStore::new(RedisConfig::new(url.clone())) {
        Ok(store) => store.ping().await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        assert!(!in_ci(), "Redis at {url} unreachable under CI");
        println!("skipping: redis unreachable");
    }
    reachable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_order_per_key() {
    if !redis_reachable().await {
        return;
    }
    common::two_processes_one_order_per_key(&[
        ("IDEMPOTENCY_STORE", "redis".to_owned()),
        ("REDIS_URL", redis_url()),
    ])
    .await;
}

/// A Redis that does not answer is reported at start-up, with a non-zero exit.
#[test]
fn redis_store_startup_failure_exits_nonzero() {
    let bin = quickstart_binary();
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let out = Command::new(&bin)
        .env("IDEMPOTENCY_STORE", "redis")
        .env("REDIS_URL", &closed)
        .env("BIND_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run quickstart");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Redis at"), "{stderr}");
}
