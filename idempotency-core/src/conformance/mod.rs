//! The store conformance suite (feature `conformance`).
//!
//! One `pub async fn` per behaviour of the [`IdempotencyStore`] contract, and
//! two macros that turn them into named tests for a store:
//!
//! ```ignore
//! // tests/conformance.rs of a store crate
//! idempotency_core::store_conformance_tests!(async { Some(my_store().await) });
//! idempotency_core::store_model_test!(async { Some(my_store().await) });
//! ```
//!
//! The async block yields `Option<S>`: `None` means "the backing service is
//! unreachable and this is not CI", and the test returns after the block
//! printed why. Every case uses fresh random keys, so cases run in parallel
//! against one shared server and never need to clear it. Stores implement
//! [`ClockControl`] so expiry is tested by moving the store's clock, never
//! by sleeping; each case should get its own store value (its own clock).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::once::{Execution, Idempotent, RunError};
use crate::policy::Policy;
use crate::record::{Lease, LeaseToken, Outcome, RecordState, StoredResponse};
use crate::store::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, Failure, IdempotencyStore, Observed,
    Resolution, StateKind, StoreError,
};

pub mod admin;
pub mod cache;
pub mod inbox;
pub mod model;
pub mod support;

pub use support::in_ci;
use support::{acquire, value};

/// What a conformance case needs of a store.
pub trait ConformanceStore: IdempotencyStore + ClockControl + Clone + 'static {}
impl<T: IdempotencyStore + ClockControl + Clone + 'static> ConformanceStore for T {}

const LEASE: Duration = Duration::from_secs(10);
const RETENTION: Duration = Duration::from_secs(3600);

/// A fresh random key.
pub fn random_key() -> StorageKey {
    StorageKey::from_segments(&[b"conformance".as_slice(), uuid::Uuid::new_v4().as_bytes()])
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint::of_bytes("conformance", &[n])
}

fn req(key: StorageKey, fingerprint: Fingerprint) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint,
        lease: LEASE,
        retention: RETENTION,
        max_attempts: 3,
    }
}

fn assert_lease_lost(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match r {
        Err(StoreError::LeaseLost) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

/// Runs a future to completion on a fresh multi-threaded runtime (used by the macros).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Claim on an absent key acquires attempt 1 with a fence of at least 1;
/// completing it makes every later claim a replay of the stored outcome.
pub async fn claim_then_replay<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::New);
    assert_eq!(lease.attempt, 1);
    assert!(lease.fence >= 1, "fences start at 1");
    assert_eq!(lease.key, key);
    store
        .complete(&lease, value("first").with_resource("/things/1"))
        .await
        .expect("complete");
    for _ in 0..3 {
        match store.claim(&r).await.expect("claim") {
            Claim::Completed(c) => {
                assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"first")));
                assert_eq!(c.resource.as_deref(), Some("/things/1"));
                assert_eq!(c.fence, lease.fence, "a replay names the completing claim");
            }
            other => panic!("expected replay, got {other:?}"),
        }
    }
    let rec = store.get(&key).await.expect("get").expect("record");
    assert_eq!(rec.state.name(), "COMPLETED");
    assert_eq!(rec.state.kind(), StateKind::Completed);
    assert_eq!((rec.fence, rec.attempts), (lease.fence, 1));
    match &rec.state {
        RecordState::Completed(c) => assert_eq!(c.fence, lease.fence),
        other => panic!("{other:?}"),
    }
    assert_eq!(rec.fingerprint, fp(1));
}

