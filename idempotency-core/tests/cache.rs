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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use idempotency_core::cache::{InvalidationFeed, Invalidations, ReplayCacheConfig};
    use idempotency_core::conformance::cache::live_cache;
    use idempotency_core::conformance::support::{key, request};
    use idempotency_core::{
        Claim, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, MemoryStore, Observed,
        Record, Resolution, StorageKey, StoreError,
    };
    use tokio::sync::Semaphore;

    /// A `MemoryStore` whose claims wait at a gate, counted as they pass it.
    #[derive(Clone)]
    struct Gated {
        inner: MemoryStore,
        gate: Arc<Semaphore>,
        waiting: Arc<AtomicUsize>,
        claims: Arc<AtomicUsize>,
    }

    impl Invalidations for Gated {
        fn invalidations(&self) -> InvalidationFeed {
            self.inner.invalidations()
        }
    }

    impl IdempotencyStore for Gated {
        async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("open").forget();
            self.claims.fetch_add(1, Ordering::SeqCst);
            self.inner.claim(req).await
        }
        async fn complete(&self, lease: &Lease, c: Completion) -> Result<(), StoreError> {
            self.inner.complete(lease, c).await
        }
        async fn fail(&self, lease: &Lease, f: Failure) -> Result<(), StoreError> {
            self.inner.fail(lease, f).await
        }
        async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
            self.inner.release(lease).await
        }
        async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
            self.inner.renew(lease).await
        }
        async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
            self.inner.get(key).await
        }
        async fn mark_corrupted(
            &self,
            key: &StorageKey,
            o: Observed,
            d: &str,
        ) -> Result<(), StoreError> {
            self.inner.mark_corrupted(key, o, d).await
        }
        async fn resolve(&self, key: &StorageKey, r: Resolution) -> Result<Record, StoreError> {
            self.inner.resolve(key, r).await
        }
    }

    fn gated() -> Gated {
        Gated {
            inner: MemoryStore::new(),
            // Open for the warm-up claim of `live_cache`.
            gate: Arc::new(Semaphore::new(1)),
            waiting: Arc::default(),
            claims: Arc::default(),
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Duplicates that arrive while their claim is on its way send no claim
    /// of their own: one reaches the store, the rest are in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_claimed_together_send_one_claim() {
        let store = gated();
        let cache = live_cache(&store, ReplayCacheConfig::default()).await;
        let warm = store.claims.load(Ordering::SeqCst);
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
        until("the claims reach the gate", || {
            store.waiting.load(Ordering::SeqCst) >= warm + 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.gate.add_permits(100);
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
            store.claims.load(Ordering::SeqCst) - warm,
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
        let warm = store.waiting.load(Ordering::SeqCst);
        let req = request(key("dropped"), 1, Duration::from_secs(30));
        let leader = {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.claim(&req).await })
        };
        until("the leader reaches the gate", || {
            store.waiting.load(Ordering::SeqCst) > warm
        })
        .await;
        let follower = {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.claim(&req).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        store.gate.add_permits(1);
        assert!(
            matches!(follower.await.unwrap(), Claim::Acquired { .. }),
            "the follower claimed for itself"
        );
    }
}
