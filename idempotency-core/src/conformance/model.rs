//! Model-based test of the record lifecycle, with `proptest-state-machine`.
//!
//! A reference model of the DESIGN.md lifecycle (written independently of
//! any store) generates random sequences of claim / complete / fail /
//! release / renew / corrupt (with a right or a wrong observation of the
//! record: marks are compare-and-set) / resolve / get / advance-time over
//! three keys and two fingerprints. Each sequence is applied in lockstep to the real
//! store, and every answer (decision kind, attempt, lease errors, state read
//! back) must match the model. Fences are the store's to choose, so the model
//! tracks which claim a record's fence belongs to, and the runner checks the
//! store's numbers against that: a record reads back with the fence of its
//! latest claim, and every claim of a key gets a fence greater than any
//! earlier claim of that key, in any earlier record life (across release,
//! expiry and resolve). Failing sequences are shrunk to a minimal
//! reproduction.
//!
//! Time moves in steps of at least 10 s against a 60 s lease and 600 s
//! retention, so the real time that passes while a sequence runs (well under
//! a second) never changes an outcome.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use proptest_state_machine::ReferenceStateMachine;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::Lease;
use crate::record::Outcome;
use crate::store::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completion, Failure, IdempotencyStore, Observed,
    Resolution, StateKind, StoreError,
};

const KEYS: usize = 3;
const LEASE_S: u64 = 60;
const RETENTION_S: u64 = 600;
const MAX_ATTEMPTS: u32 = 3;

/// One step of a generated sequence.
#[derive(Debug, Clone)]
pub enum Step {
    /// Claim `key` with fingerprint `fp`.
    Claim {
        /// Key index.
        key: usize,
        /// Fingerprint index.
        fp: u8,
    },
    /// Complete with the n-th lease handed out so far.
    Complete(usize),
    /// Fail with the n-th lease.
    Fail(usize, bool),
    /// Release with the n-th lease.
    Release(usize),
    /// Renew the n-th lease.
    Renew(usize),
    /// Mark a key corrupted, observing it as it is or not.
    Corrupt(usize, Observation),
    /// Operator resolution: delete (true) or turn into a retryable failure.
    Resolve(usize, bool),
    /// Read a key.
    Get(usize),
    /// Move the clock forward by this many seconds.
    Advance(u64),
}

/// What a corruption mark claims to have observed of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Its current state and fence: the mark is written.
    Current,
    /// Its current state at another fence: `Conflict`.
    OtherFence,
    /// Another state at its current fence: `Conflict`.
    OtherState,
}

/// What the model knows of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MState {
    /// Executing under lease number `lease`.
    Pending {
        /// Index of the lease in the handed-out list.
        lease: usize,
        /// Lease deadline (model seconds).
        deadline: u64,
    },
    /// Completed.
    Completed,
    /// Failed.
    Failed {
        /// Retryable?
        retryable: bool,
    },
    /// Corrupted.
    Corrupted,
}

/// A record in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MRecord {
    fp: u8,
    /// Index of the claim (lease) whose fence the record holds.
    fenced_by: usize,
    attempts: u32,
    expires_at: u64,
    state: MState,
}

impl MRecord {
    fn expired(&self, now: u64) -> bool {
        match self.state {
            MState::Corrupted => false,
            MState::Pending { deadline, .. } => self.expires_at <= now && deadline <= now,
            _ => self.expires_at <= now,
        }
    }
}

/// The reference model's state.
#[derive(Debug, Clone, Default)]
pub struct Model {
    now: u64,
    records: [Option<MRecord>; KEYS],
    /// The key index of every lease handed out, in order.
    leases: Vec<usize>,
}