/// 64 concurrent claims of one key: exactly one winner, everyone else in flight.
pub async fn concurrent_claims_have_one_winner<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move { store.claim(&r).await }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("task").expect("claim") {
            Claim::Acquired { .. } => winners += 1,
            Claim::InFlight { attempt, .. } => assert_eq!(attempt, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one claimer must win");
}

/// A different fingerprint is a mismatch whatever the state: pending (before
/// in-flight), completed, failed retryable, failed terminal.
pub async fn fingerprint_mismatch_on_every_path<S: ConformanceStore>(store: &S) {
    // Pending, lease live: mismatch wins over in-flight.
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    assert_eq!(
        store.claim(&req(key, fp(2))).await.unwrap(),
        Claim::Mismatch
    );
    // Pending, lease expired: mismatch, and no takeover happens.
    store.advance(LEASE + Duration::from_secs(1));
    assert_eq!(
        store.claim(&req(key, fp(2))).await.unwrap(),
        Claim::Mismatch
    );
    let rec = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        rec.fence, lease.fence,
        "a mismatching claim must not take over"
    );
    // Completed.
    store.complete(&lease, value("v")).await.unwrap();
    assert_eq!(
        store.claim(&req(key, fp(2))).await.unwrap(),
        Claim::Mismatch
    );

    // Failed retryable: mismatch, not a retry.
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store
        .fail(&lease, Failure::retryable("boom"))
        .await
        .unwrap();
    assert_eq!(
        store.claim(&req(key, fp(2))).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(store.get(&key).await.unwrap().unwrap().attempts, 1);

    // Failed terminal.
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store.fail(&lease, Failure::terminal("no")).await.unwrap();
    assert_eq!(
        store.claim(&req(key, fp(2))).await.unwrap(),
        Claim::Mismatch
    );
}

/// While the lease is live, other claims are told "in flight" with a
/// `retry_after` no longer than the lease.
pub async fn in_flight_while_lease_is_live<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (_lease, _) = acquire(store, &r).await;
    store.advance(Duration::from_secs(4));
    match store.claim(&r).await.unwrap() {
        Claim::InFlight {
            retry_after,
            attempt,
        } => {
            assert_eq!(attempt, 1);
            assert!(
                retry_after <= LEASE - Duration::from_secs(3),
                "{retry_after:?}"
            );
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
}

/// A completion, failure, release or renewal with a stale lease is rejected
/// with `LeaseLost` and changes nothing.
pub async fn stale_lease_is_rejected<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (old, _) = acquire(store, &r).await;
    store.advance(LEASE + Duration::from_secs(1));
    let (new, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::Takeover);
    assert_lease_lost(store.complete(&old, value("stale")).await, "stale complete");
    assert_lease_lost(
        store.fail(&old, Failure::terminal("stale")).await,
        "stale fail",
    );
    assert_lease_lost(store.release(&old).await, "stale release");
    assert_lease_lost(store.renew(&old).await, "stale renew");
    let rec = store.get(&key).await.unwrap().unwrap();
    match &rec.state {
        RecordState::Pending(p) => assert_eq!(p.token, new.token),
        other => panic!("stale writes changed the record: {other:?}"),
    }
    // A forged lease with the right token but another fence is rejected too.
    let forged = Lease {
        fence: new.fence + 1,
        ..new.clone()
    };
    assert_lease_lost(
        store.complete(&forged, value("forged")).await,
        "wrong fence",
    );
    let forged = Lease {
        token: LeaseToken::new(),
        ..new.clone()
    };
    assert_lease_lost(
        store.complete(&forged, value("forged")).await,
        "wrong token",
    );
    // The real owner still completes.
    store.complete(&new, value("new")).await.unwrap();
    match store.claim(&r).await.unwrap() {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"new"))),
        other => panic!("{other:?}"),
    }
    // After completion, the owner's lease is spent too.
    assert_lease_lost(store.complete(&new, value("again")).await, "complete twice");
    assert_lease_lost(store.release(&new).await, "release after complete");
}

/// After the lease expires, a claim takes over: a greater fence, attempt +1, a new token.
pub async fn takeover_after_lease_expiry<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (first, _) = acquire(store, &r).await;
    store.advance(LEASE - Duration::from_secs(1));
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::InFlight { .. }
    ));
    store.advance(Duration::from_secs(2));
    let (second, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::Takeover);
    assert!(
        second.fence > first.fence,
        "a takeover fences the old owner off"
    );
    assert_eq!(second.attempt, 2);
    assert_ne!(second.token, first.token);
    assert!(second.deadline > first.deadline);
    let rec = store.get(&key).await.unwrap().unwrap();
    assert_eq!((rec.fence, rec.attempts), (second.fence, 2));
    assert_eq!(rec.state.name(), "PENDING");
}

/// An owner may complete after its lease ran out as long as nobody took over.
pub async fn late_completion_without_takeover_succeeds<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    store.advance(LEASE * 2);
    store.complete(&lease, value("late")).await.unwrap();
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Completed(_)
    ));
}

/// Retryable failures are re-claimed (greater fence, attempt +1) until the attempt
/// limit; then the failure replays.
pub async fn retryable_failure_is_reclaimed_until_max_attempts<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1)); // max_attempts = 3
    let (l1, _) = acquire(store, &r).await;
    store
        .fail(&l1, Failure::retryable("flaky 1"))
        .await
        .unwrap();
    let (l2, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::Retry);
    assert!(l2.fence > l1.fence);
    assert_eq!(l2.attempt, 2);
    store
        .fail(&l2, Failure::retryable("flaky 2"))
        .await
        .unwrap();
    let (l3, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::Retry);
    assert!(l3.fence > l2.fence);
    assert_eq!(l3.attempt, 3);
    store
        .fail(&l3, Failure::retryable("flaky 3"))
        .await
        .unwrap();
    match store.claim(&r).await.unwrap() {
        Claim::Failed(f) => assert_eq!(f.reason, "flaky 3"),
        other => panic!("attempts exhausted: expected Failed, got {other:?}"),
    }
    // A higher limit on a later claim allows one more attempt.
    let more = ClaimRequest {
        max_attempts: 4,
        ..r.clone()
    };
    let (l4, kind) = acquire(store, &more).await;
    assert_eq!((kind, l4.attempt), (ClaimKind::Retry, 4));
}

