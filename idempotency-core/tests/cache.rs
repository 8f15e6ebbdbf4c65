//! The replay cache over `MemoryStore`: two caches over clones of one store
//! stand for two processes sharing it.
#![cfg(feature = "conformance")]

use idempotency_core::MemoryStore;
use idempotency_core::conformance::cache;

#[tokio::test]
async fn a_change_elsewhere_reaches_the_cache() {
    let store = MemoryStore::new();
    cache::a_change_elsewhere_reaches_the_cache(store.clone(), store).await;
}

#[tokio::test]
async fn an_entry_stops_before_its_record_expires() {
    cache::an_entry_stops_before_its_record_expires(MemoryStore::new()).await;
}

#[tokio::test]
async fn attempts_of_this_process_are_answered_here() {
    let store = MemoryStore::new();
    cache::attempts_of_this_process_are_answered_here(store.clone(), store).await;
}

#[tokio::test]
async fn attempts_ended_out_of_sight_are_forgotten() {
    cache::attempts_ended_out_of_sight_are_forgotten(MemoryStore::new()).await;
}
