//! The replay cache over PostgreSQL, across two pools standing for two
//! processes: changes made elsewhere reach the cache through `LISTEN`.

mod common;

use std::time::Duration;

use idempotency_core::cache::ReplayCacheConfig;
use idempotency_core::conformance::cache;
use idempotency_core::conformance::support::{claim_and_complete, value};
use idempotency_core::{Claim, IdempotencyStore};
use idempotency_postgres::sqlx::{self, AssertSqlSafe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_elsewhere_reaches_the_cache() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    cache::a_change_elsewhere_reaches_the_cache(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stops_before_its_record_expires() {
    let Some(a) = common::store().await else {
        return;
    };
    cache::an_entry_stops_before_its_record_expires(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_this_process_are_answered_here() {
    let Some(a) = common::store().await else {
        return;
    };
    let b = common::other_process(&a).await;
    cache::attempts_of_this_process_are_answered_here(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_ended_out_of_sight_are_forgotten() {
    let Some(a) = common::store().await else {
        return;
    };
    cache::attempts_ended_out_of_sight_are_forgotten(a).await;
}

/// An operator deleting a completed record by hand (psql, from any
/// session) invalidates it in every cache: the next request runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_delete_reaches_the_cache() {
    let Some(a) = common::store().await else {
        return;
    };
    let cache = cache::live_cache(&a, ReplayCacheConfig::default()).await;
    let req = common::request(common::key(), 1, Duration::from_secs(30));
    claim_and_complete(&a, &req, value("kept")).await;
    cache::replay_until_cached(&cache, &req, |c| assert!(matches!(c, Claim::Completed(_)))).await;
    assert_eq!(cache.len(), 1);
    let deleted = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM \"{}\".records WHERE key = $1",
        a.schema()
    )))
    .bind(&req.key.as_bytes()[..])
    .execute(a.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cache.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delete never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        cache.claim(&req).await.unwrap(),
        Claim::Acquired { .. }
    ));
}
