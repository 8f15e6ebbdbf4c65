//! `MemoryStore` specifics and runner behaviour beyond the conformance suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, DynStore, Execution, FailureClass,
    Fingerprint, IdempotencyStore, Idempotent, MemoryStore, Outcome, Policy, PurgeExpired,
    RecordState, RunError, StorageKey, StoreError,
};

fn key(i: u64) -> StorageKey {
    StorageKey::from_segments(&[b"mem".as_slice(), &i.to_be_bytes()])
}

fn req(key: StorageKey, retention: Duration) -> ClaimRequest {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of_bytes("t", b""),
        lease: Duration::from_secs(10),
        retention,
        max_attempts: 3,
    }
}

#[tokio::test]
async fn expired_records_are_swept_so_memory_stays_bounded() {
    let store = MemoryStore::with_shards(4);
    // Write 50,000 short-lived records in waves; each wave expires before the next.
    for wave in 0..10u64 {
        for i in 0..5_000u64 {
            let r = req(key(wave * 5_000 + i), Duration::from_secs(1));
            let Claim::Acquired { lease, .. } = store.claim(&r).await.unwrap() else {
                panic!("fresh key")
            };
            store
                .complete(&lease, Completion::new(Outcome::Value(Bytes::new())))
                .await
                .unwrap();
        }
        store.advance(Duration::from_secs(2));
    }
    // Without sweeping there would be 50,000 records; the amortised sweep keeps
    // it within a small multiple of one wave.
    let held = store.len();
    assert!(
        held <= 20_000,
        "held {held} records: expired ones were not swept"
    );
    // An explicit purge removes everything that expired.
    store.advance(Duration::from_secs(2));
    let purged = store.purge_expired(usize::MAX).await.unwrap();
    assert_eq!(purged as usize, held);
    assert!(store.is_empty());
}

