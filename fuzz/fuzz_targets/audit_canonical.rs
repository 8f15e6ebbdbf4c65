//! The audit trail's canonical JSON over any JSON document: never a panic;
//! the canonical text is JSON and canonicalising it again changes nothing;
//! a document whose numbers are integers a double holds exactly (RFC 8785
//! numbers are doubles) parses back to the same value.
#![no_main]

use idempotency_audit::canonical_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Whether every number of `v` is an integer of at most 2^53 in magnitude.
fn exact(v: &Value) -> bool {
    const EXACT: u64 = 1 << 53;
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|u| u <= EXACT)
            .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= EXACT))
            .unwrap_or(false),
        Value::Array(items) => items.iter().all(exact),
        Value::Object(m) => m.values().all(exact),
        _ => true,
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let canonical = canonical_json(&value);
    let parsed: Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
    assert_eq!(canonical_json(&parsed), canonical);
    if exact(&value) {
        assert_eq!(parsed, value);
    }
});
