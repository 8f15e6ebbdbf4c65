//! Redis Cluster: a local three-node cluster (private processes on ports
//! ≤ 55535), the conformance suite through a cluster connection, and the
//! hash-tag rule checked against the cluster's own slot computation.

#![cfg(feature = "cluster")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{self, RedisServer};
use idempotency_core::conformance;
use idempotency_core::{IdempotencyStore, StorageKey};
use idempotency_redis::{RedisConfig, RedisStore};

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Option<Self> {
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
        Some(Self { nodes })
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn store(&self) -> RedisStore {
        RedisStore::new(
            RedisConfig::cluster(self.urls())
                .prefix(format!("cl-{}", uuid::Uuid::new_v4().simple())),
        )
        .unwrap()
    }
}

/// The cluster's slot for a key, as the server computes it.
fn keyslot(node: &RedisServer, key: &str) -> u16 {
    let reply = node.command(&format!("CLUSTER KEYSLOT {key}"));
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT reply {reply:?}"))
}

macro_rules! cases {
    ($cluster:expr; $($case:ident),* $(,)?) => {
        $(
            conformance::$case(&$cluster.store()).await;
        )*
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_node_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };

    // Hash tags: the record key hashes exactly like its storage key's hex,
    // and records spread over every node.
    let store = cluster.store();
    let mut slots = std::collections::HashSet::new();
    for i in 0..64u32 {
        let key = StorageKey::from_segments(&[i.to_be_bytes()]);
        let slot = keyslot(&cluster.nodes[0], &store.record_key(&key));
        assert_eq!(slot, keyslot(&cluster.nodes[0], &key.to_hex()));
        slots.insert(slot / 5462);
    }
    assert_eq!(slots.len(), 3, "records land on all three nodes");
    store.ping().await.unwrap();

    idempotency_core::for_each_conformance_case!(cases, cluster);

    // Keys of one store really are on several nodes.
    let mut holding = 0;
    for node in &cluster.nodes {
        let count = node.command("DBSIZE");
        if count
            .trim()
            .trim_start_matches(':')
            .parse::<u64>()
            .unwrap_or(0)
            > 0
        {
            holding += 1;
        }
    }
    assert_eq!(holding, 3, "every node holds records");

    // Operator reads and purges scan every primary.
    idempotency_core::conformance::admin::list_orders_filters_and_counts(&cluster.store()).await;
    idempotency_core::conformance::admin::count_and_purge_expired(&cluster.store()).await;
    idempotency_core::conformance::admin::inspect_reads_every_state_and_expired_records(
        &cluster.store(),
    )
    .await;

    // Waiting works across nodes: the change channel is cluster-wide.
    let a = cluster.store();
    a.wait_for_change(
        &StorageKey::from_segments(&[b"x"]),
        Duration::from_millis(1),
    )
    .await
    .unwrap();
}
