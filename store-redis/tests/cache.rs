//! The replay cache over Redis, across two clients standing for two
//! processes: changes made elsewhere reach the cache through pub/sub.

mod common;

use idempotency_core::conformance::cache;
use idempotency_redis::RedisStore;

async fn two_processes() -> Option<(RedisStore, RedisStore)> {
    let a = common::store().await?;
    // Same server and prefix, its own connections and subscription.
    let b = RedisStore::new(a.config().clone()).expect("valid config");
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_elsewhere_reaches_the_cache() {
    let Some((a, b)) = two_processes().await else {
        return;
    };
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
    let Some((a, b)) = two_processes().await else {
        return;
    };
    cache::attempts_of_this_process_are_answered_here(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_ended_out_of_sight_are_forgotten() {
    let Some(a) = common::store().await else {
        return;
    };
    cache::attempts_ended_out_of_sight_are_forgotten(a).await;
}
