//! The binary on a Redis Cluster: a private three-node cluster (processes
//! of this test on free loopback ports), records on every node, listed,
//! inspected, released and resolved through `--cluster`.

mod common;

/// The store crate's private server processes, shared rather than copied.
#[path = "../../store-redis/tests/common/server.rs"]
#[allow(dead_code, unreachable_pub)]
mod server;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Target, key};
use idempotency_core::conformance::support::in_ci;
use idempotency_redis::{RedisConfig, RedisStore};
use server::RedisServer;

fn cluster() -> Option<Vec<RedisServer>> {
    if !server::available() {
        return None;
    }
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let status = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success(), "redis-cli --cluster create failed");
    let start = Instant::now();
    while !nodes
        .iter()
        .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cluster never became ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_on_a_cluster() {
    let Some(nodes) = cluster() else { return };
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let prefix = format!("adm-cl-{}", uuid::Uuid::new_v4().simple());
    let store = RedisStore::new(RedisConfig::cluster(urls.clone()).prefix(&prefix)).unwrap();
    let t = Target::on_redis(
        store,
        vec![
            "--store".into(),
            "redis".into(),
            "--cluster".into(),
            "--redis-url".into(),
            urls.join(","),
            "--prefix".into(),
            prefix,
        ],
    );
    let done: Vec<_> = (0..12).map(|_| key()).collect();
    for k in &done {
        t.completed(*k).await;
    }
    let stuck = key();
    t.stuck(stuck).await;
    let corrupted = key();
    t.corrupted(corrupted).await;
    // The records are on every node.
    let holding = nodes
        .iter()
        .filter(|n| n.command("DBSIZE").trim().trim_start_matches(':') != "0")
        .count();
    assert_eq!(holding, 3);

    let v = t.run(&["list", "--json"]).assert_code(0).json();
    assert_eq!(v["matched"], 14);
    assert_eq!(v["records"][0]["key"], corrupted.to_hex());
    assert_eq!(v["records"][1]["key"], stuck.to_hex());
    assert_eq!(v["location"]["cluster"], true);

    for k in &done {
        let v = t
            .run(&["inspect", &k.to_hex(), "--json"])
            .assert_code(0)
            .json();
        assert_eq!(v["state"], "COMPLETED");
    }
    t.run(&["release", &stuck.to_hex(), "--yes", "--reason", "crashed"])
        .assert_code(0);
    t.run(&[
        "resolve",
        &corrupted.to_hex(),
        "--to",
        "absent",
        "--yes",
        "--reason",
        "gone",
    ])
    .assert_code(0);
    let v = t.run(&["list", "--json"]).assert_code(0).json();
    assert_eq!(v["matched"], 12);
    t.run(&["purge", "--expired", "--dry-run"]).assert_code(1);
}
