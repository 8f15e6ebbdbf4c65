//! Records as JSON (`--json`) and as text tables. Never prints a lease
//! token: it is the owner's proof of ownership.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use idempotency_audit::EventTime;
use idempotency_core::{AdminRecord, Outcome, RecordState, Timestamp};
use serde_json::{Value, json};

use crate::duration::human;

/// RFC 3339 (UTC, milliseconds) of a store timestamp; `None` for "never".
pub(crate) fn time(t: Timestamp) -> Option<String> {
    if t == Timestamp::MAX || t.as_millis() >= idempotency_core::MAX_STORE_MILLIS * 3 {
        return None;
    }
    let at = UNIX_EPOCH + Duration::from_millis(t.as_millis());
    Some(EventTime::from_system_time(at).to_string())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fields(h: &[(String, Bytes)]) -> Value {
    Value::Array(h.iter().map(|(n, v)| json!([n, lossy(v)])).collect())
}

/// The body bytes of an outcome, if it has any.
pub(crate) fn body(r: &AdminRecord) -> Option<&[u8]> {
    match &r.record.state {
        RecordState::Completed(c) => match &c.outcome {
            Outcome::Response(resp) => Some(&resp.body),
            Outcome::Value(v) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

fn body_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(text) => json!({"encoding": "utf-8", "data": text}),
        Err(_) => json!({"encoding": "hex", "data": hex(b)}),
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn outcome(o: &Outcome) -> Value {
    match o {
        Outcome::Response(r) => json!({
            "kind": "response",
            "status": r.status,
            "headers": fields(&r.headers),
            "trailers": fields(&r.trailers),
            "body_bytes": r.body.len(),
        }),
        Outcome::Value(v) => json!({"kind": "value", "body_bytes": v.len()}),
        Outcome::Tombstone {
            status,
            headers,
            reason,
        } => json!({
            "kind": "tombstone",
            "status": status,
            "headers": fields(headers),
            "reason": reason,
        }),
        _ => json!({"kind": "unknown"}),
    }
}

/// A record as JSON (`with_body`: the stored body too).
pub(crate) fn record_json(r: &AdminRecord, with_body: bool) -> Value {
    let rec = &r.record;
    let mut v = json!({
        "key": rec.key.to_hex(),
        "state": rec.state.name(),
        "fence": rec.fence,
        "attempts": rec.attempts,
        "fingerprint": rec.fingerprint.to_hex(),
        "created_at": time(rec.created_at),
        "expires_at": time(rec.expires_at),
        "expired": r.expired,
        "stuck": r.is_stuck(),
        "read_at": time(r.now),
        "age_ms": r.now.saturating_since(rec.created_at).as_millis() as u64,
    });
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    match &rec.state {
        RecordState::Pending(p) => {
            obj.insert(
                "lease".into(),
                json!({
                    "deadline": time(p.lease_deadline),
                    "left_ms": r.lease_left().unwrap_or_default().as_millis() as u64,
                    "live": r.lease_live(),
                }),
            );
        }
        RecordState::Completed(c) => {
            obj.insert("completed_at".into(), json!(time(c.completed_at)));
            obj.insert("resource".into(), json!(c.resource));
            obj.insert("outcome".into(), outcome(&c.outcome));
        }
        RecordState::Failed(f) => {
            obj.insert(
                "failure".into(),
                json!({"reason": f.reason, "retryable": f.retryable, "failed_at": time(f.failed_at)}),
            );
        }
        RecordState::Corrupted(c) => {
            obj.insert(
                "corruption".into(),
                json!({"detail": c.detail, "detected_at": time(c.detected_at)}),
            );
        }
    }
    if with_body && let Some(b) = body(r) {
        obj.insert("body".into(), body_value(b));
    }
    v
}

/// One line for a record's state: what an operator needs to decide.
pub(crate) fn note(r: &AdminRecord) -> String {
    let rec = &r.record;
    if r.expired {
        return "expired: counts as absent; purge deletes it".into();
    }
    match &rec.state {
        RecordState::Pending(_) if r.is_stuck() => "stuck: lease ran out; release it".into(),
        RecordState::Pending(_) => format!(
            "running: lease live for {}",
            human(r.lease_left().unwrap_or_default())
        ),
        RecordState::Completed(c) => match &c.outcome {
            Outcome::Response(resp) => {
                format!("replays {} ({} bytes)", resp.status, resp.body.len())
            }
            Outcome::Value(v) => format!("replays a value ({} bytes)", v.len()),
            Outcome::Tombstone { status, .. } => match status {
                Some(s) => format!("replays {s} without a body (tombstone)"),
                None => "replays a tombstone".into(),
            },
            _ => "replays an outcome".into(),
        },
        RecordState::Failed(f) => format!(
            "{}: {}",
            if f.retryable { "retryable" } else { "terminal" },
            one_line(&f.reason, 60)
        ),
        RecordState::Corrupted(c) => format!("blocks its key: {}", one_line(&c.detail, 60)),
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// A record as `name: value` lines.
pub(crate) fn record_text(r: &AdminRecord, with_body: bool) -> String {
    let rec = &r.record;
    let never = || "never".to_owned();
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<13} {value}");
    };
    line("key", rec.key.to_hex());
    line("state", rec.state.name().to_owned());
    line("note", note(r));
    line("fence", rec.fence.to_string());
    line("attempts", rec.attempts.to_string());
    line("fingerprint", rec.fingerprint.to_hex());
    line(
        "created",
        format!(
            "{} ({} ago)",
            time(rec.created_at).unwrap_or_else(never),
            human(r.now.saturating_since(rec.created_at))
        ),
    );
    line(
        "expires",
        match time(rec.expires_at) {
            None => never(),
            Some(t) if r.expired => format!("{t} (expired)"),
            Some(t) => format!("{t} (in {})", human(rec.expires_at.saturating_since(r.now))),
        },
    );
    match &rec.state {
        RecordState::Pending(p) => {
            let left = r.lease_left().unwrap_or_default();
            line(
                "lease",
                format!(
                    "until {} ({})",
                    time(p.lease_deadline).unwrap_or_else(never),
                    if left.is_zero() {
                        "ran out".to_owned()
                    } else {
                        format!("{} left", human(left))
                    }
                ),
            );
        }
        RecordState::Completed(c) => {
            line("completed", time(c.completed_at).unwrap_or_else(never));
            if let Some(res) = &c.resource {
                line("resource", res.clone());
            }
            match &c.outcome {
                Outcome::Response(resp) => {
                    line("status", resp.status.to_string());
                    for (n, v) in &resp.headers {
                        line("header", format!("{n}: {}", lossy(v)));
                    }
                    for (n, v) in &resp.trailers {
                        line("trailer", format!("{n}: {}", lossy(v)));
                    }
                    line("body", format!("{} bytes", resp.body.len()));
                }
                Outcome::Value(v) => line("value", format!("{} bytes", v.len())),
                Outcome::Tombstone {
                    status,
                    headers,
                    reason,
                } => {
                    line(
                        "status",
                        status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    );
                    for (n, v) in headers {
                        line("header", format!("{n}: {}", lossy(v)));
                    }
                    line("tombstone", reason.clone());
                }
                _ => line("outcome", "of an unknown kind".into()),
            }
        }
        RecordState::Failed(f) => {
            line("failed", time(f.failed_at).unwrap_or_else(never));
            line("retryable", f.retryable.to_string());
            line("reason", f.reason.clone());
        }
        RecordState::Corrupted(c) => {
            line("detected", time(c.detected_at).unwrap_or_else(never));
            line("detail", c.detail.clone());
        }
    }
    if with_body && let Some(b) = body(r) {
        out.push('\n');
        match std::str::from_utf8(b) {
            Ok(text) => out.push_str(text),
            Err(_) => {
                out.push_str("(not UTF-8; hex)\n");
                out.push_str(&hex(b));
            }
        }
        out.push('\n');
    }
    out
}

/// Records as a table, one per line.
pub(crate) fn list_text(records: &[AdminRecord], matched: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<64}  {:<9}  {:>16}  {:>8}  {:>7}  NOTE",
        "KEY", "STATE", "FENCE", "ATTEMPTS", "AGE"
    );
    for r in records {
        let _ = writeln!(
            out,
            "{:<64}  {:<9}  {:>16}  {:>8}  {:>7}  {}",
            r.record.key.to_hex(),
            r.record.state.name(),
            r.record.fence,
            r.record.attempts,
            human(r.now.saturating_since(r.record.created_at)),
            note(r)
        );
    }
    let _ = writeln!(out, "{} of {matched} matching records", records.len());
    out
}
