//! Canonical JSON: the one byte sequence an event is hashed over, per
//! RFC 8785, the JSON Canonicalization Scheme (JCS).

use std::fmt::Write as _;

use serde_json::{Number, Value};

/// Writes `value` as RFC 8785 canonical JSON (JCS).
///
/// The rules, which anyone re-computing a hash needs (any JCS
/// implementation gives the same bytes):
///
/// - object members sorted by key, comparing the keys as arrays of UTF-16
///   code units (RFC 8785 section 3.2.3; this differs from UTF-8 byte order
///   only for characters above U+FFFF against U+E000..U+FFFF);
/// - no whitespace outside strings;
/// - strings escaped with `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and
///   `\u00xx` (lowercase hex) for the other control characters below
///   U+0020; everything else, including `/`, DEL and non-ASCII, is written
///   as is, in UTF-8 (section 3.2.2.2);
/// - numbers as ECMAScript's `Number.prototype.toString` prints the IEEE 754
///   double (section 3.2.2.3): `1.5`, `1e+30`, `0.000001`, `1e-7`, `-0` as
///   `0`. Integers up to 2^53 in magnitude are exact; a larger integer is
///   written as the double nearest to it (`18446744073709551615` becomes
///   `18446744073709552000`), as every JCS implementation does: keep such
///   values as strings to keep every digit.
///
/// The order does not depend on how the map was built (serde_json's
/// `preserve_order` feature changes nothing here).
///
/// ```
/// use idempotency_audit::canonical_json;
/// let v = serde_json::json!({"b": [1, {"z": true, "a": null}], "a": "x\ny", "n": 1e30});
/// assert_eq!(canonical_json(&v), r#"{"a":"x\ny","b":[1,{"a":null,"z":true}],"n":1e+30}"#);
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
        Value::Number(n) => write_number(n, out),
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
            members.sort_unstable_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
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

/// Integers of at most this magnitude are exact doubles.
const MAX_SAFE: u64 = 1 << 53;

