//! Coherence of a [`ReplayCache`] over a store's change feed, for every
//! store that implements [`Invalidations`]: pass two store values that
//! share one backend the way two processes do (two pools, two clients).
//!
//! ```ignore
//! idempotency_core::conformance::cache::a_change_elsewhere_reaches_the_cache(a, b).await;
//! ```

use std::time::Duration;

use crate::cache::{Invalidations, ReplayCache, ReplayCacheConfig};
use crate::conformance::support::{acquire, claim_and_complete, key, request, value};
use crate::engine::claim_with_wait;
use crate::record::Outcome;
use crate::store::{Claim, ClaimKind, ClaimRequest, IdempotencyStore, Observed};
use crate::{Fingerprint, Idempotent, Policy};

/// How long a notification may take to cross processes in these tests.
const WITHIN: Duration = Duration::from_secs(5);

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A cache following `a`, once its feed is live.
pub async fn live_cache<S>(a: &S, config: ReplayCacheConfig) -> ReplayCache<S>
where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let cache = ReplayCache::new(a.clone(), config);
    // The first call starts following the feed; its claim is let go.
    if let Ok(Claim::Acquired { lease, .. }) = cache
        .claim(&request(key("cache-warm"), 1, Duration::from_secs(1)))
        .await
    {
        let _ = cache.release(&lease).await;
    }
    eventually("the feed is live", || cache.is_live()).await;
    cache
}

/// Claims `req` through `cache` until its replay is cached, checking every
/// answer with `check`. A store may announce a completion as a change (Redis
/// announces every write), and a fill racing that announcement is discarded,
/// so the first replay is not always the one cached.
pub async fn replay_until_cached<S>(
    cache: &ReplayCache<S>,
    req: &ClaimRequest,
    check: impl Fn(Claim),
) where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        check(cache.claim(req).await.unwrap());
        if !cache.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay is cached within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replays are served from the cache; another request with the same key is
