//! The lease engine under store faults: renewals alongside the work, final
//! writes retried while the lease is renewed, store timeouts, and what a
//! dropped caller leaves behind. Driven through `Idempotent`, the engine's
//! simplest front end (the HTTP layer's tests drive the same engine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use idempotency_core::{
    Attempt, Claim, ClaimKind, ClaimRequest, Completion, Execution, Failure, Fingerprint,
    IdempotencyStore, Idempotent, KeySpec, Lease, LeaseToken, MemoryStore, Observed, Policy,
    Record, RecordState, Resolution, RunError, StorageKey, StoreError, Timestamp,
};
use tokio::sync::Notify;

/// A `MemoryStore` with switches that make calls fail or hang.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStore,
    switches: Arc<Switches>,
}

#[derive(Default)]
struct Switches {
    fail_complete: AtomicBool,
    fail_release: AtomicBool,
    hang_renew: AtomicBool,
    hang_claim: AtomicBool,
    /// The next completion announces itself and then never answers.
    hang_next_complete: AtomicBool,
    complete_entered: Notify,
    /// Renewals announce themselves, then wait for `renew_release`.
    hold_renew: AtomicBool,
    renew_entered: Notify,
    renew_release: Notify,
    renewals: AtomicU32,
    completions: AtomicU32,
}

fn unavailable() -> StoreError {
    StoreError::unavailable(std::io::Error::other("store down (injected)"))
}

impl IdempotencyStore for Faulty {
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        if self.switches.hang_claim.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.claim(req).await
    }
    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        self.switches.completions.fetch_add(1, Ordering::SeqCst);
        if self
            .switches
            .hang_next_complete
            .swap(false, Ordering::SeqCst)
        {
            self.switches.complete_entered.notify_one();
            std::future::pending::<()>().await;
        }
        if self.switches.fail_complete.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        self.inner.complete(lease, completion).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        self.inner.fail(lease, failure).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.switches.fail_release.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        self.inner.release(lease).await
    }
    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.switches.renewals.fetch_add(1, Ordering::SeqCst);
        if self.switches.hang_renew.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.switches.hold_renew.load(Ordering::SeqCst) {
            self.switches.renew_entered.notify_one();
            self.switches.renew_release.notified().await;
        }
        self.inner.renew(lease).await
    }
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.inner.mark_corrupted(key, observed, detail).await
    }
    async fn resolve(&self, key: &StorageKey, r: Resolution) -> Result<Record, StoreError> {
        self.inner.resolve(key, r).await
    }
}

fn key(n: u32) -> StorageKey {
    KeySpec::new("engine-test")
        .derived([n.to_string()])
        .storage_key()
}

fn fp() -> Fingerprint {
    Fingerprint::of_bytes("op", b"")
}

/// A renewal that waits on the store (here: forever, until its store
/// timeout) never stops the operation from being polled: the operation
/// finishes on time.
#[tokio::test(start_paused = true)]
async fn a_renewal_waiting_on_the_store_never_stops_the_operation() {
    let store = Faulty::default();
    store.switches.hang_renew.store(true, Ordering::SeqCst);
    let policy = Policy::default()
        .lease(Duration::from_millis(300))
        .heartbeat(Duration::from_millis(50))
        .store_timeout(Duration::from_secs(30));
    let runner = Idempotent::new(store.clone(), policy);
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        runner.run(key(1), fp(), |_| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>(1)
        }),
    )
    .await
    .expect("the operation was not polled while a renewal waited");
    assert_eq!(out.unwrap(), Execution::Executed(1));
    assert!(store.switches.renewals.load(Ordering::SeqCst) >= 1);
    // The operation took 400 ms, and its answer does not wait for the hung
    // renewal either.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A completion that fails is retried with backoff while the lease keeps
