//! Turning script replies into core types.

use idempotency_core::{
    Completed, Corrupted, Failed, Fingerprint, LeaseToken, Outcome, Pending, Record, RecordState,
    StorageKey, Timestamp,
};
use redis::Value;

use crate::error::ProtocolError;

/// The record hash's fields, in the order the scripts return them
/// (`FIELDS` in `lua/common.lua`).
const S: usize = 0;
const F: usize = 1;
const N: usize = 2;
const A: usize = 3;
const C: usize = 4;
const E: usize = 5;
const T: usize = 6;
const D: usize = 7;
const O: usize = 8;
const R: usize = 9;
const X: usize = 10;
const Y: usize = 11;
const W: usize = 12;
/// `v`, the watched mark of a pending record: read by the scripts only.
const FIELD_COUNT: usize = 14;

/// The field names, in that order (`FIELDS` in `lua/common.lua`).
pub(crate) const FIELD_NAMES: [&str; FIELD_COUNT] = [
    "s", "f", "n", "a", "c", "e", "t", "d", "o", "r", "x", "y", "w", "v",
];

pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(_) | Value::SimpleString(_) => {
            number(bytes(v)?).and_then(|n| n.try_into().ok())
        }
        _ => None,
    }
}

pub(crate) fn uint(v: &Value) -> Result<u64, ProtocolError> {
    int(v)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(ProtocolError("expected a non-negative integer"))
}

pub(crate) fn array(v: &Value) -> Result<&[Value], ProtocolError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(ProtocolError("expected an array")),
    }
}

pub(crate) fn tag(items: &[Value]) -> Result<&[u8], ProtocolError> {
    items
        .first()
        .and_then(bytes)
        .ok_or(ProtocolError("expected a reply tag"))
}

pub(crate) fn text(v: &Value) -> String {
    bytes(v).map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

/// A stored integer: plain decimal (what the scripts write), tolerating an
/// integral float spelling.
fn number(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let f = s.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9.0e15).then_some(f as u64)
}

fn field(fields: &[Value], i: usize) -> Option<&[u8]> {
    fields.get(i).and_then(bytes)
}

fn num(fields: &[Value], i: usize, what: &'static str) -> Result<u64, String> {
    field(fields, i)
        .and_then(number)
        .ok_or_else(|| format!("stored {what} is not a number"))
}

fn ts(fields: &[Value], i: usize, what: &'static str) -> Result<Timestamp, String> {
    num(fields, i, what).map(Timestamp::from_millis)
}

/// The fence of a raw record, if readable (for conditional corruption marks).
pub(crate) fn fence_of(fields: &[Value]) -> Option<u64> {
    field(fields, N).and_then(number)
}

/// The state letter of a raw record.
pub(crate) fn state_of(fields: &[Value]) -> Option<&[u8]> {
    field(fields, S)
}

pub(crate) fn decode_outcome(b: &[u8]) -> Result<Outcome, String> {
    Outcome::decode(b).map_err(|e| e.to_string())
}

pub(crate) fn decode_resource(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Nil => Ok(None),
        other => {
            let b = bytes(other).ok_or_else(|| "stored resource is not a string".to_owned())?;
            String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| "stored resource is not UTF-8".to_owned())
        }
    }
}

/// Builds a [`Record`] from the hash fields a script returned. `Err` holds
/// why the record cannot be decoded (it is then marked corrupted).
pub(crate) fn record(key: StorageKey, fields: &[Value]) -> Result<Record, String> {
    if fields.len() != FIELD_COUNT {
        return Err("record has an unexpected shape".to_owned());
    }
    let state = field(fields, S).unwrap_or_default();
    if state == b"X" {
        let fingerprint = field(fields, F)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .unwrap_or([0; 32]);
        let num_or_zero = |i| field(fields, i).and_then(number).unwrap_or(0);
        return Ok(Record {
            key,
            fingerprint: Fingerprint::from_bytes(fingerprint),
            fence: num_or_zero(N),
            attempts: u32::try_from(num_or_zero(A)).unwrap_or(u32::MAX),
            created_at: Timestamp::from_millis(num_or_zero(C)),
            expires_at: Timestamp::MAX,
            state: RecordState::Corrupted(Corrupted {
                detail: text(&fields[X]),
                detected_at: Timestamp::from_millis(num_or_zero(W)),
            }),
        });
    }
    let fingerprint = field(fields, F)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| "stored fingerprint is malformed".to_owned())?;
    let attempts = u32::try_from(num(fields, A, "attempt count")?)
        .map_err(|_| "stored attempt count is out of range".to_owned())?;
    let state = match state {
        b"P" => {
            let token = field(fields, T)
                .and_then(|b| uuid::Uuid::from_slice(b).ok())
                .ok_or_else(|| "stored lease token is malformed".to_owned())?;
            RecordState::Pending(Pending {
                token: LeaseToken::from_uuid(token),
                lease_deadline: ts(fields, D, "lease deadline")?,
            })
        }
        b"C" => RecordState::Completed(Completed {
            outcome: decode_outcome(field(fields, O).unwrap_or_default())?,
            resource: decode_resource(&fields[R])?,
            completed_at: ts(fields, W, "completion time")?,
            fence: num(fields, N, "fence")?,
        }),
        b"F" => RecordState::Failed(Failed {
            reason: text(&fields[X]),
            retryable: field(fields, Y) == Some(b"1"),
            failed_at: ts(fields, W, "failure time")?,
        }),
        _ => return Err("unknown record state".to_owned()),
    };
    Ok(Record {
        key,
        fingerprint: Fingerprint::from_bytes(fingerprint),
        fence: num(fields, N, "fence")?,
        attempts,
        created_at: ts(fields, C, "creation time")?,
        expires_at: ts(fields, E, "expiry time")?,
        state,
    })
}