/// An expired lease on the last allowed attempt turns into a terminal failure.
pub async fn expired_lease_without_attempts_left_fails<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = ClaimRequest {
        max_attempts: 2,
        ..req(key, fp(1))
    };
    let (_l1, _) = acquire(store, &r).await;
    store.advance(LEASE + Duration::from_secs(1));
    let (l2, kind) = acquire(store, &r).await;
    assert_eq!((kind, l2.attempt), (ClaimKind::Takeover, 2));
    store.advance(LEASE + Duration::from_secs(1));
    assert!(matches!(store.claim(&r).await.unwrap(), Claim::Failed(f) if !f.retryable));
    assert!(matches!(store.claim(&r).await.unwrap(), Claim::Failed(_)));
    assert_lease_lost(
        store.complete(&l2, value("late")).await,
        "complete after abandonment",
    );
    let rec = store.get(&key).await.unwrap().unwrap();
    assert_eq!(rec.state.name(), "FAILED");
    assert_eq!(rec.attempts, 2);
}

/// A terminal failure replays to every later claim and never re-executes.
pub async fn terminal_failure_replays<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    store
        .fail(&lease, Failure::terminal("card declined"))
        .await
        .unwrap();
    for _ in 0..3 {
        match store.claim(&r).await.unwrap() {
            Claim::Failed(f) => {
                assert_eq!(f.reason, "card declined");
                assert!(!f.retryable);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().attempts, 1);
}

/// Release deletes the record: the next claim starts afresh at attempt 1.
pub async fn release_frees_the_key<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store.release(&lease).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    // Even another fingerprint may now use the key.
    let (lease, kind) = acquire(store, &req(key, fp(2))).await;
    assert_eq!((kind, lease.attempt), (ClaimKind::New, 1));
}

/// A key's fence strictly increases with every claim for the key's whole
/// life, not only within one record: after a release, after retention
/// expiry, after an operator's `resolve(Delete)` of a corrupted record, and
/// on takeover and retry. Attempts restart at 1 for every new record.
pub async fn fence_increases_across_release_expiry_and_resolve<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let mut fences = Vec::new();
    let mut claim = async |r: &ClaimRequest, expect: ClaimKind, attempt: u32, what: &str| {
        let (lease, kind) = acquire(store, r).await;
        assert_eq!((kind, lease.attempt), (expect, attempt), "{what}");
        if let Some(last) = fences.last() {
            assert!(
                lease.fence > *last,
                "{what}: fence {} after {last} (all so far: {fences:?})",
                lease.fence
            );
        }
        fences.push(lease.fence);
        lease
    };

    // claim → release → claim (even with another fingerprint).
    let first = claim(&r, ClaimKind::New, 1, "first claim").await;
    store.release(&first).await.unwrap();
    let released = claim(&req(key, fp(2)), ClaimKind::New, 1, "after release").await;
    store.release(&released).await.unwrap();

    // claim → complete → retention expires → claim.
    let done = claim(&r, ClaimKind::New, 1, "claim to complete").await;
    store.complete(&done, value("v")).await.unwrap();
    store.advance(RETENTION + Duration::from_secs(1));
    claim(&r, ClaimKind::New, 1, "after expiry").await;

    // An abandoned lease expiring with its record: a fresh claim.
    store.advance(RETENTION + LEASE + Duration::from_secs(1));
    let abandoned = claim(&r, ClaimKind::New, 1, "after an abandoned lease").await;

    // corrupted → resolve(Delete) → claim.
    store.complete(&abandoned, value("v")).await.unwrap();
    store
        .mark_corrupted(
            &key,
            Observed::completed(abandoned.fence),
            "resource vanished",
        )
        .await
        .unwrap();
    store.resolve(&key, Resolution::Delete).await.unwrap();
    let resolved = claim(&r, ClaimKind::New, 1, "after resolve(Delete)").await;

    // Within a record: takeover and retry.
    store.advance(LEASE + Duration::from_secs(1));
    let taken = claim(&r, ClaimKind::Takeover, 2, "takeover").await;
    assert_lease_lost(
        store.complete(&resolved, value("stale")).await,
        "complete by the fenced owner",
    );
    store
        .fail(&taken, Failure::retryable("flaky"))
        .await
        .unwrap();
    let retried = claim(&r, ClaimKind::Retry, 3, "retry").await;
    let rec = store.get(&key).await.unwrap().expect("record");
    assert_eq!((rec.fence, rec.attempts), (retried.fence, 3));

    // A pending record resolved away by an operator.
    store.resolve(&key, Resolution::Delete).await.unwrap();
    claim(&r, ClaimKind::New, 1, "after resolving a pending record").await;
}

