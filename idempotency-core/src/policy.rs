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
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: None,
            retention: Duration::from_secs(24 * 60 * 60),
            max_attempts: 3,
            wait: None,
        }
    }
}

impl Policy {
    /// Sets the lease length (minimum 1 ms).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Sets the heartbeat period (default: a third of the lease).
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Sets the retention of finished records.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the maximum number of executions per key (minimum 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Makes duplicates wait up to `timeout` for an in-flight execution.
    #[must_use]
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
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

    /// The retention.
    pub fn retention_duration(&self) -> Duration {
        self.retention
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
            .max(Duration::from_millis(1))
    }

    /// The claim request for a key and fingerprint under this policy.
    pub fn claim_request(&self, key: StorageKey, fingerprint: Fingerprint) -> ClaimRequest {
        ClaimRequest {
            key,
            fingerprint,
            lease: self.lease,
            retention: self.retention,
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
