//! Operator views of a store: a record read whatever its expiry, records
//! listed by state and age (stuck and corrupted first), and a count of what
//! a purge of expired records would delete.
//!
//! These are read-only abilities for operator tools (`idempotency-admin`),
//! kept apart from [`IdempotencyStore`](crate::IdempotencyStore): a request
//! path never needs them, and a store may implement them with scans that
//! would be too dear for one. Changes go through the store's atomic
//! operations ([`resolve`](crate::IdempotencyStore::resolve),
//! [`PurgeExpired`](crate::PurgeExpired)).

use std::cmp::Ordering;
use std::future::Future;
use std::time::Duration;

use crate::key::StorageKey;
use crate::record::{Record, RecordState, Timestamp};
use crate::store::{StateKind, StoreError};

/// A record as an operator sees it: the record, the store's clock when it
/// was read, and whether it still counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    /// The record. A record whose stored data cannot be decoded reads as
    /// [`RecordState::Corrupted`], with what is wrong in the detail, and
    /// nothing is written (an operator read never marks anything).
    pub record: Record,
    /// The store's clock when the record was read.
    pub now: Timestamp,
    /// Whether the record no longer counts ([`Record::is_expired`] at
    /// [`now`](Self::now)): a claim treats it as absent, a purge deletes it.
    pub expired: bool,
}

impl AdminRecord {
    /// Wraps a record read at `now`.
    pub fn new(record: Record, now: Timestamp) -> Self {
        let expired = record.is_expired(now);
        Self {
            record,
            now,
            expired,
        }
    }

    /// Time left on the lease of a `Pending` record (zero once it has run
    /// out); `None` for any other state.
    pub fn lease_left(&self) -> Option<Duration> {
        match &self.record.state {
            RecordState::Pending(p) => Some(p.lease_deadline.saturating_since(self.now)),
            _ => None,
        }
    }

    /// Whether the record is `Pending` with a live lease: someone may be
    /// executing it right now.
    pub fn lease_live(&self) -> bool {
        self.lease_left().is_some_and(|left| !left.is_zero())
    }

    /// Whether the record is stuck: `Pending` whose lease has run out (its
    /// owner crashed or stalled) while the record still counts. The next
    /// claim would take it over; an operator may release it.
    pub fn is_stuck(&self) -> bool {
        !self.expired && self.lease_left().is_some_and(|left| left.is_zero())
    }

    /// How urgent the record is for an operator, lowest first: corrupted
    /// (blocks its key), stuck pending, live pending, failed, completed.
    pub fn urgency(&self) -> u8 {
        match &self.record.state {
            RecordState::Corrupted(_) => 0,
            RecordState::Pending(_) if self.is_stuck() => 1,
            RecordState::Pending(_) => 2,
            RecordState::Failed(_) => 3,
            RecordState::Completed(_) => 4,
        }
    }

    /// The listing order: by [`urgency`](Self::urgency), then oldest first
    /// (creation time), then by key, so the order is total and stable.
    pub fn list_order(&self, other: &Self) -> Ordering {
        self.urgency()
            .cmp(&other.urgency())
            .then(self.record.created_at.cmp(&other.record.created_at))
            .then(self.record.key.cmp(&other.record.key))
    }
}

/// Which records a listing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only records in this state (`None`: every state).
    pub state: Option<StateKind>,
    /// Only records created at least this long ago (store clock).
    pub older_than: Option<Duration>,
    /// At most this many records (at least 1).
    pub limit: usize,
}

impl ListFilter {
    /// Every live record, at most `limit` of them.
    pub fn new(limit: usize) -> Self {
        Self {
            state: None,
            older_than: None,
            limit: limit.max(1),
        }
    }

    /// Only records in `state`.
    #[must_use]
    pub fn state(mut self, state: StateKind) -> Self {
        self.state = Some(state);
        self
    }

    /// Only records created at least `age` ago.
    #[must_use]
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Whether a live record passes the filter.
    pub fn matches(&self, record: &AdminRecord) -> bool {
        if record.expired {
            return false;
        }
        if self.state.is_some_and(|s| s != record.record.state.kind()) {
            return false;
        }
        match self.older_than {
            None => true,
            Some(age) => record.record.created_at <= record_cutoff(record.now, age),
        }
    }
}

fn record_cutoff(now: Timestamp, age: Duration) -> Timestamp {
    let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    Timestamp::from_millis(now.as_millis().saturating_sub(age))
}

/// What a listing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The records, in [`AdminRecord::list_order`], at most the filter's limit.
    pub records: Vec<AdminRecord>,
    /// How many live records matched the filter in all (the records shown
    /// are the first of them).
    pub matched: u64,
}

impl Listing {
    /// Keeps the `limit` first of `records` in [`AdminRecord::list_order`].
    pub fn from_matches(mut records: Vec<AdminRecord>, limit: usize) -> Self {
        let matched = records.len() as u64;
        records.sort_by(AdminRecord::list_order);
        records.truncate(limit.max(1));
        Self { records, matched }
    }
}

