//! The idempotency record and its lifecycle states.
//!
//! State data lives in the variant: a [`RecordState::Pending`] record carries
//! its lease, a [`RecordState::Completed`] one its outcome, so a nonsensical
//! combination (a completed record with a live lease, a failure with a stored
//! response) cannot be written down.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::store::StateKind;

/// The longest duration, in milliseconds, a store hands its backend: a
/// hundred years of 365 days. Backends overflow long before
/// `Duration::MAX` (PostgreSQL's intervals and timestamps), and three such
/// values still add up exactly in a double (Lua's numbers).
pub const MAX_STORE_MILLIS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// The milliseconds of `d` for a backend, saturating at [`MAX_STORE_MILLIS`].
pub fn clamp_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_STORE_MILLIS)
}

/// Milliseconds since the Unix epoch, as measured by the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The latest representable instant: "never".
    pub const MAX: Self = Self(u64::MAX);

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The system clock, for stores that own their clock (the in-memory store).
    pub fn now_system() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A random token naming one claim of a record. Only its holder may
/// complete, fail, release or renew the record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    /// A new random token.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps a token read back from a store.
    pub const fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", &self.0.simple().to_string()[..8])
    }
}

/// The owner's handle on a claimed record: proof of ownership for
/// complete / fail / release / renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The record.
    pub key: StorageKey,
    /// The claim's token.
    pub token: LeaseToken,
    /// Fencing number: strictly increases with every claim of the key, for
    /// the key's whole life (across release, expiry and operator
    /// resolution, not only within one record). Pass it to downstream
    /// systems that can reject stale writers.
    pub fence: u64,
    /// Attempt number of this claim (1 for the first execution).
    pub attempt: u32,
    /// When the lease runs out unless renewed (store clock).
    pub deadline: Timestamp,
    /// Lease length, used again by renewals.
    pub lease_duration: Duration,
    /// Retention of the finished record, counted from completion or failure.
    pub retention: Duration,
}

/// A response (or any status + headers + body result) kept for replay.
///
/// Headers keep their order and repetitions; names are stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Status code.
    pub status: u16,
    /// Allow-listed headers, in order, repetitions kept.
    pub headers: Vec<(String, Bytes)>,
    /// The body bytes, exactly as sent.
    pub body: Bytes,
    /// Trailer fields sent after the body (gRPC's `grpc-status` and
    /// `grpc-message`), in order; empty for most responses.
    pub trailers: Vec<(String, Bytes)>,
}

/// What a completed operation left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// An HTTP-like response to replay byte for byte.
    Response(StoredResponse),
    /// A typed value serialised as JSON (the programmatic API).
    Value(Bytes),
    /// The operation ran, but its result was not kept (too large to store).
    /// The record never re-executes; replays answer the original status and
    /// allow-listed headers (`Location`, `Content-Type`, ...) without a body.
    Tombstone {
        /// Status the original response had, if any.
        status: Option<u16>,
        /// The original response's allow-listed headers, as in
        /// [`StoredResponse::headers`] (empty for tombstones stored before
        /// headers were kept).
        headers: Vec<(String, Bytes)>,
        /// Why nothing was kept.
        reason: String,
    },
}