/// What the model predicts for a step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A claim acquired: the n-th lease handed out.
    Acquired {
        lease: usize,
        attempt: u32,
        kind: ClaimKind,
    },
    InFlight {
        attempt: u32,
    },
    Completed,
    Failed,
    Mismatch,
    Corrupted,
    Ok,
    LeaseLost,
    NotFound,
    Conflict,
    InvalidState,
    /// A record read back: state, the lease whose fence it holds, attempts.
    Record(Option<(&'static str, usize, u32)>),
    Nothing,
}

impl Model {
    fn live(&self, k: usize) -> Option<&MRecord> {
        self.records[k].as_ref().filter(|r| !r.expired(self.now))
    }

    /// What a mark would observe of key `k`: the state and the lease whose
    /// fence the record holds.
    fn observe(&self, k: usize) -> Option<(StateKind, usize)> {
        self.live(k).map(|r| {
            let kind = match r.state {
                MState::Pending { .. } => StateKind::Pending,
                MState::Completed => StateKind::Completed,
                MState::Failed { .. } => StateKind::Failed,
                MState::Corrupted => StateKind::Corrupted,
            };
            (kind, r.fenced_by)
        })
    }

    fn owned(&self, lease: usize) -> Option<usize> {
        let k = *self.leases.get(lease)?;
        let r = self.live(k)?;
        match r.state {
            MState::Pending { lease: l, .. } if l == lease && r.fenced_by == lease => Some(k),
            _ => None,
        }
    }

    /// Applies a step, returning the predicted answer.
    fn step(&mut self, step: &Step) -> Expect {
        let now = self.now;
        match *step {
            Step::Advance(s) => {
                self.now += s;
                Expect::Nothing
            }
            Step::Claim { key, fp } => {
                let Some(rec) = self.live(key).cloned() else {
                    self.leases.push(key);
                    let lease = self.leases.len() - 1;
                    self.records[key] = Some(MRecord {
                        fp,
                        fenced_by: lease,
                        attempts: 1,
                        expires_at: now + RETENTION_S,
                        state: MState::Pending {
                            lease,
                            deadline: now + LEASE_S,
                        },
                    });
                    return Expect::Acquired {
                        lease,
                        attempt: 1,
                        kind: ClaimKind::New,
                    };
                };
                if rec.state == MState::Corrupted {
                    return Expect::Corrupted;
                }
                if rec.fp != fp {
                    return Expect::Mismatch;
                }
                let kind = match rec.state {
                    MState::Pending { deadline, .. } if deadline > now => {
                        return Expect::InFlight {
                            attempt: rec.attempts,
                        };
                    }
                    MState::Pending { .. } if rec.attempts >= MAX_ATTEMPTS => {
                        let r = self.records[key].as_mut().expect("live");
                        r.state = MState::Failed { retryable: false };
                        r.expires_at = now + RETENTION_S;
                        return Expect::Failed;
                    }
                    MState::Pending { .. } => ClaimKind::Takeover,
                    MState::Completed => return Expect::Completed,
                    MState::Failed { retryable: true } if rec.attempts < MAX_ATTEMPTS => {
                        ClaimKind::Retry
                    }
                    MState::Failed { .. } => return Expect::Failed,
                    MState::Corrupted => unreachable!(),
                };
                self.leases.push(key);
                let lease = self.leases.len() - 1;
                let r = self.records[key].as_mut().expect("live");
                r.fenced_by = lease;
                r.attempts += 1;
                r.state = MState::Pending {
                    lease,
                    deadline: now + LEASE_S,
                };
                r.expires_at = r.expires_at.max(now + LEASE_S);
                Expect::Acquired {
                    lease,
                    attempt: r.attempts,
                    kind,
                }
            }
            Step::Complete(l) | Step::Fail(l, _) | Step::Release(l) | Step::Renew(l) => {
                let Some(k) = self.owned(l) else {
                    return Expect::LeaseLost;
                };
                let r = self.records[k].as_mut().expect("owned");
                match *step {
                    Step::Complete(_) => {
                        r.state = MState::Completed;
                        r.expires_at = now + RETENTION_S;
                    }
                    Step::Fail(_, retryable) => {
                        r.state = MState::Failed { retryable };
                        r.expires_at = now + RETENTION_S;
                    }
                    Step::Release(_) => self.records[k] = None,
                    _ => {
                        r.state = MState::Pending {
                            lease: l,
                            deadline: now + LEASE_S,
                        };
                        r.expires_at = r.expires_at.max(now + LEASE_S);
                    }
                }
                Expect::Ok
            }
            Step::Corrupt(k, observation) => {
                if self.live(k).is_none() {
                    return Expect::NotFound;
                }
                if observation != Observation::Current {
                    return Expect::Conflict;
                }
                let r = self.records[k].as_mut().expect("live");
                r.state = MState::Corrupted;
                r.expires_at = u64::MAX;
                Expect::Ok
            }
            Step::Resolve(k, delete) => {
                let Some(rec) = self.live(k) else {
                    return Expect::NotFound;
                };
                if !matches!(rec.state, MState::Corrupted | MState::Pending { .. }) {
                    return Expect::InvalidState;
                }
                if delete {
                    self.records[k] = None;
                } else {
                    let r = self.records[k].as_mut().expect("live");
                    r.state = MState::Failed { retryable: true };
                    r.expires_at = now + 24 * 3600;
                }
                Expect::Ok
            }
            Step::Get(k) => Expect::Record(self.live(k).map(|r| {
                let name = match r.state {
                    MState::Pending { .. } => "PENDING",
                    MState::Completed => "COMPLETED",
                    MState::Failed { .. } => "FAILED",
                    MState::Corrupted => "CORRUPTED",
                };
                (name, r.fenced_by, r.attempts)
            })),
        }
    }
}

/// The reference state machine that generates sequences.
#[derive(Debug)]
pub struct Lifecycle;

impl ReferenceStateMachine for Lifecycle {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Self::Transition> {
        let key = 0..KEYS;
        let claims = (key.clone(), 0..2u8).prop_map(|(key, fp)| Step::Claim { key, fp });
        let advance =
            prop_oneof![Just(10u64), Just(30), Just(70), Just(700)].prop_map(Step::Advance);
        let observation = prop_oneof![
            2 => Just(Observation::Current),
            1 => Just(Observation::OtherFence),
            1 => Just(Observation::OtherState),
        ];
        let misc = prop_oneof![
            (key.clone(), observation).prop_map(|(k, o)| Step::Corrupt(k, o)),
            (key.clone(), any::<bool>()).prop_map(|(k, d)| Step::Resolve(k, d)),
            key.prop_map(Step::Get),
        ];
        if state.leases.is_empty() {
            return prop_oneof![4 => claims, 2 => advance, 1 => misc].boxed();
        }
        let n = state.leases.len();
        // Prefer recent leases: they are the ones that may still be valid.
        let lease = prop_oneof![3 => Just(n - 1), 1 => 0..n];
        let lease_ops = (lease, 0..4u8, any::<bool>()).prop_map(|(l, op, retryable)| match op {
            0 => Step::Complete(l),
            1 => Step::Fail(l, retryable),
            2 => Step::Release(l),
            _ => Step::Renew(l),
        });
        prop_oneof![4 => claims, 4 => lease_ops, 2 => advance, 1 => misc].boxed()
    }

    fn apply(mut state: Self::State, transition: &Self::Transition) -> Self::State {
        state.step(transition);
        state
    }

    fn preconditions(state: &Self::State, transition: &Self::Transition) -> bool {
        match transition {
            Step::Complete(l) | Step::Fail(l, _) | Step::Release(l) | Step::Renew(l) => {
                *l < state.leases.len()
            }
            _ => true,
        }
    }
}

/// A runtime for [`check`].
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::of_bytes("model", &[n])
}

