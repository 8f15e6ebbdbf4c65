//! Operator abilities (`AdminStore`, `PurgeExpired`): the core's admin
//! conformance cases, each in a fresh schema, and a read of an undecodable
//! record that marks nothing.

mod common;

use std::time::Duration;

use idempotency_core::conformance::admin;
use idempotency_core::conformance::support::{claim_and_complete, request, value};
use idempotency_core::{AdminStore, IdempotencyStore, RecordState};
use idempotency_postgres::sqlx;

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

/// An operator's read shows an undecodable outcome as corrupted and leaves
/// the row as it is (a `get` would mark it).
#[tokio::test]
async fn inspect_never_marks_an_undecodable_record() {
    let Some(store) = common::store().await else {
        return;
    };
    let req = request(common::key(), 1, Duration::from_secs(60));
    claim_and_complete(&store, &req, value("v")).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".records SET outcome = '\\x09ff'::bytea WHERE key = $1",
        store.schema()
    )))
    .bind(&req.key.as_bytes()[..])
    .execute(store.pool())
    .await
    .unwrap();
    let got = store.inspect(&req.key).await.unwrap().expect("held");
    assert!(
        matches!(&got.record.state, RecordState::Corrupted(c) if c.detail.contains("codec version")),
        "{:?}",
        got.record.state
    );
    let state: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT state FROM \"{}\".records WHERE key = $1",
        store.schema()
    )))
    .bind(&req.key.as_bytes()[..])
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(state, "COMPLETED", "inspect wrote nothing");
    // The store's own read marks it.
    let read = store.get(&req.key).await.unwrap().expect("held");
    assert!(matches!(read.state, RecordState::Corrupted(_)));
}