/// A finished record is replayed until its retention runs out, counted from
/// completion; afterwards the key executes afresh.
pub async fn retention_expiry<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    // Retention counts from completion, not from the claim.
    store.advance(Duration::from_secs(5));
    store.complete(&lease, value("v")).await.unwrap();
    store.advance(RETENTION - Duration::from_secs(2));
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Completed(_)
    ));
    store.advance(Duration::from_secs(3));
    let (lease, kind) = acquire(store, &r).await;
    assert_eq!((kind, lease.attempt), (ClaimKind::New, 1));

    // Failures expire too.
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    store.fail(&lease, Failure::terminal("x")).await.unwrap();
    store.advance(RETENTION + Duration::from_secs(1));
    let (_, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::New);
}

/// Expiry is decided by the stored timestamp, even while the backend still
/// holds the data: an expired record reads as absent, its lease operations
/// are rejected, and a claim starts afresh.
pub async fn expiry_by_stored_timestamp<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = ClaimRequest {
        retention: Duration::from_secs(60),
        ..req(key, fp(1))
    };
    let (lease, _) = acquire(store, &r).await;
    store.complete(&lease, value("v")).await.unwrap();
    store.advance(Duration::from_secs(61));
    assert_eq!(
        store.get(&key).await.unwrap(),
        None,
        "expired record must read as absent"
    );
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Acquired {
            kind: ClaimKind::New,
            ..
        }
    ));

    // An abandoned pending record expires once both its lease and retention ran out.
    let key = random_key();
    let r = ClaimRequest {
        retention: Duration::from_secs(60),
        ..req(key, fp(1))
    };
    let (lease, _) = acquire(store, &r).await;
    store.advance(Duration::from_secs(61));
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_lease_lost(
        store.complete(&lease, value("late")).await,
        "complete after expiry",
    );
    assert_lease_lost(store.renew(&lease).await, "renew after expiry");
    let (fresh, kind) = acquire(store, &r).await;
    assert_eq!((kind, fresh.attempt), (ClaimKind::New, 1));
}

/// A corrupted record blocks every claim (any fingerprint, any time) until an
/// operator resolves it; resolution deletes it or turns it into a failure.
pub async fn corrupted_blocks_until_resolved<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    store.complete(&lease, value("v")).await.unwrap();
    store
        .mark_corrupted(
            &key,
            Observed::completed(lease.fence),
            "work order 42 no longer exists",
        )
        .await
        .unwrap();
    for fpn in [1, 2] {
        match store.claim(&req(key, fp(fpn))).await.unwrap() {
            Claim::Corrupted { detail } => assert_eq!(detail, "work order 42 no longer exists"),
            other => panic!("{other:?}"),
        }
    }
    store.advance(RETENTION * 2);
    assert!(
        matches!(store.claim(&r).await.unwrap(), Claim::Corrupted { .. }),
        "corrupted records never expire"
    );
    let rec = store.get(&key).await.unwrap().expect("still there");
    assert_eq!(rec.state.name(), "CORRUPTED");

    let before = store.resolve(&key, Resolution::Delete).await.unwrap();
    assert_eq!(before.state.name(), "CORRUPTED");
    let (_, kind) = acquire(store, &r).await;
    assert_eq!(kind, ClaimKind::New);

    // Resolve into a retryable failure: the next claim retries.
    let key = random_key();
    let r = req(key, fp(1));
    let (stuck, _) = acquire(store, &r).await;
    store
        .mark_corrupted(
            &key,
            Observed::new(StateKind::Pending, stuck.fence),
            "stuck",
        )
        .await
        .unwrap();
    store
        .resolve(&key, Resolution::Fail(Failure::retryable("operator retry")))
        .await
        .unwrap();
    let (lease, kind) = acquire(store, &r).await;
    assert_eq!((kind, lease.attempt), (ClaimKind::Retry, 2));
    assert!(lease.fence > stuck.fence);

    // Resolve a stuck pending record into a terminal failure.
    let key = random_key();
    let r = req(key, fp(1));
    let (stuck, _) = acquire(store, &r).await;
    let before = store
        .resolve(
            &key,
            Resolution::Fail(Failure::terminal("operator gave up")),
        )
        .await
        .unwrap();
    assert_eq!(before.state.name(), "PENDING");
    assert!(
        matches!(store.claim(&r).await.unwrap(), Claim::Failed(f) if f.reason == "operator gave up")
    );
    assert_lease_lost(
        store.complete(&stuck, value("late")).await,
        "complete after resolve",
    );

    // What resolve and mark_corrupted refuse.
    let key = random_key();
    assert!(matches!(
        store.resolve(&key, Resolution::Delete).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .mark_corrupted(&key, Observed::completed(1), "x")
            .await,
        Err(StoreError::NotFound)
    ));
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store.complete(&lease, value("v")).await.unwrap();
    assert!(matches!(
        store.resolve(&key, Resolution::Delete).await,
        Err(StoreError::InvalidState {
            state: "COMPLETED",
            ..
        })
    ));
}

