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

mod coalescing {
    use std::time::Duration;

    use idempotency_core::cache::ReplayCacheConfig;
    use idempotency_core::conformance::cache::live_cache;
    use idempotency_core::conformance::support::{GatedClaims, key, request};
    use idempotency_core::{Claim, IdempotencyStore, MemoryStore};

    /// Open for the warm-up claim of `live_cache`.
    fn gated() -> GatedClaims<MemoryStore> {
        GatedClaims::new(MemoryStore::new(), 1)
    }

    /// Duplicates that arrive while their claim is on its way send no claim
    /// of their own: one reaches the store, the rest are in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_claimed_together_send_one_claim() {
        let store = gated();
        let cache = live_cache(&store, ReplayCacheConfig::default()).await;
        let warm = store.passed();
        let req = request(key("together"), 1, Duration::from_secs(30));
        let claims: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                let req = req.clone();
                tokio::spawn(async move { cache.claim(&req).await.unwrap() })
            })
            .collect();
        // Another request under the key goes to the store on its own.
        let other = {
            let cache = cache.clone();
            let req = request(req.key, 2, Duration::from_secs(30));
            tokio::spawn(async move { cache.claim(&req).await.unwrap() })
        };
        store.until_arrived(warm + 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.open(100);
        let mut acquired = 0;
        let mut in_flight = 0;
        for c in claims {
            match c.await.unwrap() {
                Claim::Acquired { .. } => acquired += 1,
                Claim::InFlight { .. } => in_flight += 1,
                // The other request may have been first: then all of these
                // are refused as another request's key.
                Claim::Mismatch => {}
                got => panic!("unexpected {got:?}"),
            }
        }
        let other = other.await.unwrap();
        assert!(
            (acquired, in_flight) == (1, 19)
                || (matches!(other, Claim::Acquired { .. }) && acquired == 0),
            "{acquired} acquired, {in_flight} in flight, other: {other:?}"
        );
        assert_eq!(
            store.passed() - warm,
            2,
            "one claim for the twenty, one for the other request"
        );
    }

    /// A claim given up on its way (its caller dropped it) lets its
    /// duplicates send their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_claim_lets_its_duplicates_ask_the_store() {
        let store = gated();
        let cache = live_cache(&store, ReplayCacheConfig::default()).await;
        let warm = store.arrived();
        let req = request(key("dropped"), 1, Duration::from_secs(30));
        let leader = {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.claim(&req).await })
        };
        store.until_arrived(warm + 1).await;
        let follower = {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.claim(&req).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        store.open(1);
        assert!(
            matches!(follower.await.unwrap(), Claim::Acquired { .. }),
            "the follower claimed for itself"
        );
    }
}
