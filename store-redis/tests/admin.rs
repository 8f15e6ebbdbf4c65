//! Operator abilities (`AdminStore`, `PurgeExpired` over `SCAN`): the
//! core's admin conformance cases, each under a fresh prefix, in both
//! single-server modes, and a read of an undecodable record that marks
//! nothing. The cluster case is in `tests/cluster.rs`.

mod common;

use std::time::Duration;

use idempotency_core::conformance::admin;
use idempotency_core::conformance::support::{claim_and_complete, key, request, value};
use idempotency_core::{AdminStore, IdempotencyStore, ListFilter, RecordState};
use idempotency_redis::ConnectionMode;
use idempotency_redis::redis::AsyncCommands as _;

#[tokio::test]
async fn inspect_reads_every_state_and_expired_records() {
    let Some(store) = common::store().await else {
        return;
    };
    admin::inspect_reads_every_state_and_expired_records(&store).await;
}

#[tokio::test]
async fn list_orders_filters_and_counts() {
    let Some(store) = common::store().await else {
        return;
    };
    admin::list_orders_filters_and_counts(&store).await;
}

#[tokio::test]
async fn count_and_purge_expired() {
    let Some(store) = common::store().await else {
        return;
    };
    admin::count_and_purge_expired(&store).await;
}

#[tokio::test]
async fn pooled_mode_lists_and_purges_too() {
    let Some(store) = common::store_with(ConnectionMode::Pooled).await else {
        return;
    };
    admin::list_orders_filters_and_counts(&store).await;
    let Some(store) = common::store_with(ConnectionMode::Pooled).await else {
        return;
    };
    admin::count_and_purge_expired(&store).await;
}

/// More records than one `SCAN` page holds, under a prefix with glob
/// characters: every one is found, and none of another prefix.
#[tokio::test]
async fn a_listing_walks_every_page_and_only_its_prefix() {
    let Some(other) = common::store().await else {
        return;
    };
    let prefix = format!("adm*[?]{}", uuid::Uuid::new_v4().simple());
    let store = idempotency_redis::RedisStore::new(
        idempotency_redis::RedisConfig::new(common::redis_url()).prefix(&prefix),
    )
    .unwrap();
    let n = 600;
    for i in 0..n {
        let req = request(key("page"), 1, Duration::from_secs(60));
        claim_and_complete(&store, &req, value(&i.to_string())).await;
    }
    claim_and_complete(
        &other,
        &request(key("elsewhere"), 1, Duration::from_secs(60)),
        value("x"),
    )
    .await;
    let listing = store.list(&ListFilter::new(10)).await.unwrap();
    assert_eq!(listing.matched, n);
    assert_eq!(listing.records.len(), 10);
    let theirs = other.list(&ListFilter::new(10)).await.unwrap();
    assert_eq!(theirs.matched, 1);
}

/// An operator's read shows an undecodable outcome as corrupted and leaves
/// the hash as it is (a `get` would mark it).
#[tokio::test]
async fn inspect_never_marks_an_undecodable_record() {
    let Some(store) = common::store().await else {
        return;
    };
    let req = request(key("undecodable"), 1, Duration::from_secs(60));
    claim_and_complete(&store, &req, value("v")).await;
    let client = idempotency_redis::redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let redis_key = store.record_key(&req.key);
    let _: () = conn
        .hset(&redis_key, "o", b"\x09\xff".as_slice())
        .await
        .unwrap();
    let got = store.inspect(&req.key).await.unwrap().expect("held");
    assert!(
        matches!(&got.record.state, RecordState::Corrupted(c) if c.detail.contains("codec version")),
        "{:?}",
        got.record.state
    );
    let state: String = conn.hget(&redis_key, "s").await.unwrap();
    assert_eq!(state, "C", "inspect wrote nothing");
    let read = store.get(&req.key).await.unwrap().expect("held");
    assert!(matches!(read.state, RecordState::Corrupted(_)));
}