/// `mark_corrupted` is compare-and-set on the observed state and fence: a
/// wrong fence or a wrong state is `Conflict` and leaves the record as it
/// was; the right observation marks it; an absent or expired record is
/// `NotFound`; and a late mark with an observation made before an operator's
/// resolution and a new claim is `Conflict`, never corrupting the new record.
pub async fn mark_corrupted_is_compare_and_set<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    assert!(matches!(
        store
            .mark_corrupted(&key, Observed::completed(1), "absent")
            .await,
        Err(StoreError::NotFound)
    ));
    let (lease, _) = acquire(store, &r).await;
    store.complete(&lease, value("v")).await.unwrap();
    let Claim::Completed(replayed) = store.claim(&r).await.unwrap() else {
        panic!("expected a replay");
    };
    let seen = Observed::completed(replayed.fence);
    assert_eq!(seen, Observed::of(&store.get(&key).await.unwrap().unwrap()));

    let before = store.get(&key).await.unwrap();
    for (wrong, what) in [
        (Observed::completed(replayed.fence + 1), "wrong fence"),
        (Observed::completed(replayed.fence - 1), "older fence"),
        (Observed::new(StateKind::Pending, replayed.fence), "pending"),
        (Observed::new(StateKind::Failed, replayed.fence), "failed"),
        (
            Observed::new(StateKind::Corrupted, replayed.fence),
            "corrupted",
        ),
    ] {
        match store.mark_corrupted(&key, wrong, "nope").await {
            Err(StoreError::Conflict) => {}
            other => panic!("{what}: expected Conflict, got {other:?}"),
        }
        assert_eq!(store.get(&key).await.unwrap(), before, "{what}: changed");
    }
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Completed(_)
    ));

    // The right observation marks it. It is then a corrupted record at the
    // same fence: the old observation no longer matches, the new one does.
    store.mark_corrupted(&key, seen, "gone").await.unwrap();
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Corrupted { detail } if detail == "gone"
    ));
    assert!(matches!(
        store.mark_corrupted(&key, seen, "again").await,
        Err(StoreError::Conflict)
    ));
    let corrupted = Observed::new(StateKind::Corrupted, replayed.fence);
    assert_eq!(
        Observed::of(&store.get(&key).await.unwrap().unwrap()),
        corrupted
    );
    store
        .mark_corrupted(&key, corrupted, "still gone")
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Corrupted { detail } if detail == "still gone"
    ));

    // Resolved, claimed and completed anew: a late mark with an observation
    // of the old record does not touch the new one.
    store.resolve(&key, Resolution::Delete).await.unwrap();
    let (fresh, _) = acquire(store, &r).await;
    for late in [seen, corrupted] {
        assert!(matches!(
            store.mark_corrupted(&key, late, "late").await,
            Err(StoreError::Conflict)
        ));
    }
    store.complete(&fresh, value("fresh")).await.unwrap();
    assert!(matches!(
        store.mark_corrupted(&key, seen, "late").await,
        Err(StoreError::Conflict)
    ));
    match store.claim(&r).await.unwrap() {
        Claim::Completed(c) => {
            assert_eq!(c.outcome, Outcome::Value(Bytes::from_static(b"fresh")));
            assert_eq!(c.fence, fresh.fence);
        }
        other => panic!("the new record was touched: {other:?}"),
    }

    // A pending record is marked by its pending observation (its lease is
    // then spent); an expired record is absent.
    let key = random_key();
    let r = req(key, fp(1));
    let (pending, _) = acquire(store, &r).await;
    let observed = Observed::new(StateKind::Pending, pending.fence);
    store.mark_corrupted(&key, observed, "stuck").await.unwrap();
    assert_lease_lost(
        store.complete(&pending, value("late")).await,
        "complete after the mark",
    );
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store.complete(&lease, value("v")).await.unwrap();
    store.advance(RETENTION + Duration::from_secs(1));
    assert!(matches!(
        store
            .mark_corrupted(&key, Observed::completed(lease.fence), "expired")
            .await,
        Err(StoreError::NotFound)
    ));
}