/// Optional ability for operator tools: read any record, list records,
/// count expired ones. Read-only: nothing here writes to the store.
pub trait AdminStore: Send + Sync {
    /// The record for `key`, expired or not; `None` when the store holds
    /// nothing for it.
    fn inspect(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<AdminRecord>, StoreError>> + Send;

    /// Live records passing `filter`, stuck and corrupted first.
    fn list(&self, filter: &ListFilter)
    -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// How many records are expired (by stored timestamp) but still held:
    /// what a purge would delete now.
    fn count_expired(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::record::{Completed, Corrupted, Failed, LeaseToken, Outcome, Pending};
    use bytes::Bytes;

    const NOW: u64 = 1_000_000;

    fn record(n: u8, state: RecordState, created: u64, expires: u64) -> AdminRecord {
        AdminRecord::new(
            Record {
                key: StorageKey::from_segments(&[[n]]),
                fingerprint: Fingerprint::of_bytes("t", b""),
                fence: 1,
                attempts: 1,
                created_at: Timestamp::from_millis(created),
                expires_at: Timestamp::from_millis(expires),
                state,
            },
            Timestamp::from_millis(NOW),
        )
    }

    fn pending(deadline: u64) -> RecordState {
        RecordState::Pending(Pending {
            token: LeaseToken::new(),
            lease_deadline: Timestamp::from_millis(deadline),
        })
    }

    fn completed() -> RecordState {
        RecordState::Completed(Completed {
            outcome: Outcome::Value(Bytes::new()),
            resource: None,
            completed_at: Timestamp::from_millis(NOW),
            fence: 1,
        })
    }

    #[test]
    fn stuck_live_and_expired_pending_records() {
        let live = record(1, pending(NOW + 5_000), NOW - 10, NOW + 60_000);
        assert!(live.lease_live() && !live.is_stuck());
        assert_eq!(live.lease_left(), Some(Duration::from_secs(5)));
        let stuck = record(2, pending(NOW - 1), NOW - 10, NOW + 60_000);
        assert!(!stuck.lease_live() && stuck.is_stuck());
        assert_eq!(stuck.lease_left(), Some(Duration::ZERO));
        // Lease and retention both over: it no longer counts, it is not stuck.
        let gone = record(3, pending(NOW - 1), NOW - 10, NOW - 1);
        assert!(gone.expired && !gone.is_stuck());
        let done = record(4, completed(), NOW - 10, NOW + 1);
        assert_eq!(done.lease_left(), None);
        assert!(!done.lease_live() && !done.is_stuck());
    }

    #[test]
    fn listing_puts_corrupted_and_stuck_first_then_oldest() {
        let corrupted = RecordState::Corrupted(Corrupted {
            detail: "x".into(),
            detected_at: Timestamp::from_millis(NOW),
        });
        let failed = RecordState::Failed(Failed {
            reason: "r".into(),
            retryable: true,
            failed_at: Timestamp::from_millis(NOW),
        });
        let records = vec![
            record(1, completed(), NOW - 900, NOW + 1),
            record(2, failed, NOW - 800, NOW + 1),
            record(3, pending(NOW + 9), NOW - 700, NOW + 1),
            record(4, pending(NOW - 9), NOW - 100, NOW + 1),
            record(5, pending(NOW - 9), NOW - 600, NOW + 1),
            record(6, corrupted, NOW - 50, u64::MAX),
        ];
        let listing = Listing::from_matches(records.clone(), 5);
        assert_eq!(listing.matched, 6);
        let order: Vec<u64> = listing
            .records
            .iter()
            .map(|r| NOW - r.record.created_at.as_millis())
            .collect();
        assert_eq!(order, [50, 600, 100, 700, 800]);
        assert_eq!(Listing::from_matches(records, 0).records.len(), 1);
    }

    #[test]
    fn filters_by_state_and_age_and_skip_expired_records() {
        let old = record(1, completed(), NOW - 600_000, NOW + 1);
        let young = record(2, completed(), NOW - 1_000, NOW + 1);
        let expired = record(3, completed(), NOW - 600_000, NOW);
        let all = ListFilter::new(10);
        assert!(all.matches(&old) && all.matches(&young) && !all.matches(&expired));
        let aged = ListFilter::new(10).older_than(Duration::from_secs(60));
        assert!(aged.matches(&old) && !aged.matches(&young));
        assert!(ListFilter::new(1).state(StateKind::Completed).matches(&old));
        assert!(!ListFilter::new(1).state(StateKind::Pending).matches(&old));
        assert_eq!(ListFilter::new(0).limit, 1);
        // An age beyond the clock matches nothing created after the epoch.
        let ancient = ListFilter::new(1).older_than(Duration::MAX);
        assert!(!ancient.matches(&old));
    }
}