/// being renewed: for longer than several leases no duplicate can take the
/// record over, and once the store recovers the result is stored and
/// replayed. The operation ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_completion_is_retried_while_the_lease_is_renewed() {
    let store = Faulty::default();
    store.switches.fail_complete.store(true, Ordering::SeqCst);
    let policy = Policy::default()
        .lease(Duration::from_millis(400))
        .heartbeat(Duration::from_millis(40));
    let runner = Idempotent::new(store.clone(), policy.clone());
    let executions = Arc::new(AtomicU32::new(0));
    let first = tokio::spawn({
        let runner = runner.clone();
        let executions = executions.clone();
        async move {
            runner
                .run(key(2), fp(), |_| async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(42)
                })
                .await
        }
    });
    // Three leases long, duplicates find the attempt in flight.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let claim = store
            .inner
            .claim(&policy.claim_request(key(2), fp()))
            .await
            .unwrap();
        assert!(matches!(claim, Claim::InFlight { .. }), "{claim:?}");
    }
    assert!(
        store.switches.completions.load(Ordering::SeqCst) >= 3,
        "retried"
    );
    store.switches.fail_complete.store(false, Ordering::SeqCst);
    assert_eq!(first.await.unwrap().unwrap(), Execution::Executed(42));
    let again = runner
        .run(key(2), fp(), |_| async { Ok::<_, std::io::Error>(0) })
        .await
        .unwrap();
    assert_eq!(again, Execution::Replayed(42));
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}

/// When the store keeps failing past the settle timeout the runner gives
/// up with the store's error, and says so.
#[tokio::test(start_paused = true)]
async fn a_completion_that_never_lands_gives_up_after_the_settle_timeout() {
    let store = Faulty::default();
    store.switches.fail_complete.store(true, Ordering::SeqCst);
    let policy = Policy::default().settle_timeout(Duration::from_secs(3));
    let runner = Idempotent::new(store.clone(), policy);
    let started = tokio::time::Instant::now();
    let out = runner
        .run(key(3), fp(), |_| async { Ok::<_, std::io::Error>(1) })
        .await;
    assert!(
        matches!(out, Err(RunError::Store(StoreError::Unavailable { .. }))),
        "{out:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_secs(4),
        "{took:?}"
    );
}

/// Dropping the run while its result is being written still writes it
/// (a spawned task takes the write over): no `Pending` record is left, the
/// next call replays the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_while_the_result_is_written_still_writes_it() {
    let store = Faulty::default();
    store
        .switches
        .hang_next_complete
        .store(true, Ordering::SeqCst);
    let runner = Idempotent::new(store.clone(), Policy::default());
    let task = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run(key(4), fp(), |_| async { Ok::<_, std::io::Error>(7) })
                .await
        }
    });
    store.switches.complete_entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let record = wait_until_settled(&store.inner, key(4)).await;
    assert!(
        matches!(record.state, RecordState::Completed(_)),
        "{record:?}"
    );
    let again = runner
        .run(key(4), fp(), |_| async { Ok::<_, std::io::Error>(0) })
        .await
        .unwrap();
    assert_eq!(again, Execution::Replayed(7));
}