fn write_number(n: &Number, out: &mut String) {
    // Writing to a String cannot fail.
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE
    {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64()
        && u <= MAX_SAFE
    {
        let _ = write!(out, "{u}");
    } else {
        // Without serde_json's `arbitrary_precision`, every number has an f64 form.
        write_double(n.as_f64().unwrap_or(f64::NAN), out);
    }
}

/// ECMAScript `Number::toString(x)` (ECMA-262, 6.1.6.1.20), which RFC 8785
/// adopts. Rust's `{:e}` gives the shortest digit string that reads back
/// as `x` (the closest of them when there are several), which is the
/// `s`, `k` and `n` of that algorithm.
fn write_double(x: f64, out: &mut String) {
    if !x.is_finite() {
        // A serde_json Number is never NaN or infinite; JSON has no form for them.
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let (digits, exp) = shortest_digits(x.abs());
    let k = digits.len() as i32;
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(
            out,
            "e{}{}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    }
}

/// The digits and decimal exponent of the shortest decimal that reads back
/// as `x` (positive, finite), the one closest to `x`, and of two equally
/// close ones the one whose last digit is even, as ECMAScript requires.
fn shortest_digits(x: f64) -> (String, i32) {
    let (digits, exp) = split_sci(&format!("{x:e}"));
    // Rust's shortest form breaks an exact tie between two candidates of
    // the same length either way: look at the exact value to find ties.
    // Every double's decimal expansion has at most 767 significant digits.
    let (exact, exact_exp) = split_sci(&format!("{x:.780e}"));
    let k = digits.len();
    if exact_exp != exp || exact.len() <= k {
        return (digits, exp);
    }
    let (head, tail) = exact.split_at(k);
    let tie = tail.as_bytes()[0] == b'5' && tail.bytes().skip(1).all(|b| b == b'0');
    if !tie {
        return (digits, exp);
    }
    // The candidates are `head` (rounded down) and `head + 1` (rounded up).
    let up = increment(head);
    let even = |d: &str| {
        d.bytes()
            .last()
            .is_some_and(|b| (b - b'0').is_multiple_of(2))
    };
    let choice = if even(head) { head.to_owned() } else { up };
    if choice.len() != k || choice == digits {
        return (digits, exp);
    }
    let candidate = format!("{}.{}e{exp}", &choice[..1], &choice[1..]);
    if candidate.parse::<f64>() == Ok(x) {
        (choice, exp)
    } else {
        (digits, exp)
    }
}

/// `d.ddd…e±x` into its digits without trailing zeros and its exponent.
fn split_sci(sci: &str) -> (String, i32) {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    (digits, exp.parse().unwrap_or(0))
}

/// A decimal digit string plus one in its last place.
fn increment(digits: &str) -> String {
    let mut bytes = digits.as_bytes().to_vec();
    for b in bytes.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    bytes.insert(0, b'1');
    String::from_utf8(bytes).unwrap_or_default()
}

fn write_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Runs of bytes that need no escape are copied whole; every byte that
    // needs one is ASCII, so a run never ends inside a character.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// RFC 8785 section 3.2.2, the example input, verbatim.
    const RFC_3_2_2_INPUT: &str = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;

    /// RFC 8785 section 3.2.3, the expected output of that input.
    const RFC_3_2_3_OUTPUT: &str = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;

    /// RFC 8785 section 3.2.3, the sorting example, verbatim.
    const RFC_SORT_INPUT: &str = r#"{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"#;

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
    const RFC_APPENDIX_B: &[(u64, &str)] = &[
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];

    #[test]
    fn rfc8785_example() {
        let v: Value = serde_json::from_str(RFC_3_2_2_INPUT).unwrap();
        let out = canonical_json(&v);
        assert_eq!(out, RFC_3_2_3_OUTPUT);
        // Section 3.2.4: the UTF-8 bytes of the output.
        let bytes = "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 \
             75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a \
             5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 \
             65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 \
             5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 \
             30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d";
        let expected: Vec<u8> = bytes
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(out.as_bytes(), expected.as_slice());
    }

    #[test]
    fn rfc8785_sorts_by_utf16_code_units() {
        let v: Value = serde_json::from_str(RFC_SORT_INPUT).unwrap();
        let out = canonical_json(&v);
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ]
        .into();
        let positions: Vec<usize> = order
            .iter()
            .map(|name| out.find(&format!("\"{name}\"")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{out}");
        assert_eq!(
            out,
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\
             \"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        // UTF-8 byte order would have put the emoji last.
        let mut keys: Vec<&str> = vec!["\u{fb33}", "\u{1f600}"];
        keys.sort();
        assert_eq!(keys, ["\u{fb33}", "\u{1f600}"]);
    }

    #[test]
    fn rfc8785_appendix_b_numbers() {
        for (bits, want) in RFC_APPENDIX_B {
            let mut out = String::new();
            write_double(f64::from_bits(*bits), &mut out);
            assert_eq!(out, *want, "{bits:016x}");
            // Through serde_json too, when the value is not an integer in range.
            if let Some(n) = Number::from_f64(f64::from_bits(*bits)) {
                assert_eq!(canonical_json(&Value::Number(n)), *want, "{bits:016x}");
            }
        }
    }

    #[test]
    fn integers_beyond_two_to_the_53_become_doubles() {
        let v = json!([
            0,
            -1,
            9007199254740992u64,
            -9007199254740992i64,
            9007199254740993u64,
            18446744073709551615u64,
            -9223372036854775808i64,
            1.5,
            1e300,
            0.1,
            1e-7,
            123e18,
            1e21
        ]);
        assert_eq!(
            canonical_json(&v),
            "[0,-1,9007199254740992,-9007199254740992,9007199254740992,\
             18446744073709552000,-9223372036854776000,1.5,1e+300,0.1,1e-7,\
             123000000000000000000,1e+21]"
        );
    }

    #[test]
    fn sorts_nested_keys_and_drops_whitespace() {
        let v = json!({"z": 1, "a": {"y": [3, 2, {"k2": 0, "k1": 0}], "b": "c"}, "m": null});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"b":"c","y":[3,2,{"k1":0,"k2":0}]},"m":null,"z":1}"#
        );
    }

    #[test]
    fn escapes_per_rfc8785() {
        let s =
            "quote\" back\\ nl\n cr\r tab\t bs\u{08} ff\u{0c} nul\u{0} us\u{1f} del\u{7f} é 𝄞 /";
        let ours = canonical_json(&Value::String(s.into()));
        assert_eq!(
            ours,
            "\"quote\\\" back\\\\ nl\\n cr\\r tab\\t bs\\b ff\\f nul\\u0000 us\\u001f del\u{7f} é 𝄞 /\""
        );
        // serde_json escapes the same way.
        assert_eq!(ours, serde_json::to_string(s).unwrap());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
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

    /// Equal as JSON values, numbers compared as doubles (`1.0` reads back
    /// as the integer 1).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
            }
            _ => a == b,
        }
    }

    proptest! {
        /// Canonical output is valid JSON denoting the same value, and is a
        /// fixed point (what lets a verifier re-canonicalise stored content).
        #[test]
        fn parses_back_to_the_same_value(v in arb_json()) {
            let text = canonical_json(&v);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canonical_json(&back), text.clone());
            prop_assert!(same(&back, &v), "{} vs {}", back, v);
        }

        /// Every double is written so that it reads back as itself.
        #[test]
        fn doubles_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let mut out = String::new();
            write_double(f, &mut out);
            let back: f64 = out.parse().unwrap();
            prop_assert!(back == f, "{} -> {} -> {}", f, out, back);
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