async fn run_sequence<S>(store: &S, steps: &[Step]) -> Result<(), TestCaseError>
where
    S: IdempotencyStore + ClockControl,
{
    let case = uuid::Uuid::new_v4();
    let keys: Vec<StorageKey> = (0..KEYS)
        .map(|i| StorageKey::from_segments(&[b"model".as_slice(), case.as_bytes(), &[i as u8]]))
        .collect();
    let mut model = Model::default();
    let mut leases: Vec<Lease> = Vec::new();
    // Per key: the greatest fence handed out so far, in any record life.
    let mut last_fence: [Option<u64>; KEYS] = [None; KEYS];
    for (i, step) in steps.iter().enumerate() {
        // What a corruption mark observes, in the store's numbers, before
        // the model moves on.
        let observed = match *step {
            Step::Corrupt(k, observation) => Some(match model.observe(k) {
                // Absent: any observation is "not found".
                None => Observed::completed(1),
                Some((kind, by)) => {
                    let fence = leases[by].fence;
                    match observation {
                        Observation::Current => Observed::new(kind, fence),
                        Observation::OtherFence => Observed::new(kind, fence + 1),
                        Observation::OtherState if kind == StateKind::Pending => {
                            Observed::new(StateKind::Completed, fence)
                        }
                        Observation::OtherState => Observed::new(StateKind::Pending, fence),
                    }
                }
            }),
            _ => None,
        };
        let expect = model.step(step);
        let ctx = || format!("step {i} {step:?}");
        let got = match *step {
            Step::Advance(s) => {
                store.advance(Duration::from_secs(s));
                Expect::Nothing
            }
            Step::Claim { key, fp } => {
                let req = ClaimRequest {
                    key: keys[key],
                    fingerprint: fingerprint(fp),
                    lease: Duration::from_secs(LEASE_S),
                    retention: Duration::from_secs(RETENTION_S),
                    max_attempts: MAX_ATTEMPTS,
                };
                match store.claim(&req).await {
                    Ok(Claim::Acquired { lease, kind }) => {
                        let floor = last_fence[key];
                        prop_assert!(
                            floor.is_none_or(|f| lease.fence > f) && lease.fence >= 1,
                            "{}: fence {} does not increase on {:?}",
                            ctx(),
                            lease.fence,
                            floor
                        );
                        last_fence[key] = Some(lease.fence);
                        let e = Expect::Acquired {
                            lease: leases.len(),
                            attempt: lease.attempt,
                            kind,
                        };
                        leases.push(lease);
                        e
                    }
                    Ok(Claim::InFlight { attempt, .. }) => Expect::InFlight { attempt },
                    Ok(Claim::Completed(_)) => Expect::Completed,
                    Ok(Claim::Failed(_)) => Expect::Failed,
                    Ok(Claim::Mismatch) => Expect::Mismatch,
                    Ok(Claim::Corrupted { .. }) => Expect::Corrupted,
                    Err(e) => {
                        return Err(TestCaseError::fail(format!("{}: store error {e:?}", ctx())));
                    }
                }
            }
            Step::Complete(l) | Step::Fail(l, _) | Step::Release(l) | Step::Renew(l) => {
                let lease = &leases[l];
                let r = match *step {
                    Step::Complete(_) => {
                        store
                            .complete(
                                lease,
                                Completion::new(Outcome::Value(Bytes::from_static(b"1"))),
                            )
                            .await
                    }
                    Step::Fail(_, true) => store.fail(lease, Failure::retryable("r")).await,
                    Step::Fail(_, false) => store.fail(lease, Failure::terminal("t")).await,
                    Step::Release(_) => store.release(lease).await,
                    _ => store.renew(lease).await.map(|renewed| leases[l] = renewed),
                };
                lease_result(r).map_err(|e| TestCaseError::fail(format!("{}: {e}", ctx())))?
            }
            Step::Corrupt(k, _) => {
                let observed = observed.expect("computed above");
                match store.mark_corrupted(&keys[k], observed, "model").await {
                    Ok(()) => Expect::Ok,
                    Err(StoreError::NotFound) => Expect::NotFound,
                    Err(StoreError::Conflict) => Expect::Conflict,
                    Err(e) => return Err(TestCaseError::fail(format!("{}: {e:?}", ctx()))),
                }
            }
            Step::Resolve(k, delete) => {
                let res = if delete {
                    Resolution::Delete
                } else {
                    Resolution::Fail(Failure::retryable("operator"))
                };
                match store.resolve(&keys[k], res).await {
                    Ok(_) => Expect::Ok,
                    Err(StoreError::NotFound) => Expect::NotFound,
                    Err(StoreError::InvalidState { .. }) => Expect::InvalidState,
                    Err(e) => return Err(TestCaseError::fail(format!("{}: {e:?}", ctx()))),
                }
            }
            Step::Get(k) => match store.get(&keys[k]).await {
                Ok(r) => {
                    // Name the fence by the lease that carries it (the model's terms).
                    let read = r.map(|r| {
                        let by = leases
                            .iter()
                            .rposition(|l| l.key == keys[k] && l.fence == r.fence)
                            .unwrap_or(usize::MAX);
                        (r.state.name(), by, r.attempts)
                    });
                    Expect::Record(read)
                }
                Err(e) => return Err(TestCaseError::fail(format!("{}: {e:?}", ctx()))),
            },
        };
        prop_assert_eq!(got, expect, "{}", ctx());
    }
    Ok(())
}

