//! The [`AdminStore`] contract, for every store that offers it. Each case
//! needs a store value of its own over an **empty** namespace (a fresh
//! schema, a fresh prefix): listings and counts see everything in it.
//!
//! ```ignore
//! idempotency_core::conformance::admin::list_orders_filters_and_counts(&fresh_store().await).await;
//! ```

use std::time::Duration;

use bytes::Bytes;

use crate::admin::{AdminStore, ListFilter};
use crate::conformance::support::{acquire, claim_and_complete, key, request, value};
use crate::record::{Outcome, RecordState, StoredResponse};
use crate::store::{
    Claim, ClockControl, Completion, Failure, IdempotencyStore, Observed, PurgeExpired, StateKind,
};

/// What an admin conformance case needs of a store.
pub trait AdminConformanceStore:
    IdempotencyStore + AdminStore + PurgeExpired + ClockControl + Sync
{
}
impl<T: IdempotencyStore + AdminStore + PurgeExpired + ClockControl + Sync> AdminConformanceStore
    for T
{
}

const HOUR: Duration = Duration::from_secs(3600);

/// `inspect` reads every state with its data, an absent key as `None`, and
/// a record that no longer counts (which `get` hides) as expired.
pub async fn inspect_reads_every_state_and_expired_records<S: AdminConformanceStore>(store: &S) {
    assert_eq!(store.inspect(&key("admin-absent")).await.unwrap(), None);

    let live = request(key("admin-live"), 1, HOUR);
    let (lease, _) = acquire(store, &live).await;
    let got = store.inspect(&live.key).await.unwrap().expect("pending");
    assert!(!got.expired && got.lease_live() && !got.is_stuck());
    assert_eq!(got.record.fence, lease.fence);
    assert_eq!(got.record.attempts, 1);
    assert!(matches!(&got.record.state, RecordState::Pending(p) if p.token == lease.token));
    let left = got.lease_left().unwrap();
    assert!(
        left > HOUR - Duration::from_secs(60) && left <= HOUR,
        "{left:?}"
    );

    let done = request(key("admin-done"), 1, HOUR);
    let response = Outcome::Response(StoredResponse {
        status: 201,
        headers: vec![("location".into(), Bytes::from_static(b"/orders/7"))],
        body: Bytes::from_static(b"{\"id\":7}"),
        trailers: Vec::new(),
    });
    let completion = Completion::new(response.clone()).with_resource("/orders/7");
    let lease = claim_and_complete(store, &done, completion).await;
    let got = store.inspect(&done.key).await.unwrap().expect("completed");
    match &got.record.state {
        RecordState::Completed(c) => {
            assert_eq!(c.outcome, response);
            assert_eq!(c.resource.as_deref(), Some("/orders/7"));
            assert_eq!(c.fence, lease.fence);
        }
        other => panic!("expected completed, got {other:?}"),
    }
    assert_eq!(got.record.fingerprint, done.fingerprint);
    assert!(got.lease_left().is_none() && !got.expired);

    let failed = request(key("admin-failed"), 1, HOUR);
    let (lease, _) = acquire(store, &failed).await;
    store
        .fail(&lease, Failure::terminal("card declined"))
        .await
        .unwrap();
    let got = store.inspect(&failed.key).await.unwrap().expect("failed");
    assert!(
        matches!(&got.record.state, RecordState::Failed(f) if f.reason == "card declined" && !f.retryable)
    );

    let corrupted = request(key("admin-corrupted"), 1, HOUR);
    let lease = claim_and_complete(store, &corrupted, value("v")).await;
    store
        .mark_corrupted(
            &corrupted.key,
            Observed::completed(lease.fence),
            "the order is gone",
        )
        .await
        .unwrap();
    let got = store
        .inspect(&corrupted.key)
        .await
        .unwrap()
        .expect("corrupted");
    assert!(
        matches!(&got.record.state, RecordState::Corrupted(c) if c.detail.contains("the order is gone"))
    );

    // Past the retention: `get` says absent, `inspect` still shows it.
    store.advance(HOUR + Duration::from_secs(60));
    assert_eq!(store.get(&done.key).await.unwrap(), None);
    let got = store.inspect(&done.key).await.unwrap().expect("still held");
    assert!(got.expired, "a record past its retention reads as expired");
    let got = store
        .inspect(&corrupted.key)
        .await
        .unwrap()
        .expect("corrupted");
    assert!(!got.expired, "corrupted records never expire");
}