/// Why an [`Outcome`] could not be decoded: the record is corrupted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored outcome cannot be decoded: {0}")]
pub struct DecodeError(pub &'static str);

const CODEC_VERSION: u8 = 1;

/// Outcome tags. `T` is the first tombstone form (status and reason, no
/// headers): still decoded, never written.
const TAG_RESPONSE: u8 = b'R';
/// A response with trailers: `R`'s fields, then the trailers.
const TAG_RESPONSE_TRAILERS: u8 = b'P';
const TAG_VALUE: u8 = b'V';
const TAG_TOMBSTONE_V1: u8 = b'T';
const TAG_TOMBSTONE: u8 = b'H';

impl Outcome {
    /// Compact, binary-safe encoding for stores (versioned).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(CODEC_VERSION);
        match self {
            Self::Response(r) => {
                let trailers = !r.trailers.is_empty();
                out.push(if trailers {
                    TAG_RESPONSE_TRAILERS
                } else {
                    TAG_RESPONSE
                });
                out.extend_from_slice(&r.status.to_be_bytes());
                put_headers(&mut out, &r.headers);
                put_bytes(&mut out, &r.body);
                if trailers {
                    put_headers(&mut out, &r.trailers);
                }
            }
            Self::Value(v) => {
                out.push(TAG_VALUE);
                put_bytes(&mut out, v);
            }
            Self::Tombstone {
                status,
                headers,
                reason,
            } => {
                out.push(TAG_TOMBSTONE);
                out.extend_from_slice(&status.unwrap_or(0).to_be_bytes());
                put_headers(&mut out, headers);
                put_bytes(&mut out, reason.as_bytes());
            }
        }
        out
    }

    /// Decodes [`Outcome::encode`]'s output.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on any truncation, unknown tag or version, or trailing bytes.
    pub fn decode(mut input: &[u8]) -> Result<Self, DecodeError> {
        let r = &mut input;
        if take(r, 1)?[0] != CODEC_VERSION {
            return Err(DecodeError("unknown codec version"));
        }
        let out = match take(r, 1)?[0] {
            tag @ (TAG_RESPONSE | TAG_RESPONSE_TRAILERS) => {
                let status = get_u16(r)?;
                let headers = get_headers(r)?;
                let body = Bytes::copy_from_slice(get_bytes(r)?);
                let trailers = if tag == TAG_RESPONSE_TRAILERS {
                    get_headers(r)?
                } else {
                    Vec::new()
                };
                Self::Response(StoredResponse {
                    status,
                    headers,
                    body,
                    trailers,
                })
            }
            TAG_VALUE => Self::Value(Bytes::copy_from_slice(get_bytes(r)?)),
            tag @ (TAG_TOMBSTONE | TAG_TOMBSTONE_V1) => {
                let status = get_u16(r)?;
                let headers = if tag == TAG_TOMBSTONE {
                    get_headers(r)?
                } else {
                    Vec::new()
                };
                let reason = std::str::from_utf8(get_bytes(r)?)
                    .map_err(|_| DecodeError("tombstone reason is not UTF-8"))?
                    .to_owned();
                Self::Tombstone {
                    status: (status != 0).then_some(status),
                    headers,
                    reason,
                }
            }
            _ => return Err(DecodeError("unknown outcome tag")),
        };
        if !r.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(out)
    }
}

fn put_headers(out: &mut Vec<u8>, headers: &[(String, Bytes)]) {
    put_u32(out, headers.len());
    for (name, value) in headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
}

fn get_headers(r: &mut &[u8]) -> Result<Vec<(String, Bytes)>, DecodeError> {
    let n = get_u32(r)?;
    let mut headers = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let name = std::str::from_utf8(get_bytes(r)?)
            .map_err(|_| DecodeError("header name is not UTF-8"))?
            .to_owned();
        let value = Bytes::copy_from_slice(get_bytes(r)?);
        headers.push((name, value));
    }
    Ok(headers)
}

fn get_u16(r: &mut &[u8]) -> Result<u16, DecodeError> {
    let b = take(r, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if r.len() < n {
        return Err(DecodeError("truncated"));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn get_u32(r: &mut &[u8]) -> Result<usize, DecodeError> {
    let b = take(r, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn get_bytes<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let n = get_u32(r)?;
    take(r, n)
}

/// Someone is executing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Token of the current claim.
    pub token: LeaseToken,
    /// When the lease runs out unless renewed.
    pub lease_deadline: Timestamp,
}

/// Done: replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// What to replay.
    pub outcome: Outcome,
    /// A reference to the resource the operation created (`/work-orders/42`), if any.
    pub resource: Option<String>,
    /// When it completed.
    pub completed_at: Timestamp,
    /// The fence of the claim that completed it (the record's fence). A
    /// caller that finds the replay unusable marks exactly this version
    /// corrupted with [`Observed::completed`](crate::Observed::completed).
    pub fence: u64,
}

impl Completed {
    /// The bytes this outcome holds in memory (headers, trailers, body or
    /// value, tombstone reason, resource reference): what the in-memory
    /// store and the replay cache count against their byte budgets.
    pub(crate) fn data_bytes(&self) -> u64 {
        fn fields(h: &[(String, Bytes)]) -> u64 {
            h.iter().map(|(n, v)| (n.len() + v.len()) as u64).sum()
        }
        let outcome = match &self.outcome {
            Outcome::Response(r) => fields(&r.headers) + fields(&r.trailers) + r.body.len() as u64,
            Outcome::Value(v) => v.len() as u64,
            Outcome::Tombstone {
                headers, reason, ..
            } => fields(headers) + reason.len() as u64,
        };
        outcome + self.resource.as_ref().map_or(0, |r| r.len() as u64)
    }
}

/// Executed and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// Why (free text; never holds the raw key).
    pub reason: String,
    /// Whether a later claim may run the operation again (until max attempts).
    pub retryable: bool,
    /// When it failed.
    pub failed_at: Timestamp,
}

/// The record points at something that no longer exists or cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupted {
    /// What was found.
    pub detail: String,
    /// When it was found.
    pub detected_at: Timestamp,
}

