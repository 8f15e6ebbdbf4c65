//! Lease, retention, attempts and waiting: the knobs of one idempotent operation.

use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::Lease;
use crate::store::{ClaimRequest, Failure};

/// How records are held and kept.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `lease` | 10 s | how long a claim is exclusive without a heartbeat |
/// | `heartbeat` | lease / 3 | how often a running operation renews its lease |
/// | `retention` | 24 h | how long a finished record is replayed, from completion |
/// | `max_attempts` | 3 | executions a key may start in total (crash takeovers and retries included) |
/// | `wait` | none | how long a duplicate waits for an in-flight execution instead of failing fast |
/// | `store_timeout` | 5 s | how long one store call may take before it counts as failed |
/// | `settle_timeout` | 60 s | how long the final record write (complete, fail, release) is retried while the store fails |
///
/// Every setter clamps its value into a safe range instead of panicking or
/// producing a policy that cannot work, and all arithmetic on these values
/// saturates:
///
/// | field | accepted range | why |
/// |---|---|---|
/// | `lease` | [`MIN_LEASE`] (100 ms) ..= [`MAX_DURATION`] (1 day) | a shorter lease runs out before a store round trip and a heartbeat can renew it, so duplicates would take over a live attempt |
/// | `heartbeat` | 1 ms ..= lease / 2 | a renewal every half lease at most, so one late renewal never loses the lease |
/// | `retention` | lease ..= 100 years | a finished record must outlive the lease that produced it |
/// | `max_attempts` | 1 ..= `u32::MAX` | at least the first execution |
/// | `wait` | 0 ..= [`MAX_DURATION`] | |
/// | `store_timeout` | 1 ms ..= [`MAX_DURATION`] | |
/// | `settle_timeout` | 0 ..= [`MAX_DURATION`] | 0: the final write is tried once |
///
/// ```
/// use std::time::Duration;
/// use idempotency_core::Policy;
/// let policy = Policy::default()
///     .lease(Duration::from_secs(5))
///     .retention(Duration::from_secs(3600))
///     .max_attempts(5)
///     .wait(Duration::from_secs(2));
/// assert_eq!(policy.heartbeat_interval(), Duration::from_secs(5) / 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    lease: Duration,
    heartbeat: Option<Duration>,
    retention: Duration,
    max_attempts: u32,
    wait: Option<Duration>,
    store_timeout: Duration,
    settle_timeout: Duration,
}

/// The shortest lease a [`Policy`] accepts: 100 ms.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// The longest lease, wait, store timeout or settle timeout a [`Policy`]
/// accepts: one day. Longer values are clamped to it.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

const MAX_RETENTION: Duration = Duration::from_millis(crate::record::MAX_STORE_MILLIS);