/// Only the owner renews; renewal moves the deadline to now + lease.
pub async fn lease_renewal_by_owner_only<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = req(key, fp(1));
    let (lease, _) = acquire(store, &r).await;
    for _ in 0..3 {
        store.advance(Duration::from_secs(7));
        let renewed = store.renew(&lease).await.expect("owner renews");
        assert!(renewed.deadline > lease.deadline);
        assert_eq!((renewed.token, renewed.fence), (lease.token, lease.fence));
    }
    // 21 s after the claim, a 10 s lease is still live thanks to the heartbeats.
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::InFlight { .. }
    ));
    let rec = store.get(&key).await.unwrap().unwrap();
    match rec.state {
        RecordState::Pending(p) => assert!(p.lease_deadline > lease.deadline),
        other => panic!("{other:?}"),
    }
    let intruder = Lease {
        token: LeaseToken::new(),
        ..lease.clone()
    };
    assert_lease_lost(store.renew(&intruder).await, "non-owner renew");
    store.complete(&lease, value("v")).await.unwrap();
    assert_lease_lost(store.renew(&lease).await, "renew after completion");
}

/// Outcomes round-trip intact: binary, empty and 1 MiB bodies, repeated
/// headers in order, tombstones, typed values and resource references.
pub async fn outcomes_round_trip_intact<S: ConformanceStore>(store: &S) {
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let cases = vec![
        Outcome::Response(StoredResponse {
            status: 201,
            headers: vec![
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/octet-stream"),
                ),
                ("link".into(), Bytes::from_static(b"</a>; rel=\"a\"")),
                ("link".into(), Bytes::from_static(b"</b>; rel=\"b\"")),
                ("x-bin".into(), Bytes::from_static(b"\x80\xff")),
            ],
            body: Bytes::from(all_bytes),
            trailers: Vec::new(),
        }),
        Outcome::Response(StoredResponse {
            status: 204,
            headers: vec![],
            body: Bytes::new(),
            trailers: Vec::new(),
        }),
        Outcome::Response(StoredResponse {
            status: 200,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from(big),
            trailers: Vec::new(),
        }),
        Outcome::Value(Bytes::from_static(br#"{"id":"\u0000\u00e9"}"#)),
        Outcome::Tombstone {
            status: Some(200),
            headers: vec![],
            reason: "response larger than 1 MiB".into(),
        },
        Outcome::Tombstone {
            status: Some(201),
            headers: vec![
                ("location".into(), Bytes::from_static(b"/things/7")),
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                ),
                ("link".into(), Bytes::from_static(b"</a>")),
                ("link".into(), Bytes::from_static(b"</b>")),
            ],
            reason: "response larger than 1 MiB".into(),
        },
    ];
    for outcome in cases {
        let key = random_key();
        let r = req(key, fp(1));
        let (lease, _) = acquire(store, &r).await;
        store
            .complete(
                &lease,
                Completion::new(outcome.clone()).with_resource("/r/ü"),
            )
            .await
            .unwrap();
        match store.claim(&r).await.unwrap() {
            Claim::Completed(c) => {
                assert!(c.outcome == outcome, "outcome changed in the store");
                assert_eq!(c.resource.as_deref(), Some("/r/ü"));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Failure reasons and the failed state are stored as given.
pub async fn failure_is_recorded<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let (lease, _) = acquire(store, &req(key, fp(1))).await;
    store
        .fail(&lease, Failure::retryable("upstream 503: ünïcode"))
        .await
        .unwrap();
    let rec = store.get(&key).await.unwrap().unwrap();
    match rec.state {
        RecordState::Failed(f) => {
            assert_eq!(f.reason, "upstream 503: ünïcode");
            assert!(f.retryable);
        }
        other => panic!("{other:?}"),
    }
}

/// Lease operations on a key that was never claimed are rejected.
pub async fn operations_on_absent_records<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let ghost = Lease {
        key,
        token: LeaseToken::new(),
        fence: 1,
        attempt: 1,
        deadline: crate::record::Timestamp::MAX,
        lease_duration: LEASE,
        retention: RETENTION,
    };
    assert_lease_lost(store.complete(&ghost, value("x")).await, "complete absent");
    assert_lease_lost(
        store.fail(&ghost, Failure::terminal("x")).await,
        "fail absent",
    );
    assert_lease_lost(store.release(&ghost).await, "release absent");
    assert_lease_lost(store.renew(&ghost).await, "renew absent");
    assert_eq!(store.get(&key).await.unwrap(), None);
}

/// `wait_for_change` returns once the record leaves `Pending`; a waiter
/// using [`crate::claim_with_wait`] receives the completed outcome.
pub async fn waiters_wake_on_completion<S: ConformanceStore>(store: &S) {
    let key = random_key();
    let r = ClaimRequest {
        lease: Duration::from_secs(60),
        ..req(key, fp(1))
    };
    let (lease, _) = acquire(store, &r).await;
    let waiter = {
        let store = store.clone();
        let r = r.clone();
        tokio::spawn(async move {
            crate::claim_with_wait(&store, &r, Some(Duration::from_secs(30))).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.complete(&lease, value("done")).await.unwrap();
    let claim = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter must wake well before its 30 s timeout")
        .unwrap()
        .unwrap();
    assert!(
        matches!(claim, Claim::Completed(c) if c.outcome == Outcome::Value(Bytes::from_static(b"done")))
    );

    // A waiter on a released record gets the lease itself.
    let key = random_key();
    let r = ClaimRequest {
        lease: Duration::from_secs(60),
        ..req(key, fp(1))
    };
    let (lease, _) = acquire(store, &r).await;
    let waiter = {
        let store = store.clone();
        let r = r.clone();
        tokio::spawn(async move {
            crate::claim_with_wait(&store, &r, Some(Duration::from_secs(30))).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release(&lease).await.unwrap();
    let claim = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter must wake")
        .unwrap()
        .unwrap();
    assert!(matches!(
        claim,
        Claim::Acquired {
            kind: ClaimKind::New,
            ..
        }
    ));

    // With nothing pending, waiting returns at once-ish, and a timeout is honoured.
    store
        .wait_for_change(&random_key(), Duration::from_secs(30))
        .await
        .unwrap();
    let key = random_key();
    let r = req(key, fp(1));
    let _held = acquire(store, &r).await;
    let claim = crate::claim_with_wait(store, &r, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(matches!(claim, Claim::InFlight { .. }));
}

/// The once-per-key runner over this store: 32 concurrent runs of one key
/// execute the operation once, and every caller gets the same value.
pub async fn runner_executes_once_under_concurrency<S: ConformanceStore + Sync>(store: &S) {
    let key = random_key();
    let runs = Arc::new(AtomicU32::new(0));
    let runner = Idempotent::new(
        store.clone(),
        Policy::default().wait(Duration::from_secs(20)),
    );
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let runner = runner.clone();
        let runs = runs.clone();
        tasks.push(tokio::spawn(async move {
            runner
                .run(key, fp(1), |_attempt| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, std::io::Error>(format!("made by {i}"))
                })
                .await
        }));
    }
    let mut values = HashSet::new();
    let mut executed = 0;
    for t in tasks {
        match t.await.unwrap().expect("run") {
            Execution::Executed(v) => {
                executed += 1;
                values.insert(v);
            }
            Execution::Replayed(v) => {
                values.insert(v);
            }
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the operation ran more than once"
    );
    assert_eq!(executed, 1);
    assert_eq!(values.len(), 1, "every caller sees the first value");
}

/// The runner records operation errors as retryable failures and retries
/// them on the next call; a stored value of the wrong type marks the record
/// corrupted.
pub async fn runner_failures_and_corruption<S: ConformanceStore + Sync>(store: &S) {
    let key = random_key();
    let runner = Idempotent::new(store.clone(), Policy::default().max_attempts(2));
    let first: Result<Execution<u32>, _> = runner
        .run(key, fp(1), |_| async { Err::<u32, _>("downstream down") })
        .await;
    assert!(matches!(first, Err(RunError::Operation("downstream down"))));
    let second = runner
        .run(key, fp(1), |a| async move {
            assert_eq!(a.number(), 2);
            assert!(!a.is_first());
            Ok::<u32, &str>(7)
        })
        .await
        .unwrap();
    assert_eq!(second, Execution::Executed(7));
    // Asking for another type than the one stored is a corrupted record.
    let wrong: Result<Execution<Vec<String>>, RunError<&str>> =
        runner.run(key, fp(1), |_| async { Ok(vec![]) }).await;
    assert!(
        matches!(wrong, Err(RunError::Corrupted { .. })),
        "{wrong:?}"
    );
    assert!(matches!(
        runner
            .run::<u32, &str, _, _>(key, fp(1), |_| async { Ok(1) })
            .await,
        Err(RunError::Corrupted { .. })
    ));
    assert!(matches!(
        runner
            .run::<u32, &str, _, _>(key, fp(2), |_| async { Ok(1) })
            .await,
        Err(RunError::Corrupted { .. })
    ));
    // Another fingerprint on a healthy key is a mismatch.
    let key = random_key();
    runner
        .run::<u32, &str, _, _>(key, fp(1), |_| async { Ok(1) })
        .await
        .unwrap();
    assert!(matches!(
        runner
            .run::<u32, &str, _, _>(key, fp(2), |_| async { Ok(1) })
            .await,
        Err(RunError::Mismatch)
    ));
}

/// Dropping a run mid-operation marks the attempt failed (retryable), so the
/// next run executes again at once instead of waiting for the lease.
pub async fn runner_cancellation_marks_attempt_failed<S: ConformanceStore + Sync>(store: &S) {
    let key = random_key();
    let runner = Idempotent::new(
        store.clone(),
        Policy::default().lease(Duration::from_secs(60)),
    );
    let started = Arc::new(tokio::sync::Notify::new());
    let run = {
        let runner = runner.clone();
        let started = started.clone();
        tokio::spawn(async move {
            runner
                .run::<u32, &str, _, _>(key, fp(1), |_| async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(1)
                })
                .await
        })
    };
    started.notified().await;
    run.abort();
    let _ = run.await;
    let mut state = None;
    for _ in 0..200 {
        let rec = store.get(&key).await.unwrap().unwrap();
        if rec.state.name() != "PENDING" {
            state = Some(rec.state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match state {
        Some(RecordState::Failed(f)) => assert!(f.retryable, "{f:?}"),
        other => panic!("cancelled run should leave a retryable failure, got {other:?}"),
    }
    let again = runner
        .run::<u32, &str, _, _>(key, fp(1), |a| async move {
            assert_eq!(a.number(), 2);
            Ok(2)
        })
        .await
        .unwrap();
    assert_eq!(again, Execution::Executed(2));
}

/// Calls a macro with the name of every conformance case, so code that
/// runs the cases one by one (a cluster test, another harness) cannot miss
/// one added later.
///
/// `for_each_conformance_case!(m)` (`m` a macro in scope) expands to
/// `m! { case, case, ... }`; `for_each_conformance_case!(m, tokens...)` to
/// `m! { tokens...; case, ... }`,
/// which hands the callback what it needs from the call site:
///
/// ```ignore
/// macro_rules! run_all {
///     ($store:expr; $($case:ident),* $(,)?) => {
///         $( idempotency_core::conformance::$case(&$store).await; )*
///     };
/// }
/// idempotency_core::for_each_conformance_case!(run_all, my_store());
/// ```
///
/// Each name is a `pub async fn` of [`conformance`](crate::conformance)
/// taking `&S` where `S: ConformanceStore + Sync`.
#[macro_export]
macro_rules! for_each_conformance_case {
    (@call [$($callback:tt)+] [$($args:tt)*]) => {
        $($callback)+! { $($args)*
            claim_then_replay,
            concurrent_claims_have_one_winner,
            fingerprint_mismatch_on_every_path,
            in_flight_while_lease_is_live,
            stale_lease_is_rejected,
            takeover_after_lease_expiry,
            late_completion_without_takeover_succeeds,
            retryable_failure_is_reclaimed_until_max_attempts,
            expired_lease_without_attempts_left_fails,
            terminal_failure_replays,
            release_frees_the_key,
            fence_increases_across_release_expiry_and_resolve,
            retention_expiry,
            expiry_by_stored_timestamp,
            corrupted_blocks_until_resolved,
            mark_corrupted_is_compare_and_set,
            lease_renewal_by_owner_only,
            outcomes_round_trip_intact,
            failure_is_recorded,
            operations_on_absent_records,
            waiters_wake_on_completion,
            runner_executes_once_under_concurrency,
            runner_failures_and_corruption,
            runner_cancellation_marks_attempt_failed,
        }
    };
    ($callback:ident) => {
        $crate::for_each_conformance_case! { @call [$callback] [] }
    };
    ($callback:ident, $($args:tt)+) => {
        $crate::for_each_conformance_case! { @call [$callback] [$($args)+ ;] }
    };
}

/// Turns every conformance case into a named `#[test]` for a store.
///
/// `$factory` is an async block yielding `Option<S>` where
/// `S: IdempotencyStore + ClockControl + Clone + Sync + 'static`; `None` skips
/// the case (the block should print why, and panic instead under CI). The
/// cases are those of [`for_each_conformance_case!`](crate::for_each_conformance_case).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::for_each_conformance_case! {
            @call [$crate::store_conformance_tests] [@cases $factory;]
        }
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::block_on(async {
                    let Some(store) = $factory.await else { return };
                    $crate::conformance::$case(&store).await;
                });
            }
        )*
    };
}

/// Runs the model-based lifecycle test ([`model`]) as a `#[test]` for a store.
///
/// `$factory` is an async block yielding `Option<S>`, as for
/// [`store_conformance_tests!`](crate::store_conformance_tests).
#[macro_export]
macro_rules! store_model_test {
    ($factory:expr) => {
        #[test]
        fn model_based_lifecycle() {
            let rt = ::std::sync::Arc::new($crate::conformance::model::runtime());
            let Some(store) = rt.block_on($factory) else {
                return;
            };
            $crate::conformance::model::check(&rt, &store);
        }
    };
}

#[cfg(test)]
mod tests {
    macro_rules! names {
        ($($case:ident),* $(,)?) => {
            [$(stringify!($case)),*]
        };
    }

    /// A case written in this file but missing from the list would run
    /// nowhere: every `pub async fn` taking a store is listed.
    #[test]
    fn every_case_is_listed() {
        let mut listed: Vec<&str> = crate::for_each_conformance_case!(names).to_vec();
        let mut defined: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter(|l| l.contains("ConformanceStore"))
            .filter_map(|l| l.split('<').next())
            .collect();
        listed.sort_unstable();
        defined.sort_unstable();
        assert_eq!(listed, defined);
    }
}
