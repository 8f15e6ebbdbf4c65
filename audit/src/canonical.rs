//! Canonical JSON: the one byte sequence an event is hashed over.

use serde_json::Value;

/// Writes `value` as canonical JSON.
///
/// The rules, which anyone re-computing a hash needs:
///
/// - object members sorted by key, comparing the keys' UTF-8 bytes;
/// - no whitespace outside strings;
/// - strings escaped as `serde_json` escapes them (`"`, `\`, and control
///   characters; `\n`, `\t`, ... where a short form exists, `\u00XX`
///   otherwise); everything else, including non-ASCII, is written as is;
/// - numbers as `serde_json` prints them (integers in decimal, floats in
///   their shortest round-trip form, such as `1.5` or `1e+300`).
///
/// The order does not depend on how the map was built (serde_json's
/// `preserve_order` feature changes nothing here).
///
/// ```
/// use idempotency_audit::canonical_json;
/// let v = serde_json::json!({"b": [1, {"z": true, "a": null}], "a": "x\ny"});
/// assert_eq!(canonical_json(&v), r#"{"a":"x\ny","b":[1,{"a":null,"z":true}]}"#);
/// ```
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn sorts_nested_keys_and_drops_whitespace() {
        let v = json!({"z": 1, "a": {"y": [3, 2, {"k2": 0, "k1": 0}], "b": "c"}, "m": null});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"b":"c","y":[3,2,{"k1":0,"k2":0}]},"m":null,"z":1}"#
        );
    }

    #[test]
    fn key_order_is_byte_order() {
        let v = json!({"é": 1, "z": 2, "Z": 3, "": 4, "aa": 5, "a": 6});
        assert_eq!(
            canonical_json(&v),
            r#"{"":4,"Z":3,"a":6,"aa":5,"z":2,"é":1}"#
        );
    }

    #[test]
    fn escapes_like_serde_json() {
        let s =
            "quote\" back\\ nl\n cr\r tab\t bs\u{08} ff\u{0c} nul\u{0} us\u{1f} del\u{7f} é 𝄞 /";
        let ours = canonical_json(&Value::String(s.into()));
        assert_eq!(ours, serde_json::to_string(s).unwrap());
        assert!(ours.contains("\\u0000") && ours.contains("\\u001f"));
    }

    #[test]
    fn numbers_are_stable() {
        let v = json!([
            0,
            -1,
            18446744073709551615u64,
            -9223372036854775808i64,
            1.5,
            1e300,
            0.1
        ]);
        assert_eq!(
            canonical_json(&v),
            "[0,-1,18446744073709551615,-9223372036854775808,1.5,1e+300,0.1]"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // Decimal fractions that serde_json's parser reads back exactly (its
            // default parser may be one ulp off on arbitrary doubles).
            (any::<i32>(), 0..6i32).prop_map(|(m, e)| json!(f64::from(m) / 10f64.powi(e))),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Canonical output is valid JSON denoting the same value, and is a fixed point.
        #[test]
        fn parses_back_to_the_same_value(v in arb_json()) {
            let text = canonical_json(&v);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical_json(&back), text);
        }

        /// Insertion order never matters.
        #[test]
        fn independent_of_insertion_order(entries in prop::collection::btree_map(".{0,6}", any::<i32>(), 0..12)) {
            let forward: serde_json::Map<String, Value> =
                entries.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let backward: serde_json::Map<String, Value> =
                entries.iter().rev().map(|(k, v)| (k.clone(), json!(v))).collect();
            prop_assert_eq!(
                canonical_json(&Value::Object(forward)),
                canonical_json(&Value::Object(backward))
            );
        }
    }
}