impl Default for Policy {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: None,
            retention: Duration::from_secs(24 * 60 * 60),
            max_attempts: 3,
            wait: None,
            store_timeout: Duration::from_secs(5),
            settle_timeout: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// Sets the lease length, clamped to [`MIN_LEASE`]`..=`[`MAX_DURATION`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotency_core::{MIN_LEASE, Policy};
    /// assert_eq!(Policy::default().lease(Duration::ZERO).lease_duration(), MIN_LEASE);
    /// ```
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.clamp(MIN_LEASE, MAX_DURATION);
        self
    }

    /// Sets the heartbeat period (default: a third of the lease). It is
    /// clamped to 1 ms..=lease / 2 when read, so a later, shorter lease
    /// still gets a safe heartbeat.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Sets the retention of finished records, clamped to at least the lease
    /// (when read) and at most 100 years.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention.min(MAX_RETENTION);
        self
    }

    /// Sets how long one store call may take before it fails with
    /// `StoreError::Timeout` (default 5 s), clamped to 1 ms..=[`MAX_DURATION`].
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout.clamp(Duration::from_millis(1), MAX_DURATION);
        self
    }

    /// Sets how long the final write of an attempt (complete, fail or
    /// release) is retried while the store fails transiently (default 60 s),
    /// clamped to [`MAX_DURATION`]. The lease keeps being renewed meanwhile,
    /// so no duplicate takes the record over while the write is retried.
    #[must_use]
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// Sets the maximum number of executions per key (minimum 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Makes duplicates wait up to `timeout` (clamped to [`MAX_DURATION`])
    /// for an in-flight execution.
    #[must_use]
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout.min(MAX_DURATION));
        self
    }

    /// Makes duplicates fail fast with "in flight" (the default).
    #[must_use]
    pub fn no_wait(mut self) -> Self {
        self.wait = None;
        self
    }

    /// The lease length.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// The retention (never shorter than the lease).
    pub fn retention_duration(&self) -> Duration {
        self.retention.max(self.lease)
    }

    /// The timeout of one store call.
    pub fn store_timeout_duration(&self) -> Duration {
        self.store_timeout
    }

    /// How long the final write of an attempt is retried.
    pub fn settle_timeout_duration(&self) -> Duration {
        self.settle_timeout
    }

    /// The time budget of a claim: the store timeout, plus the wait when
    /// duplicates wait (saturating).
    pub fn claim_budget(&self) -> Duration {
        match self.wait {
            Some(w) => self.store_timeout.saturating_add(w),
            None => self.store_timeout,
        }
    }

    /// The attempt limit.
    pub fn attempt_limit(&self) -> u32 {
        self.max_attempts
    }

    /// The wait timeout, if duplicates wait.
    pub fn wait_timeout(&self) -> Option<Duration> {
        self.wait
    }

    /// The heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
            .unwrap_or(self.lease / 3)
            .min(self.lease / 2)
            .max(Duration::from_millis(1))
    }

    /// The claim request for a key and fingerprint under this policy.
    pub fn claim_request(&self, key: StorageKey, fingerprint: Fingerprint) -> ClaimRequest {
        ClaimRequest {
            key,
            fingerprint,
            lease: self.lease,
            retention: self.retention_duration(),
            max_attempts: self.max_attempts,
        }
    }

    /// Turns a retryable failure on the last allowed attempt into a terminal one.
    pub fn settle_failure(&self, lease: &Lease, failure: Failure) -> Failure {
        if failure.retryable && lease.attempt >= self.max_attempts {
            Failure {
                reason: format!(
                    "{} (attempt {} of {}: no attempts left)",
                    failure.reason, lease.attempt, self.max_attempts
                ),
                retryable: false,
            }
        } else {
            failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented clamp of the table, at both ends.
    #[test]
    fn values_are_clamped_into_their_documented_ranges() {
        let p = Policy::default()
            .lease(Duration::ZERO)
            .heartbeat(Duration::MAX)
            .retention(Duration::ZERO)
            .max_attempts(0)
            .wait(Duration::MAX)
            .store_timeout(Duration::ZERO)
            .settle_timeout(Duration::MAX);
        assert_eq!(p.lease_duration(), MIN_LEASE);
        assert_eq!(
            p.heartbeat_interval(),
            MIN_LEASE / 2,
            "at most half the lease"
        );
        assert_eq!(
            p.retention_duration(),
            MIN_LEASE,
            "never shorter than the lease"
        );
        assert_eq!(p.attempt_limit(), 1);
        assert_eq!(p.wait_timeout(), Some(MAX_DURATION));
        assert_eq!(p.store_timeout_duration(), Duration::from_millis(1));
        assert_eq!(p.settle_timeout_duration(), MAX_DURATION);
        assert_eq!(p.claim_budget(), Duration::from_millis(1) + MAX_DURATION);

        let p = Policy::default()
            .lease(Duration::MAX)
            .heartbeat(Duration::ZERO)
            .retention(Duration::MAX)
            .store_timeout(Duration::MAX);
        assert_eq!(p.lease_duration(), MAX_DURATION);
        assert_eq!(p.heartbeat_interval(), Duration::from_millis(1));
        assert_eq!(p.retention_duration(), MAX_RETENTION);
        assert_eq!(p.store_timeout_duration(), MAX_DURATION);
        assert_eq!(
            p.claim_request(
                crate::StorageKey::from_segments(&[b"k"]),
                crate::Fingerprint::of_bytes("x", b"")
            )
            .retention,
            MAX_RETENTION
        );
    }

    /// The default heartbeat is a third of the lease, and follows a lease
    /// set after it.
    #[test]
    fn heartbeat_follows_the_lease() {
        let p = Policy::default().lease(Duration::from_secs(9));
        assert_eq!(p.heartbeat_interval(), Duration::from_secs(3));
        let p = Policy::default()
            .heartbeat(Duration::from_secs(4))
            .lease(Duration::from_secs(6));
        assert_eq!(
            p.heartbeat_interval(),
            Duration::from_secs(3),
            "clamped to lease / 2"
        );
    }
}
