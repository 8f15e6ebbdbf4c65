//! Property tests over the entry points the `fuzz/` targets drive (run on
//! stable in `cargo test`; the fuzz targets need nightly and cargo-fuzz, see
//! `RELIABILITY.md`): any input is an answer or a typed error, never a
//! panic, and what is meant to round-trip does.
//!
//! | entry point | fuzz target | property |
//! |---|---|---|
//! | `parse_key_header` | `key_header` | never panics; an accepted key is 1 to 255 printable ASCII bytes; a bare key and its sf-string quoting are the same key |
//! | `Fingerprint::compute` (JSON) | `fingerprint` | never panics; key order and whitespace do not change a JSON body's fingerprint; a different value does |
//! | `Fingerprint::compute` (raw) | `fingerprint` | never panics; a body that is not JSON is hashed as its bytes |
//! | `Outcome::decode` | `outcome_decode` | never panics on any bytes; `decode(encode(o)) == o`; a truncated or extended encoding is an error |
//! | `idempotency_audit::canonical_json` | `audit_canonical` | parses back to the same value; canonical of canonical is itself; member order does not matter |

use bytes::Bytes;
use idempotency_core::{Fingerprint, FingerprintMode, IdempotencyKey, Outcome, StoredResponse};
use idempotency_tower::parse_key_header;
use proptest::prelude::*;
use serde_json::Value;

/// The largest integer an IEEE double holds exactly (2^53): RFC 8785 numbers
/// are doubles, so a canonical form keeps integers up to it exactly and a
/// larger one as its nearest double.
const EXACT: i64 = 1 << 53;