#[tokio::test]
async fn purge_respects_batch_size_and_live_records() {
    let store = MemoryStore::new();
    for i in 0..100 {
        let r = req(key(i), Duration::from_secs(if i < 60 { 1 } else { 3600 }));
        let Claim::Acquired { lease, .. } = store.claim(&r).await.unwrap() else {
            panic!()
        };
        store
            .complete(&lease, Completion::new(Outcome::Value(Bytes::new())))
            .await
            .unwrap();
    }
    store.advance(Duration::from_secs(5));
    assert_eq!(store.purge_expired(25).await.unwrap(), 25);
    assert_eq!(store.purge_expired(1000).await.unwrap(), 35);
    assert_eq!(store.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_concurrency_many_keys_one_winner_each() {
    let store = MemoryStore::new();
    let wins = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        let wins = wins.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..2_000u64 {
                // Every task claims the same 2,000 keys in a different order.
                let k = key((i * 7 + t * 131) % 2_000);
                if let Claim::Acquired { lease, .. } =
                    store.claim(&req(k, Duration::from_secs(60))).await.unwrap()
                {
                    wins.fetch_add(1, Ordering::Relaxed);
                    store
                        .complete(&lease, Completion::new(Outcome::Value(Bytes::new())))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        wins.load(Ordering::Relaxed),
        2_000,
        "exactly one winner per key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_long_operation_exclusive() {
    let store = MemoryStore::new();
    let policy = Policy::default()
        .lease(Duration::from_millis(1_000))
        .heartbeat(Duration::from_millis(100));
    let runner = Idempotent::new(store.clone(), policy.clone());
    let k = key(1);
    let fp = Fingerprint::of_bytes("t", b"");
    let long = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run(k, fp, |_| async {
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
        }
    });
    // Well past the 1 s lease, the record is still held thanks to renewals.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let claim = store.claim(&policy.claim_request(k, fp)).await.unwrap();
    assert!(
        matches!(claim, Claim::InFlight { attempt: 1, .. }),
        "{claim:?}"
    );
    assert_eq!(long.await.unwrap().unwrap(), Execution::Executed(1));
}

#[tokio::test]
async fn a_fenced_runner_does_not_record_its_result() {
    let store = MemoryStore::new();
    let policy = Policy::default().lease(Duration::from_secs(10));
    let runner = Idempotent::new(store.clone(), policy.clone());
    let k = key(2);
    let fp = Fingerprint::of_bytes("t", b"");
    let taker = store.clone();
    let taken = std::sync::Arc::new(std::sync::Mutex::new(None));
    let taken_by = taken.clone();
    let result = runner
        .run(k, fp, |attempt| async move {
            // While this attempt runs, its lease expires and another worker takes over.
            taker.advance(Duration::from_secs(11));
            let claim = taker.claim(&policy.claim_request(k, fp)).await.unwrap();
            let Claim::Acquired {
                kind: ClaimKind::Takeover,
                lease,
            } = claim
            else {
                panic!("expected a takeover, got {claim:?}");
            };
            assert!(lease.fence > attempt.fence());
            *taken_by.lock().unwrap() = Some(lease.fence);
            Ok::<_, std::io::Error>(String::from("stale"))
        })
        .await;
    assert!(matches!(result, Err(RunError::LeaseLost)), "{result:?}");
    // The new owner's pending record is untouched.
    let rec = store.get(&k).await.unwrap().unwrap();
    assert!(matches!(rec.state, RecordState::Pending(_)));
    assert_eq!(Some(rec.fence), *taken.lock().unwrap());
}

#[tokio::test]
async fn terminal_classification_and_last_attempt() {
    let store = MemoryStore::new();
    let runner = Idempotent::new(store.clone(), Policy::default().max_attempts(2));
    let fp = Fingerprint::of_bytes("t", b"");
    // Terminal errors replay as failures and never run again.
    let k = key(3);
    let r: Result<Execution<u8>, _> = runner
        .run_classified(
            k,
            fp,
            |_| async { Err("invalid card") },
            |_| FailureClass::Terminal,
        )
        .await;
    assert!(matches!(r, Err(RunError::Operation("invalid card"))));
    let r: Result<Execution<u8>, RunError<&str>> = runner.run(k, fp, |_| async { Ok(1) }).await;
    assert!(matches!(r, Err(RunError::Failed { .. })), "{r:?}");

    // The last allowed attempt is terminal even for a retryable error.
    let k = key(4);
    for _ in 0..2 {
        let r: Result<Execution<u8>, _> = runner.run(k, fp, |_| async { Err("flaky") }).await;
        assert!(matches!(r, Err(RunError::Operation("flaky"))));
    }
    let rec = store.get(&k).await.unwrap().unwrap();
    match rec.state {
        RecordState::Failed(f) => {
            assert!(!f.retryable);
            assert!(f.reason.contains("no attempts left"), "{}", f.reason);
        }
        other => panic!("{other:?}"),
    }
}

/// A refusal classified `Release` leaves no record: the next call runs
/// afresh as attempt 1 (max attempts is never used up by refusals), every
/// run draws a greater fence, and once the operation succeeds it replays.
#[tokio::test]
async fn release_classification_leaves_no_record_and_uses_no_attempt() {
    let store = MemoryStore::new();
    let runner = Idempotent::new(store.clone(), Policy::default().max_attempts(1));
    let fp = Fingerprint::of_bytes("t", b"");
    let k = key(7);
    let mut fences = Vec::new();
    for _ in 0..3 {
        let r: Result<Execution<u8>, _> = runner
            .run_classified(
                k,
                fp,
                |attempt| {
                    fences.push((attempt.number(), attempt.fence()));
                    async { Err("not approved yet") }
                },
                |_| FailureClass::Release,
            )
            .await;
        assert!(
            matches!(r, Err(RunError::Operation("not approved yet"))),
            "{r:?}"
        );
        assert!(
            store.get(&k).await.unwrap().is_none(),
            "a released key holds no record"
        );
    }
    assert!(fences.iter().all(|(n, _)| *n == 1), "{fences:?}");
    assert!(fences.windows(2).all(|w| w[0].1 < w[1].1), "{fences:?}");

    let r: Result<Execution<u8>, RunError<&str>> = runner.run(k, fp, |_| async { Ok(9) }).await;
    assert_eq!(r.unwrap(), Execution::Executed(9));
    let r: Result<Execution<u8>, RunError<&str>> = runner.run(k, fp, |_| async { Ok(10) }).await;
    assert_eq!(r.unwrap(), Execution::Replayed(9));
}

#[tokio::test]
async fn wait_mode_returns_the_first_value() {
    let store = MemoryStore::new();
    let runner = Idempotent::new(store, Policy::default().wait(Duration::from_secs(10)));
    let k = key(5);
    let fp = Fingerprint::of_bytes("t", b"");
    let runs = Arc::new(AtomicU32::new(0));
    let first = tokio::spawn({
        let runner = runner.clone();
        let runs = runs.clone();
        async move {
            runner
                .run(k, fp, |_| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>(String::from("first"))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = runner
        .run(k, fp, |_| async {
            Ok::<_, std::io::Error>(String::from("second"))
        })
        .await
        .unwrap();
    assert_eq!(second, Execution::Replayed("first".to_string()));
    assert_eq!(
        first.await.unwrap().unwrap(),
        Execution::Executed("first".to_string())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_wait_mode_reports_in_flight() {
    let store = MemoryStore::new();
    let runner = Idempotent::new(store.clone(), Policy::default());
    let k = key(6);
    let fp = Fingerprint::of_bytes("t", b"");
    let held = store
        .claim(&Policy::default().claim_request(k, fp))
        .await
        .unwrap();
    assert!(matches!(held, Claim::Acquired { .. }));
    let r = runner
        .run(k, fp, |_| async { Ok::<_, std::io::Error>(1) })
        .await;
    match r {
        Err(RunError::InFlight { retry_after }) => {
            assert!(retry_after <= Duration::from_secs(10) && retry_after > Duration::ZERO)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dyn_store_forwards_every_operation() {
    let inner = MemoryStore::new();
    let store = DynStore::new(inner.clone());
    let r = req(key(7), Duration::from_secs(60));
    let Claim::Acquired { lease, .. } = store.claim(&r).await.unwrap() else {
        panic!()
    };
    let lease = store.renew(&lease).await.unwrap();
    store
        .complete(
            &lease,
            Completion::new(Outcome::Value(Bytes::from_static(b"1"))),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&r).await.unwrap(),
        Claim::Completed(_)
    ));
    assert!(inner.get(&r.key).await.unwrap().is_some());
    assert!(matches!(
        store
            .mark_corrupted(
                &r.key,
                idempotency_core::Observed::completed(lease.fence + 1),
                "x"
            )
            .await,
        Err(idempotency_core::StoreError::Conflict)
    ));
    store
        .mark_corrupted(
            &r.key,
            idempotency_core::Observed::completed(lease.fence),
            "x",
        )
        .await
        .unwrap();
    store
        .resolve(&r.key, idempotency_core::Resolution::Delete)
        .await
        .unwrap();
    assert_eq!(store.get(&r.key).await.unwrap(), None);
    store
        .wait_for_change(&r.key, Duration::from_secs(5))
        .await
        .unwrap();
}

fn acquired(claim: Result<Claim, StoreError>) -> idempotency_core::Lease {
    match claim {
        Ok(Claim::Acquired { lease, .. }) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn assert_capacity(claim: Result<Claim, StoreError>) {
    match claim {
        Err(e @ StoreError::Capacity { .. }) => assert!(e.is_transient(), "{e}"),
        other => panic!("expected Capacity, got {other:?}"),
    }
}

/// The byte budget bounds new records only: at capacity a new key is
/// refused (transient `Capacity`), while in-flight answers, takeovers,
/// completions (even past the budget) and replays of admitted records go
/// on; released and expired records give their bytes back.
#[tokio::test]
async fn a_full_store_refuses_new_records_but_never_a_completion() {
    // Three pending records (64 bytes each) fit, a fourth does not.
    let store = MemoryStore::builder().max_bytes(200).build();
    assert_eq!(store.max_bytes(), Some(200));
    let retention = Duration::from_secs(60);
    let [k1, k2, k3, k4] = [key(101), key(102), key(103), key(104)];
    let l1 = acquired(store.claim(&req(k1, retention)).await);
    acquired(store.claim(&req(k2, retention)).await);
    let l3 = acquired(store.claim(&req(k3, retention)).await);
    assert_eq!(store.bytes_used(), 192);
    assert_capacity(store.claim(&req(k4, retention)).await);
    assert_eq!(store.get(&k4).await.unwrap(), None, "nothing was written");

    // Existing records are never refused.
    assert!(matches!(
        store.claim(&req(k1, retention)).await.unwrap(),
        Claim::InFlight { .. }
    ));
    store.advance(Duration::from_secs(11));
    let taken = acquired(store.claim(&req(k2, retention)).await);
    assert!(taken.attempt == 2);
    let l1 = store.renew(&l1).await.unwrap();
    let body = Bytes::from(vec![1u8; 1000]);
    store
        .complete(&l1, Completion::new(Outcome::Value(body.clone())))
        .await
        .expect("a completion is accepted past the budget");
    assert_eq!(store.bytes_used(), 64 + 1000 + 64 + 64);
    match store.claim(&req(k1, retention)).await.unwrap() {
        Claim::Completed(c) => assert_eq!(c.outcome, Outcome::Value(body)),
        other => panic!("{other:?}"),
    }

    // Released bytes come back, but not enough yet.
    store.release(&l3).await.unwrap();
    assert_eq!(store.bytes_used(), 64 + 1000 + 64);
    assert_capacity(store.claim(&req(k4, retention)).await);

    // Once k1's retention and k2's lease and retention ran out, a new claim
    // sweeps them away and fits.
    store.advance(Duration::from_secs(61));
    let l4 = acquired(store.claim(&req(k4, retention)).await);
    assert_eq!(store.bytes_used(), 64);
    assert_eq!(store.len(), 1);
    store.release(&l4).await.unwrap();
    assert_eq!(store.bytes_used(), 0);
}

#[tokio::test]
async fn an_unlimited_store_never_refuses() {
    let store = MemoryStore::builder().unlimited().build();
    assert_eq!(store.max_bytes(), None);
    for i in 0..2_000 {
        acquired(
            store
                .claim(&req(key(10_000 + i), Duration::from_secs(60)))
                .await,
        );
    }
    assert_eq!(store.bytes_used(), 2_000 * 64);
    assert_eq!(
        MemoryStore::new().max_bytes(),
        Some(MemoryStore::DEFAULT_MAX_BYTES)
    );
}