fn lease_result(r: Result<(), StoreError>) -> Result<Expect, String> {
    match r {
        Ok(()) => Ok(Expect::Ok),
        Err(StoreError::LeaseLost) => Ok(Expect::LeaseLost),
        Err(e) => Err(format!("unexpected store error {e:?}")),
    }
}

/// Runs the model test against `store` on `rt`. Cases: `PROPTEST_CASES`
/// (default 64), up to 40 steps each.
///
/// # Panics
///
/// When the store disagrees with the model; the message holds the shrunk
/// sequence.
pub fn check<S>(rt: &Arc<tokio::runtime::Runtime>, store: &S)
where
    S: IdempotencyStore + ClockControl,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = Lifecycle::sequential_strategy(1..40);
    let result = runner.run(&strategy, |(_initial, steps, _)| {
        rt.block_on(run_sequence(store, &steps))
    });
    if let Err(e) = result {
        panic!("store disagrees with the lifecycle model: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_takeover_and_exhaustion() {
        let mut m = Model::default();
        assert_eq!(
            m.step(&Step::Claim { key: 0, fp: 0 }),
            Expect::Acquired {
                lease: 0,
                attempt: 1,
                kind: ClaimKind::New
            }
        );
        assert_eq!(m.step(&Step::Claim { key: 0, fp: 1 }), Expect::Mismatch);
        assert_eq!(
            m.step(&Step::Claim { key: 0, fp: 0 }),
            Expect::InFlight { attempt: 1 }
        );
        m.step(&Step::Advance(70));
        assert_eq!(
            m.step(&Step::Claim { key: 0, fp: 0 }),
            Expect::Acquired {
                lease: 1,
                attempt: 2,
                kind: ClaimKind::Takeover
            }
        );
        assert_eq!(m.step(&Step::Complete(0)), Expect::LeaseLost);
        assert_eq!(m.step(&Step::Fail(1, true)), Expect::Ok);
        assert_eq!(
            m.step(&Step::Claim { key: 0, fp: 0 }),
            Expect::Acquired {
                lease: 2,
                attempt: 3,
                kind: ClaimKind::Retry
            }
        );
        assert_eq!(
            m.step(&Step::Get(0)),
            Expect::Record(Some(("PENDING", 2, 3)))
        );
        m.step(&Step::Advance(70));
        assert_eq!(m.step(&Step::Claim { key: 0, fp: 0 }), Expect::Failed);
        assert_eq!(
            m.step(&Step::Get(0)),
            Expect::Record(Some(("FAILED", 2, 3)))
        );
        m.step(&Step::Advance(700));
        assert_eq!(m.step(&Step::Get(0)), Expect::Record(None));
    }
}
