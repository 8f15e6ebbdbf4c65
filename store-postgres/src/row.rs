//! Reading records back from rows.

use idempotency_core::{
    Completed, Corrupted, Failed, Fingerprint, LeaseToken, Outcome, Pending, RecordState,
    StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{UnexpectedRow, map_sqlx};

/// The columns every record query returns.
pub(crate) struct RawRecord {
    pub(crate) state: String,
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) fence: i64,
    pub(crate) attempts: i32,
    pub(crate) claim_kind: String,
    pub(crate) token: Option<Uuid>,
    pub(crate) lease_deadline_ms: Option<i64>,
    pub(crate) outcome: Option<Vec<u8>>,
    pub(crate) resource: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) retryable: Option<bool>,
    pub(crate) finished_ms: Option<i64>,
    pub(crate) now_ms: i64,
}

/// What a record's state turned out to be when decoded.
pub(crate) enum Decoded {
    /// A well-formed state.
    State(RecordState),
    /// The stored outcome cannot be decoded: the record is corrupted.
    Undecodable(String),
}

impl RawRecord {
    pub(crate) fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        (|| {
            Ok(Self {
                state: row.try_get("state")?,
                fingerprint: row.try_get("fingerprint")?,
                fence: row.try_get("fence")?,
                attempts: row.try_get("attempts")?,
                claim_kind: row.try_get("claim_kind")?,
                token: row.try_get("token")?,
                lease_deadline_ms: row.try_get("lease_deadline_ms")?,
                outcome: row.try_get("outcome")?,
                resource: row.try_get("resource")?,
                reason: row.try_get("reason")?,
                retryable: row.try_get("retryable")?,
                finished_ms: row.try_get("finished_ms")?,
                now_ms: row.try_get("now_ms")?,
            })
        })()
        .map_err(map_sqlx)
    }

    pub(crate) fn fingerprint(&self) -> Result<Fingerprint, StoreError> {
        let bytes: [u8; 32] = self
            .fingerprint
            .as_slice()
            .try_into()
            .map_err(|_| unexpected("fingerprint is not 32 bytes"))?;
        Ok(Fingerprint::from_bytes(bytes))
    }

    pub(crate) fn fence(&self) -> u64 {
        u64::try_from(self.fence).unwrap_or(0)
    }

    pub(crate) fn attempts(&self) -> u32 {
        u32::try_from(self.attempts).unwrap_or(0)
    }

    pub(crate) fn now(&self) -> Timestamp {
        ts(self.now_ms)
    }

    pub(crate) fn lease_deadline(&self) -> Result<Timestamp, StoreError> {
        self.lease_deadline_ms
            .map(ts)
            .ok_or_else(|| unexpected("pending record without a lease deadline"))
    }

    fn finished(&self) -> Result<Timestamp, StoreError> {
        self.finished_ms
            .map(ts)
            .ok_or_else(|| unexpected("finished record without a finish time"))
    }

    fn reason(&self) -> Result<String, StoreError> {
        self.reason
            .clone()
            .ok_or_else(|| unexpected("failed or corrupted record without a reason"))
    }

    pub(crate) fn failed(&self) -> Result<Failed, StoreError> {
        Ok(Failed {
            reason: self.reason()?,
            retryable: self
                .retryable
                .ok_or_else(|| unexpected("failed record without retryable"))?,
            failed_at: self.finished()?,
        })
    }

    /// Decodes the state and its data.
    pub(crate) fn state(&self) -> Result<Decoded, StoreError> {
        let state = match self.state.as_str() {
            "PENDING" => RecordState::Pending(Pending {
                token: LeaseToken::from_uuid(
                    self.token
                        .ok_or_else(|| unexpected("pending record without a token"))?,
                ),
                lease_deadline: self.lease_deadline()?,
            }),
            "COMPLETED" => {
                let bytes = self
                    .outcome
                    .as_deref()
                    .ok_or_else(|| unexpected("completed record without an outcome"))?;
                match Outcome::decode(bytes) {
                    Ok(outcome) => RecordState::Completed(Completed {
                        outcome,
                        resource: self.resource.clone(),
                        completed_at: self.finished()?,
                        fence: self.fence(),
                    }),
                    Err(e) => return Ok(Decoded::Undecodable(e.to_string())),
                }
            }
            "FAILED" => RecordState::Failed(self.failed()?),
            "CORRUPTED" => RecordState::Corrupted(Corrupted {
                detail: self.reason()?,
                detected_at: self.finished()?,
            }),
            other => return Err(unexpected(&format!("unknown state {other:?}"))),
        };
        Ok(Decoded::State(state))
    }
}

/// A timestamp from epoch milliseconds (negative clamps to the epoch).
pub(crate) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Milliseconds of a duration, for binding (saturating at
/// [`idempotency_core::MAX_STORE_MILLIS`], a hundred years: PostgreSQL's
/// intervals and timestamps overflow long before `Duration::MAX`).
pub(crate) fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(idempotency_core::clamp_millis(d)).unwrap_or(i64::MAX)
}

fn unexpected(what: &str) -> StoreError {
    StoreError::backend(UnexpectedRow(what.to_owned()))
}