/// refused by the store as before; a record marked corrupted through `b`
/// (another process) leaves `a`'s cache and is answered as corrupted.
///
/// # Panics
///
/// When the cache serves anything the store would not.
pub async fn a_change_elsewhere_reaches_the_cache<S>(a: S, b: S)
where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let cache = live_cache(&a, ReplayCacheConfig::default()).await;
    let req = request(key("cache"), 1, Duration::from_secs(30));
    let lease = claim_and_complete(&a, &req, value("one")).await;
    let expect_one = |claim: Claim| match claim {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value("one".into())),
        other => panic!("expected the replay, got {other:?}"),
    };
    replay_until_cached(&cache, &req, expect_one).await;
    assert_eq!(cache.len(), 1, "the replay is cached");
    expect_one(cache.claim(&req).await.unwrap());
    // Another payload under the key: the store's answer, not the cache's.
    let other = request(req.key, 2, Duration::from_secs(30));
    assert_eq!(cache.claim(&other).await.unwrap(), Claim::Mismatch);

    b.mark_corrupted(
        &req.key,
        Observed::completed(lease.fence),
        "found unusable elsewhere",
    )
    .await
    .unwrap();
    eventually("the cache drops the changed record", || cache.is_empty()).await;
    match cache.claim(&req).await.unwrap() {
        Claim::Corrupted { detail } => assert_eq!(detail, "found unusable elsewhere"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert!(cache.is_empty(), "a corrupted record is never cached");
}

/// An entry stops being served `expiry_margin` before its record's expiry,
/// whatever `max_age` says.
///
/// # Panics
///
/// When an entry is served into its expiry margin.
pub async fn an_entry_stops_before_its_record_expires<S>(a: S)
where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let config = ReplayCacheConfig::default().expiry_margin(Duration::from_secs(2));
    let cache = live_cache(&a, config).await;
    let mut req = request(key("cache-expiry"), 1, Duration::from_secs(30));
    req.retention = Duration::from_secs(3);
    claim_and_complete(&a, &req, value("short")).await;
    replay_until_cached(&cache, &req, |c| assert!(matches!(c, Claim::Completed(_)))).await;
    assert_eq!(cache.len(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Inside the margin: the store answers (its record has not expired), and
    // nothing is cached again.
    assert!(matches!(
        cache.claim(&req).await.unwrap(),
        Claim::Completed(_)
    ));
    assert!(
        cache.is_empty(),
        "no entry is served into its expiry margin"
    );
}

/// While this process executes a key, its duplicates here are answered here
/// (in flight for the time left on the lease, or, waiting, woken by the
/// attempt's end) and never by the store; another fingerprint and another
/// process get the store's answer; the outcome this process writes is
/// replayed to both afterwards.
///
/// # Panics
///
/// When a duplicate is answered otherwise than the store would.
pub async fn attempts_of_this_process_are_answered_here<S>(a: S, b: S)
where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let cache = live_cache(&a, ReplayCacheConfig::default()).await;
    let elsewhere = live_cache(&b, ReplayCacheConfig::default()).await;
    let req = request(key("flight"), 1, Duration::from_secs(30));
    let (lease, _) = acquire(&cache, &req).await;
    assert_eq!(cache.local_attempts(), 1);
    match cache.claim(&req).await.unwrap() {
        Claim::InFlight {
            retry_after,
            attempt,
        } => {
            assert!(
                retry_after <= Duration::from_secs(30) && retry_after > Duration::from_secs(20),
                "{retry_after:?}"
            );
            assert_eq!(attempt, lease.attempt);
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
    let other = request(req.key, 2, Duration::from_secs(30));
    assert_eq!(cache.claim(&other).await.unwrap(), Claim::Mismatch);
    assert!(
        matches!(elsewhere.claim(&req).await.unwrap(), Claim::InFlight { .. }),
        "another process asks the store"
    );

    let waiter = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let answer = claim_with_wait(&cache, &req, Some(Duration::from_secs(20))).await;
            (answer.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    cache.complete(&lease, value("flown")).await.unwrap();
    let (answer, waited) = waiter.await.unwrap();
    let expect = |claim: Claim| match claim {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value("flown".into())),
        other => panic!("expected the replay, got {other:?}"),
    };
    expect(answer);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the end: {waited:?}"
    );
    assert_eq!(cache.local_attempts(), 0);
    expect(cache.claim(&req).await.unwrap());
    replay_until_cached(&elsewhere, &req, expect).await;
}

/// An attempt whose end the cache did not see (its record written by the
/// operation's own transaction, or by hand) is forgotten when the engine
/// says it ended, and in any case when its lease runs out; one the engine
/// drives leaves nothing behind.
///
/// # Panics
///
/// When a forgotten attempt still answers for its key.
pub async fn attempts_ended_out_of_sight_are_forgotten<S>(a: S)
where
    S: IdempotencyStore + Invalidations + Clone + 'static,
{
    let cache = live_cache(&a, ReplayCacheConfig::default()).await;

    let req = request(key("flight-ended"), 1, Duration::from_secs(30));
    let (lease, _) = acquire(&cache, &req).await;
    a.release(&lease).await.unwrap();
    assert!(
        matches!(cache.claim(&req).await.unwrap(), Claim::InFlight { .. }),
        "until told, the attempt is still this process's"
    );
    cache.attempt_ended(&lease);
    assert_eq!(cache.local_attempts(), 0);
    let (again, kind) = acquire(&cache, &req).await;
    assert_eq!(kind, ClaimKind::New);
    cache.release(&again).await.unwrap();
    assert_eq!(cache.local_attempts(), 0);

    // A lease that runs out: the store decides again (a takeover).
    let short = request(key("flight-expired"), 1, Duration::from_millis(300));
    let (_stalled, _) = acquire(&cache, &short).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (taken, kind) = acquire(&cache, &short).await;
    assert_eq!(kind, ClaimKind::Takeover);
    cache.complete(&taken, value("taken over")).await.unwrap();

    // The engine reports every attempt's end.
    let run = Idempotent::new(cache.clone(), Policy::default());
    let done = run
        .run(
            key("flight-engine"),
            Fingerprint::of_bytes("support", b"engine"),
            |_attempt| async { Ok::<_, std::io::Error>(7u32) },
        )
        .await
        .unwrap();
    assert_eq!(done.into_inner(), 7);
    assert_eq!(cache.local_attempts(), 0, "the engine ended its attempt");
}