/// Any JSON value, a few levels deep, object keys unique, floats any finite
/// value (the workspace's `serde_json` reads every one back exactly: its
/// `float_roundtrip` feature is on). With `doubles`, integers are those a
/// double holds exactly, as in RFC 8785.
fn json_with(doubles: bool) -> impl Strategy<Value = Value> {
    let (int, uint) = if doubles {
        (
            (-EXACT..=EXACT).prop_map(Value::from).boxed(),
            (0..=EXACT.unsigned_abs()).prop_map(Value::from).boxed(),
        )
    } else {
        (
            any::<i64>().prop_map(Value::from).boxed(),
            any::<u64>().prop_map(Value::from).boxed(),
        )
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int,
        uint,
        (-1.0e12_f64..1.0e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json() -> impl Strategy<Value = Value> {
    json_with(false)
}

/// `value` serialized with its object members in reverse order and spaces
/// around every token: the same JSON value, other bytes.
fn reordered(value: &Value) -> String {
    match value {
        Value::Object(m) => {
            let members: Vec<String> = m
                .iter()
                .rev()
                .map(|(k, v)| format!(" {} : {} ", Value::String(k.clone()), reordered(v)))
                .collect();
            format!("{{ {} }}", members.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reordered).collect();
            format!("[ {} ]", items.join(" , "))
        }
        other => other.to_string(),
    }
}

fn headers() -> impl Strategy<Value = Vec<(String, Bytes)>> {
    prop::collection::vec(
        (
            "[a-z][a-z0-9-]{0,15}",
            prop::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(k, v)| (k, Bytes::from(v))),
        0..5,
    )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (
            100_u16..600,
            headers(),
            prop::collection::vec(any::<u8>(), 0..256),
            headers()
        )
            .prop_map(|(status, headers, body, trailers)| {
                Outcome::Response(StoredResponse {
                    status,
                    headers,
                    body: Bytes::from(body),
                    trailers,
                })
            }),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|v| Outcome::Value(Bytes::from(v))),
        (prop::option::of(100_u16..600), headers(), ".{0,40}").prop_map(
            |(status, headers, reason)| Outcome::Tombstone {
                status,
                headers,
                reason,
            }
        ),
    ]
}

proptest! {
    #[test]
    fn key_header_never_panics(value in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(key) = parse_key_header(&value) {
            let bytes = key.expose_secret();
            prop_assert!((1..=255).contains(&bytes.len()));
            prop_assert!(bytes.iter().all(|b| (0x20..=0x7e).contains(b)));
        }
    }

    #[test]
    fn a_bare_key_and_its_quoting_are_one_key(key in "[!#-\\[\\]-~][ -~]{0,200}") {
        // Printable ASCII, not starting with `"`, no edge whitespace.
        let key = key.trim_end().to_owned();
        let bare = parse_key_header(key.as_bytes()).unwrap();
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        prop_assert_eq!(parse_key_header(quoted.as_bytes()).unwrap(), bare.clone());
        prop_assert_eq!(IdempotencyKey::new(key.clone()).unwrap(), bare);
    }

    #[test]
    fn json_fingerprints_ignore_order_and_whitespace(value in json(), other in json()) {
        let compact = serde_json::to_vec(&value).unwrap();
        let spaced = reordered(&value);
        let a = Fingerprint::compute("POST", "/r", &compact, &FingerprintMode::Body).unwrap();
        let b = Fingerprint::compute("POST", "/r", spaced.as_bytes(), &FingerprintMode::Body).unwrap();
        prop_assert_eq!(a, b, "{} vs {}", String::from_utf8_lossy(&compact), spaced);
        let c = Fingerprint::compute("POST", "/r", &serde_json::to_vec(&other).unwrap(), &FingerprintMode::Body).unwrap();
        prop_assert_eq!(a == c, idempotency_core::canonical_json(&value) == idempotency_core::canonical_json(&other));
        // The route and the method are part of it.
        let d = Fingerprint::compute("PUT", "/r", &compact, &FingerprintMode::Body).unwrap();
        prop_assert_ne!(a, d);
    }

    #[test]
    fn raw_fingerprints_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let a = Fingerprint::compute("POST", "/r", &body, &FingerprintMode::Body);
        if serde_json::from_slice::<Value>(&body).is_err() {
            // Not JSON: the bytes themselves count, one changed byte changes it.
            let a = a.unwrap();
            let mut flipped = body.clone();
            flipped.push(b'x');
            if serde_json::from_slice::<Value>(&flipped).is_err() {
                let b = Fingerprint::compute("POST", "/r", &flipped, &FingerprintMode::Body).unwrap();
                prop_assert_ne!(a, b);
            }
        }
        let _ = Fingerprint::compute("POST", "/r", &body, &FingerprintMode::fields(["/a", "/b/0"]));
        prop_assert_eq!(
            Fingerprint::compute("POST", "/r", &body, &FingerprintMode::None).unwrap(),
            Fingerprint::compute("POST", "/r", b"other", &FingerprintMode::None).unwrap()
        );
    }

    #[test]
    fn outcome_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(o) = Outcome::decode(&bytes) {
            // Whatever decodes encodes back to a decoding of the same outcome.
            prop_assert_eq!(Outcome::decode(&o.encode()).unwrap(), o);
        }
    }

    #[test]
    fn outcomes_round_trip(o in outcome(), extra in any::<u8>()) {
        let encoded = o.encode();
        prop_assert_eq!(Outcome::decode(&encoded).unwrap(), o);
        for cut in 0..encoded.len() {
            prop_assert!(Outcome::decode(&encoded[..cut]).is_err(), "truncated at {}", cut);
        }
        let mut longer = encoded.clone();
        longer.push(extra);
        prop_assert!(Outcome::decode(&longer).is_err(), "trailing byte");
    }

    #[test]
    fn audit_canonical_form(value in json_with(true)) {
        let canonical = idempotency_audit::canonical_json(&value);
        let parsed: Value = serde_json::from_str(&canonical).unwrap();
        prop_assert_eq!(&parsed, &value);
        prop_assert_eq!(idempotency_audit::canonical_json(&parsed), canonical.clone());
        let reparsed: Value = serde_json::from_str(&reordered(&value)).unwrap();
        prop_assert_eq!(idempotency_audit::canonical_json(&reparsed), canonical);
    }

    #[test]
    fn an_integer_beyond_a_double_is_canonical_as_its_double(n in any::<i64>()) {
        let canonical = idempotency_audit::canonical_json(&Value::from(n));
        #[allow(clippy::cast_precision_loss)]
        let double = n as f64;
        prop_assert_eq!(&canonical, &idempotency_audit::canonical_json(&Value::from(double)));
        if n.abs() <= EXACT {
            prop_assert_eq!(canonical, n.to_string());
        }
    }
}