/// `list`: live records only, corrupted first, then pending with a lapsed
/// lease (stuck), live pending, failed, completed; oldest first within a
/// state; filtered by state and creation age; `matched` counts them all
/// while `limit` bounds what is returned.
pub async fn list_orders_filters_and_counts<S: AdminConformanceStore>(store: &S) {
    let empty = store.list(&ListFilter::new(10)).await.unwrap();
    assert_eq!(
        (empty.records.len(), empty.matched),
        (0, 0),
        "a fresh store is empty"
    );

    // Created an hour and a half before the rest.
    let mut old_done = request(key("list-old-done"), 1, HOUR);
    old_done.retention = 3 * HOUR;
    claim_and_complete(store, &old_done, value("old")).await;
    store.advance(Duration::from_secs(90 * 60));

    let done = request(key("list-done"), 1, HOUR);
    claim_and_complete(store, &done, value("v")).await;
    let failed = request(key("list-failed"), 1, HOUR);
    let (lease, _) = acquire(store, &failed).await;
    store
        .fail(&lease, Failure::retryable("timeout"))
        .await
        .unwrap();
    let stuck = request(key("list-stuck"), 1, Duration::from_secs(1));
    acquire(store, &stuck).await;
    let corrupted = request(key("list-corrupted"), 1, HOUR);
    let lease = claim_and_complete(store, &corrupted, value("v")).await;
    store
        .mark_corrupted(&corrupted.key, Observed::completed(lease.fence), "gone")
        .await
        .unwrap();
    store.advance(Duration::from_secs(2));
    let live = request(key("list-live"), 1, HOUR);
    acquire(store, &live).await;
    // Expired: past its retention, so never listed.
    let gone = request(key("list-gone"), 1, HOUR);
    let mut short = gone.clone();
    short.retention = Duration::from_secs(1);
    let (lease, _) = acquire(store, &short).await;
    store.complete(&lease, value("gone")).await.unwrap();
    store.advance(Duration::from_secs(2));

    let all = store.list(&ListFilter::new(10)).await.unwrap();
    let keys: Vec<_> = all.records.iter().map(|r| r.record.key).collect();
    assert_eq!(
        keys,
        [
            corrupted.key,
            stuck.key,
            live.key,
            failed.key,
            old_done.key,
            done.key
        ],
        "corrupted, stuck, live, failed, then completed oldest first"
    );
    assert_eq!(all.matched, 6);
    assert!(all.records[1].is_stuck() && all.records[2].lease_live());

    let two = store.list(&ListFilter::new(2)).await.unwrap();
    assert_eq!(two.matched, 6);
    let keys: Vec<_> = two.records.iter().map(|r| r.record.key).collect();
    assert_eq!(
        keys,
        [corrupted.key, stuck.key],
        "the limit keeps the most urgent"
    );

    let pending = store
        .list(&ListFilter::new(10).state(StateKind::Pending))
        .await
        .unwrap();
    let keys: Vec<_> = pending.records.iter().map(|r| r.record.key).collect();
    assert_eq!(keys, [stuck.key, live.key]);
    assert_eq!(pending.matched, 2);

    let old = store
        .list(&ListFilter::new(10).older_than(Duration::from_secs(3600)))
        .await
        .unwrap();
    let keys: Vec<_> = old.records.iter().map(|r| r.record.key).collect();
    assert_eq!(
        keys,
        [old_done.key],
        "only the record created 90 minutes ago"
    );

    let none = store
        .list(
            &ListFilter::new(10)
                .state(StateKind::Failed)
                .older_than(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!((none.records.len(), none.matched), (0, 0));
}

/// `count_expired` counts what a purge deletes; `purge_expired` deletes
/// expired records only (in batches), and a key purged and claimed again
/// still gets a greater fence.
pub async fn count_and_purge_expired<S: AdminConformanceStore>(store: &S) {
    assert_eq!(store.count_expired().await.unwrap(), 0);
    let mut expiring = Vec::new();
    for i in 0..3u8 {
        let mut req = request(key("purge-expiring"), i, HOUR);
        // Expired by the store's clock (moved below), never by real time:
        // a backend that evicts by TTL (Redis) keeps them meanwhile.
        req.retention = Duration::from_secs(600);
        let lease = claim_and_complete(store, &req, value("v")).await;
        expiring.push((req, lease));
    }
    let kept = request(key("purge-kept"), 1, HOUR);
    claim_and_complete(store, &kept, value("kept")).await;
    let stuck = request(key("purge-stuck"), 1, Duration::from_secs(1));
    acquire(store, &stuck).await;
    let corrupted = request(key("purge-corrupted"), 1, HOUR);
    let lease = claim_and_complete(store, &corrupted, value("v")).await;
    store
        .mark_corrupted(&corrupted.key, Observed::completed(lease.fence), "gone")
        .await
        .unwrap();
    store.advance(Duration::from_secs(1200));

    assert_eq!(store.count_expired().await.unwrap(), 3);
    assert_eq!(store.purge_expired(2).await.unwrap(), 2, "one batch of two");
    assert_eq!(store.count_expired().await.unwrap(), 1);
    assert_eq!(store.purge_expired(10).await.unwrap(), 1);
    assert_eq!(store.count_expired().await.unwrap(), 0);
    assert_eq!(store.purge_expired(10).await.unwrap(), 0);
    for (req, _) in &expiring {
        assert_eq!(store.inspect(&req.key).await.unwrap(), None, "purged");
    }
    for live in [&kept.key, &stuck.key, &corrupted.key] {
        assert!(store.inspect(live).await.unwrap().is_some(), "kept");
    }
    let (req, old) = &expiring[0];
    match store.claim(req).await.unwrap() {
        Claim::Acquired { lease, .. } => assert!(lease.fence > old.fence, "fence after a purge"),
        other => panic!("a purged key runs again, got {other:?}"),
    }
}

/// Runs every admin case, each on a store of its own from `factory`.
pub async fn all<S, F, Fut>(factory: F)
where
    S: AdminConformanceStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<S>>,
{
    let Some(s) = factory().await else { return };
    inspect_reads_every_state_and_expired_records(&s).await;
    let Some(s) = factory().await else { return };
    list_orders_filters_and_counts(&s).await;
    let Some(s) = factory().await else { return };
    count_and_purge_expired(&s).await;
}