/// The lifecycle state, with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Someone is executing now.
    Pending(Pending),
    /// Done; replay it.
    Completed(Completed),
    /// Executed and failed.
    Failed(Failed),
    /// Blocks until an operator resolves it.
    Corrupted(Corrupted),
}

impl RecordState {
    /// Which state this is, without its data.
    pub const fn kind(&self) -> StateKind {
        match self {
            Self::Pending(_) => StateKind::Pending,
            Self::Completed(_) => StateKind::Completed,
            Self::Failed(_) => StateKind::Failed,
            Self::Corrupted(_) => StateKind::Corrupted,
        }
    }

    /// `PENDING`, `COMPLETED`, `FAILED` or `CORRUPTED`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Pending(_) => "PENDING",
            Self::Completed(_) => "COMPLETED",
            Self::Failed(_) => "FAILED",
            Self::Corrupted(_) => "CORRUPTED",
        }
    }
}

/// One idempotency record as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Identity.
    pub key: StorageKey,
    /// Fingerprint of the request that created it.
    pub fingerprint: Fingerprint,
    /// Highest fencing number issued for this record.
    pub fence: u64,
    /// Number of claims that started an execution.
    pub attempts: u32,
    /// First claim.
    pub created_at: Timestamp,
    /// When the record stops counting (store clock), whatever the backend still holds.
    pub expires_at: Timestamp,
    /// The state and its data.
    pub state: RecordState,
}

impl Record {
    /// Whether the record no longer counts at `now`: a finished record past its
    /// retention, or an abandoned pending record whose lease and retention have
    /// both run out. Corrupted records never expire.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        match &self.state {
            RecordState::Corrupted(_) => false,
            RecordState::Pending(p) => self.expires_at <= now && p.lease_deadline <= now,
            RecordState::Completed(_) | RecordState::Failed(_) => self.expires_at <= now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_bytes_count_every_stored_part() {
        let completed = |outcome, resource: Option<&str>| Completed {
            outcome,
            resource: resource.map(str::to_owned),
            completed_at: Timestamp::from_millis(1),
            fence: 1,
        };
        let response = Outcome::Response(StoredResponse {
            status: 200,
            headers: vec![("ab".into(), Bytes::from_static(b"cde"))],
            body: Bytes::from_static(b"0123456789"),
            trailers: vec![("grpc-status".into(), Bytes::from_static(b"0"))],
        });
        // 2 + 3 header, 10 body, 11 + 1 trailer, 4 resource.
        assert_eq!(completed(response, Some("/w/1")).data_bytes(), 31);
        let value = Outcome::Value(Bytes::from_static(b"42"));
        assert_eq!(completed(value, None).data_bytes(), 2);
        let tombstone = Outcome::Tombstone {
            status: Some(201),
            headers: vec![("x".into(), Bytes::from_static(b"y"))],
            reason: "too big".into(),
        };
        assert_eq!(completed(tombstone, None).data_bytes(), 9);
    }

