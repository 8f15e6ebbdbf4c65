//! The audit trail's canonical JSON over any JSON document: never a panic;
//! the canonical text is JSON; without floats it parses back to the same
//! value and canonicalising it again changes nothing. (`serde_json` without
//! `float_roundtrip` reads some 16- and 17-digit decimals one unit in the
//! last place off, so a float's text can change once: see RELIABILITY.md.)
#![no_main]

use idempotency_audit::canonical_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    let canonical = canonical_json(&value);
    let parsed: Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
    if !has_float(&value) {
        assert_eq!(parsed, value);
        assert_eq!(canonical_json(&parsed), canonical);
    }
});