/// Dropping the run while the operation runs records a retryable
/// "cancelled" failure: the next call runs again at once (attempt 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_while_the_operation_runs_fails_it_retryable() {
    let store = Faulty::default();
    let runner = Idempotent::new(store.clone(), Policy::default());
    let started = Arc::new(Notify::new());
    let task = tokio::spawn({
        let runner = runner.clone();
        let started = started.clone();
        async move {
            runner
                .run(key(5), fp(), |_| async move {
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
        }
    });
    started.notified().await;
    task.abort();
    let _ = task.await;
    let record = wait_until_settled(&store.inner, key(5)).await;
    let RecordState::Failed(f) = &record.state else {
        panic!("{record:?}")
    };
    assert!(f.retryable && f.reason.contains("cancelled"), "{f:?}");
    let again = runner
        .run(key(5), fp(), |a: Attempt| async move {
            Ok::<_, std::io::Error>(a.number())
        })
        .await
        .unwrap();
    assert_eq!(again, Execution::Executed(2));
}

/// Every store call of the runner is bounded by the store timeout.
#[tokio::test(start_paused = true)]
async fn a_hanging_store_times_out() {
    let store = Faulty::default();
    store.switches.hang_claim.store(true, Ordering::SeqCst);
    let runner = Idempotent::new(
        store,
        Policy::default().store_timeout(Duration::from_millis(200)),
    );
    let out = runner
        .run(key(6), fp(), |_| async { Ok::<_, std::io::Error>(1) })
        .await;
    assert!(
        matches!(out, Err(RunError::Store(StoreError::Timeout { .. }))),
        "{out:?}"
    );
}

/// The operation may complete the record itself (in its own transaction):
/// the runner then writes nothing, and the stored result is replayed.
#[tokio::test]
async fn an_operation_that_completes_the_record_itself() {
    let store = Faulty::default();
    let runner = Idempotent::new(store.clone(), Policy::default());
    let inner = store.clone();
    let out = runner
        .run(key(7), fp(), |a: Attempt| async move {
            let value = bytes::Bytes::from_static(b"9");
            inner
                .complete(
                    a.lease(),
                    Completion::new(idempotency_core::Outcome::Value(value)),
                )
                .await
                .unwrap();
            a.mark_completed(None);
            Ok::<_, std::io::Error>(9)
        })
        .await
        .unwrap();
    assert_eq!(out, Execution::Executed(9));
    assert_eq!(
        store.switches.completions.load(Ordering::SeqCst),
        1,
        "no second write"
    );
    let again = runner
        .run(key(7), fp(), |_| async { Ok::<_, std::io::Error>(0) })
        .await
        .unwrap();
    assert_eq!(again, Execution::Replayed(9));
}

/// A renewal queued behind the operation's own completion (PostgreSQL: the
/// renewal waits on the row lock of the operation's transaction) finds the
/// record settled and answers `LeaseLost` before the operation says it
/// completed the record. The result is recorded under the attempt's fence:
/// the run is `Executed`, not `LeaseLost`.
#[tokio::test(start_paused = true)]
async fn a_renewal_behind_the_operations_own_completion_is_no_lost_lease() {
    let store = Faulty::default();
    store.switches.hold_renew.store(true, Ordering::SeqCst);
    let policy = Policy::default()
        .lease(Duration::from_millis(300))
        .heartbeat(Duration::from_millis(50));
    let runner = Idempotent::new(store.clone(), policy);
    let faulty = store.clone();
    let out = runner
        .run(key(9), fp(), |a: Attempt| async move {
            // A heartbeat's renewal is under way and waits on the record.
            faulty.switches.renew_entered.notified().await;
            let value = bytes::Bytes::from_static(b"5");
            faulty
                .inner
                .complete(
                    a.lease(),
                    Completion::new(idempotency_core::Outcome::Value(value)),
                )
                .await
                .unwrap();
            // The transaction committed: the renewal goes on, finds the
            // record completed, and its answer reaches the engine before
            // the operation marks the attempt completed.
            faulty.switches.renew_release.notify_one();
            tokio::time::sleep(Duration::from_millis(1)).await;
            a.mark_completed(None);
            Ok::<_, std::io::Error>(5)
        })
        .await;
    assert_eq!(out.unwrap(), Execution::Executed(5));
    assert!(store.switches.renewals.load(Ordering::SeqCst) >= 1);
    let again = runner
        .run(key(9), fp(), |_| async { Ok::<_, std::io::Error>(0) })
        .await
        .unwrap();
    assert_eq!(again, Execution::Replayed(5));
}

/// One rule for "first attempt", whoever asks.
#[test]
fn first_attempt_is_one_rule() {
    let lease = |attempt| Lease {
        key: key(8),
        token: LeaseToken::new(),
        fence: u64::from(attempt),
        attempt,
        deadline: Timestamp::from_millis(1),
        lease_duration: Duration::from_secs(1),
        retention: Duration::from_secs(1),
    };
    assert!(Attempt::new(lease(1), ClaimKind::New).is_first());
    assert!(!Attempt::new(lease(2), ClaimKind::Takeover).is_first());
    assert!(!Attempt::new(lease(2), ClaimKind::Retry).is_first());
    let a = Attempt::new(lease(1), ClaimKind::New);
    assert_eq!(
        a.downstream_key("pay"),
        idempotency_core::downstream_key(&key(8), "pay")
    );
}

async fn wait_until_settled(store: &MemoryStore, key: StorageKey) -> Record {
    for _ in 0..500 {
        let record = store.get(&key).await.unwrap().expect("record exists");
        if !matches!(record.state, RecordState::Pending(_)) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the record stayed pending");
}