    #[test]
    fn outcome_round_trips() {
        let cases = [
            Outcome::Response(StoredResponse {
                status: 201,
                headers: vec![
                    ("location".into(), Bytes::from_static(b"/orders/1")),
                    ("link".into(), Bytes::from_static(b"<a>")),
                    ("link".into(), Bytes::from_static(b"<b>")),
                ],
                body: Bytes::from(vec![0u8, 255, 10, 13]),
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
                headers: vec![(
                    "content-type".into(),
                    Bytes::from_static(b"application/grpc"),
                )],
                body: Bytes::from_static(b"\0\0\0\0\x02hi"),
                trailers: vec![
                    ("grpc-status".into(), Bytes::from_static(b"0")),
                    ("grpc-message".into(), Bytes::from_static(b"")),
                ],
            }),
            Outcome::Value(Bytes::from_static(br#"{"a":1}"#)),
            Outcome::Tombstone {
                status: Some(200),
                headers: vec![],
                reason: "too large".into(),
            },
            Outcome::Tombstone {
                status: Some(201),
                headers: vec![
                    ("location".into(), Bytes::from_static(b"/orders/7")),
                    (
                        "content-type".into(),
                        Bytes::from_static(b"application/json"),
                    ),
                    ("link".into(), Bytes::from_static(b"<a>")),
                    ("link".into(), Bytes::from_static(b"\x80\xff")),
                ],
                reason: "response body larger than 1 bytes was not stored".into(),
            },
            Outcome::Tombstone {
                status: None,
                headers: vec![],
                reason: String::new(),
            },
        ];
        for c in cases {
            assert_eq!(Outcome::decode(&c.encode()).unwrap(), c);
        }
    }

    /// Tombstones written before headers were kept (tag `T`) still decode,
    /// with no headers; new ones are written with tag `H`.
    #[test]
    fn first_form_tombstones_still_decode() {
        let mut old = vec![1, b'T', 0, 201];
        old.extend_from_slice(&9u32.to_be_bytes());
        old.extend_from_slice(b"too large");
        assert_eq!(
            Outcome::decode(&old).unwrap(),
            Outcome::Tombstone {
                status: Some(201),
                headers: vec![],
                reason: "too large".into(),
            }
        );
        assert!(Outcome::decode(&[1, b'T', 0, 0, 0, 0, 0, 0]).is_ok());
        let new = Outcome::Tombstone {
            status: Some(201),
            headers: vec![],
            reason: "too large".into(),
        }
        .encode();
        assert_eq!(&new[..2], &[1, b'H']);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let response = Outcome::Response(StoredResponse {
            status: 200,
            headers: vec![("a".into(), Bytes::from_static(b"b"))],
            body: Bytes::from_static(b"hello"),
            trailers: Vec::new(),
        })
        .encode();
        let tombstone = Outcome::Tombstone {
            status: Some(201),
            headers: vec![("location".into(), Bytes::from_static(b"/o/1"))],
            reason: "big".into(),
        }
        .encode();
        let mut old_tombstone = vec![1, b'T', 0, 201];
        old_tombstone.extend_from_slice(&3u32.to_be_bytes());
        old_tombstone.extend_from_slice(b"big");
        for good in [&response, &tombstone, &old_tombstone] {
            assert!(Outcome::decode(good).is_ok());
            for n in 0..good.len() {
                assert!(Outcome::decode(&good[..n]).is_err(), "prefix {n}");
            }
            let mut trailing = good.clone();
            trailing.push(0);
            assert!(Outcome::decode(&trailing).is_err());
        }
        // A header name that is not UTF-8, in a tombstone.
        let mut bad_name = vec![1, b'H', 0, 201];
        bad_name.extend_from_slice(&1u32.to_be_bytes());
        bad_name.extend_from_slice(&1u32.to_be_bytes());
        bad_name.push(0xff);
        bad_name.extend_from_slice(&0u32.to_be_bytes());
        bad_name.extend_from_slice(&0u32.to_be_bytes());
        assert!(Outcome::decode(&bad_name).is_err());
        // A header count far beyond the input is refused, not allocated.
        let mut huge = vec![1, b'H', 0, 201];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Outcome::decode(&huge).is_err());
        assert!(Outcome::decode(&[9, b'R']).is_err());
        assert!(Outcome::decode(&[1, b'X']).is_err());
        assert!(Outcome::decode(&[1, b'V', 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn expiry_rules() {
        let now = Timestamp::from_millis(1_000);
        let mut r = Record {
            key: StorageKey::from_segments(&[b"k"]),
            fingerprint: Fingerprint::of_bytes("x", b""),
            fence: 1,
            attempts: 1,
            created_at: now,
            expires_at: now,
            state: RecordState::Pending(Pending {
                token: LeaseToken::new(),
                lease_deadline: now.saturating_add(Duration::from_secs(1)),
            }),
        };
        assert!(!r.is_expired(now), "a live lease keeps a pending record");
        r.state = RecordState::Completed(Completed {
            outcome: Outcome::Value(Bytes::new()),
            resource: None,
            completed_at: now,
            fence: 1,
        });
        assert_eq!(r.state.kind(), StateKind::Completed);
        assert!(r.is_expired(now));
        r.state = RecordState::Corrupted(Corrupted {
            detail: String::new(),
            detected_at: now,
        });
        assert!(!r.is_expired(Timestamp::MAX));
    }
}
