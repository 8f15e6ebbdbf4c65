//! Request fingerprints: what makes two requests "the same request".
//!
//! A [`Fingerprint`] is SHA-256 over length-prefixed segments: method, route,
//! and the body as selected by a [`FingerprintMode`]. JSON bodies are
//! canonicalised first (object keys sorted, no insignificant whitespace), so a
//! client that re-serialises its payload with another key order still matches,
//! while any change of value does not.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::key::hex;

/// What part of the body takes part in the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FingerprintMode {
    /// The whole body: canonical JSON when it parses as JSON, raw bytes otherwise.
    #[default]
    Body,
    /// Only the values at these JSON pointers (RFC 6901). A missing field
    /// counts as `null`. A body that is not JSON is an error.
    Fields(Vec<String>),
    /// Method and route only: the body is ignored.
    None,
}

impl FingerprintMode {
    /// Convenience constructor for [`FingerprintMode::Fields`].
    pub fn fields<I, S>(pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Fields(pointers.into_iter().map(Into::into).collect())
    }
}

/// Why a fingerprint could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// [`FingerprintMode::Fields`] needs a JSON body.
    #[error("request body is not valid JSON: {reason}")]
    NotJson {
        /// Parser message.
        reason: String,
    },
}

/// SHA-256 identity of a request's meaningful content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Computes a fingerprint.
    ///
    /// ```
    /// use idempotency_core::{Fingerprint, FingerprintMode};
    /// let a = Fingerprint::compute("POST", "/orders", br#"{"sku":"A","qty":1}"#, &FingerprintMode::Body).unwrap();
    /// let b = Fingerprint::compute("POST", "/orders", b"{ \"qty\": 1, \"sku\": \"A\" }", &FingerprintMode::Body).unwrap();
    /// let c = Fingerprint::compute("POST", "/orders", br#"{"sku":"A","qty":2}"#, &FingerprintMode::Body).unwrap();
    /// assert_eq!(a, b);
    /// assert_ne!(a, c);
    /// ```
    ///
    /// # Errors
    ///
    /// [`FingerprintError::NotJson`] in [`FingerprintMode::Fields`] when the body is not JSON.
    pub fn compute(
        method: &str,
        route: &str,
        body: &[u8],
        mode: &FingerprintMode,
    ) -> Result<Self, FingerprintError> {
        let mut h = Sha256::new();
        h.update(b"idempotency-rs/fingerprint/v1");
        seg(&mut h, method.as_bytes());
        seg(&mut h, route.as_bytes());
        match mode {
            FingerprintMode::None => seg(&mut h, b"none"),
            FingerprintMode::Body => match canonical_json_of_bytes(body) {
                Some(canonical) => {
                    seg(&mut h, b"json");
                    seg(&mut h, &canonical);
                }
                None => {
                    seg(&mut h, b"raw");
                    seg(&mut h, body);
                }
            },
            FingerprintMode::Fields(pointers) => {
                let v: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| FingerprintError::NotJson {
                        reason: e.to_string(),
                    })?;
                seg(&mut h, b"fields");
                for p in pointers {
                    seg(&mut h, p.as_bytes());
                    let field = v.pointer(p).unwrap_or(&serde_json::Value::Null);
                    seg(&mut h, &canonical_json(field));
                }
            }
        }
        Ok(Self(h.finalize().into()))
    }

    /// Fingerprint of arbitrary bytes under a name (for non-HTTP operations).
    pub fn of_bytes(operation: &str, input: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"idempotency-rs/fingerprint/v1");
        seg(&mut h, operation.as_bytes());
        seg(&mut h, b"bytes");
        seg(&mut h, input);
        Self(h.finalize().into())
    }

    /// Fingerprint of a serialisable input (canonical JSON), for the programmatic API.
    ///
    /// # Errors
    ///
    /// The input's `Serialize` impl failed.
    pub fn of_value<T: Serialize + ?Sized>(
        operation: &str,
        input: &T,
    ) -> Result<Self, serde_json::Error> {
        let v = serde_json::to_value(input)?;
        Ok(Self::of_bytes(operation, &canonical_json(&v)))
    }

    /// Wraps 32 bytes read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex(&self.0[..6]))
    }
}

fn seg(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Canonical JSON text of a value: object keys sorted by their UTF-8 bytes,
/// no whitespace, strings escaped by serde_json's rules.
///
/// ```
/// let v: serde_json::Value = serde_json::from_str(r#"{ "b": [1, {"d":1,"c":2}], "a": "x" }"#).unwrap();
/// assert_eq!(idempotency_core::canonical_json(&v), br#"{"a":"x","b":[1,{"c":2,"d":1}]}"#);
/// ```
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The canonical JSON text of a JSON document, or `None` when `body` is not
/// JSON. The same bytes as [`canonical_json`] of the parsed
/// `serde_json::Value`, written while parsing, without building the tree.
fn canonical_json_of_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut fallback = false;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::de::DeserializeSeed::deserialize(
        Canonical {
            out: &mut out,
            fallback: &mut fallback,
        },
        &mut de,
    )
    .and_then(|()| de.end());
    match parsed {
        Ok(()) => Some(out),
        // An object whose first key is one of serde_json's private tokens
        // (raw values, arbitrary-precision numbers): `Value` gives it a
        // meaning of its own, so take the `Value` path for exactly its result.
        Err(_) if fallback => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|v| canonical_json(&v)),
        Err(_) => None,
    }
}

/// Writes the canonical text of one JSON value to `out` as it is parsed.
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    fallback: &'a mut bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Canonical<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Writes `v` with serde_json's serializer (numbers, escaped strings).
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

// Each visit mirrors what `serde_json::Value`'s visitor keeps of a token, so
// the text is the serialisation of the `Value` that would have been built.
impl<'de> serde::de::Visitor<'de> for Canonical<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        write_json(self.out, &v);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        write_json(self.out, &v);
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // `Value` keeps a non-finite float as `null`; so does the serializer.
        write_json(self.out, &v);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write_json(self.out, v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let element = Canonical {
                out: &mut *self.out,
                fallback: &mut *self.fallback,
            };
            if seq.next_element_seed(element)?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The values are written after `start` in arrival order, then the
        // object is rebuilt with its keys sorted.
        let start = self.out.len();
        let mut entries: Vec<(std::borrow::Cow<'de, str>, usize, usize)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if entries.is_empty() && key.starts_with("$serde_json::private::") {
                *self.fallback = true;
                return Err(serde::de::Error::custom("serde_json private token"));
            }
            let from = self.out.len();
            map.next_value_seed(Canonical {
                out: &mut *self.out,
                fallback: &mut *self.fallback,
            })?;
            entries.push((key, from, self.out.len()));
        }
        // Stable: of repeated keys, the last one is kept, as `Value` does.
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut object = Vec::with_capacity(self.out.len() - start + entries.len() * 8 + 2);
        object.push(b'{');
        let mut written = 0;
        for (i, (key, from, to)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if written > 0 {
                object.push(b',');
            }
            write_json(&mut object, key.as_ref());
            object.push(b':');
            object.extend_from_slice(&self.out[*from..*to]);
            written += 1;
        }
        object.push(b'}');
        self.out.truncate(start);
        self.out.extend_from_slice(&object);
        Ok(())
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(method: &str, route: &str, body: &[u8], mode: &FingerprintMode) -> Fingerprint {
        Fingerprint::compute(method, route, body, mode).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let m = FingerprintMode::Body;
        let a = fp("POST", "/o", br#"{"a":1,"b":{"x":[1,2],"y":null}}"#, &m);
        let b = fp(
            "POST",
            "/o",
            b"{\n  \"b\": { \"y\": null, \"x\": [1, 2] },\n  \"a\": 1\n}",
            &m,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn any_value_change_matters() {
        let m = FingerprintMode::Body;
        let base = fp("POST", "/o", br#"{"a":1,"b":[1,2]}"#, &m);
        for other in [
            br#"{"a":2,"b":[1,2]}"#.as_slice(),
            br#"{"a":"1","b":[1,2]}"#,
            br#"{"a":1,"b":[2,1]}"#,
            br#"{"a":1,"b":[1,2],"c":null}"#,
            br#"{"a":1}"#,
        ] {
            assert_ne!(base, fp("POST", "/o", other, &m));
        }
    }

    #[test]
    fn method_and_route_matter() {
        let m = FingerprintMode::None;
        assert_ne!(fp("POST", "/a", b"", &m), fp("PATCH", "/a", b"", &m));
        assert_ne!(fp("POST", "/a", b"", &m), fp("POST", "/b", b"", &m));
        assert_eq!(fp("POST", "/a", b"x", &m), fp("POST", "/a", b"y", &m));
    }

    #[test]
    fn raw_bodies_are_hashed_as_bytes() {
        let m = FingerprintMode::Body;
        assert_eq!(
            fp("POST", "/a", b"\x00\xff", &m),
            fp("POST", "/a", b"\x00\xff", &m)
        );
        assert_ne!(
            fp("POST", "/a", b"\x00\xff", &m),
            fp("POST", "/a", b"\x00\xfe", &m)
        );
        assert_ne!(fp("POST", "/a", b"", &m), fp("POST", "/a", b" ", &m));
    }

    #[test]
    fn selected_fields_only() {
        let m = FingerprintMode::fields(["/sku", "/qty"]);
        let a = fp("POST", "/o", br#"{"sku":"A","qty":1,"note":"x"}"#, &m);
        let b = fp("POST", "/o", br#"{"qty":1,"sku":"A","note":"y"}"#, &m);
        let c = fp("POST", "/o", br#"{"sku":"A","qty":2}"#, &m);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(matches!(
            Fingerprint::compute("POST", "/o", b"nope", &m),
            Err(FingerprintError::NotJson { .. })
        ));
    }

    #[test]
    fn canonical_form_escapes_and_sorts() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"é":1,"e":"a\"b","A":[true,false,1.5]}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"A":[true,false,1.5],"e":"a\"b","é":1}"#
        );
    }

    /// What the fingerprint hashed before the streaming canonicaliser.
    fn via_value(body: &[u8]) -> Option<Vec<u8>> {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|v| canonical_json(&v))
    }

    #[test]
    fn streaming_canonical_form_equals_the_value_form() {
        for body in [
            br#"{"sku":"SKU-1","quantity":1,"note":"bench"}"#.as_slice(),
            br#"{"b":1,"a":2,"b":3}"#,
            br#"{"a":{"z":[],"y":{}},"a":null}"#,
            br#"[1,-1,0,-0,1.0,1e5,1E-7,-0.0,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809]"#,
            br#"{"\u0041":"\u00e9\ud83d\ude00\n\t\"\\\/","A":1}"#,
            "{\"é\":1,\"e\":2,\"\u{10ffff}\":3}".as_bytes(),
            br#" { } "#,
            b"[[[[[]]]]]",
            br#"{"$serde_json::private::RawValue":"[1,2]"}"#,
            br#"{"$serde_json::private::Number":"1.50"}"#,
            br#"{"a":1,"$serde_json::private::RawValue":"x"}"#,
            br#""just a string""#,
            b"true",
            b"null",
            b"1e400",
            b"{\"a\":1,}",
            b"[1,]",
            b"{\"a\" 1}",
            b"\"\xff\"",
            b"{} {}",
            b"",
            b"   ",
            b"\x00\xff",
        ] {
            assert_eq!(
                canonical_json_of_bytes(body),
                via_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(canonical_json_of_bytes(deep.as_bytes()), None);
        assert_eq!(via_value(deep.as_bytes()), None);
    }

    /// A JSON document written by hand: any key order, repeated keys, spacing.
    #[derive(Debug, Clone)]
    enum Doc {
        Null,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Str(String),
        Arr(Vec<Doc>),
        Obj(Vec<(String, Doc)>),
    }

    impl Doc {
        fn write(&self, out: &mut String, space: &str) {
            match self {
                Doc::Null => out.push_str("null"),
                Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Doc::Int(n) => out.push_str(&n.to_string()),
                Doc::UInt(n) => out.push_str(&n.to_string()),
                Doc::Float(f) => out.push_str(&format!("{f:e}")),
                Doc::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                Doc::Arr(items) => {
                    out.push('[');
                    for (i, d) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(space);
                        d.write(out, space);
                    }
                    out.push(']');
                }
                Doc::Obj(entries) => {
                    out.push('{');
                    for (i, (k, d)) in entries.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(space);
                        out.push_str(&serde_json::to_string(k).unwrap());
                        out.push_str(space);
                        out.push(':');
                        d.write(out, space);
                    }
                    out.push_str(space);
                    out.push('}');
                }
            }
        }
    }

    fn doc() -> impl proptest::strategy::Strategy<Value = Doc> {
        use proptest::prelude::*;
        let key = prop_oneof!["[a-c]", "[a-zA-Z0-9_é😀]{0,6}", any::<String>()];
        let leaf = prop_oneof![
            Just(Doc::Null),
            any::<bool>().prop_map(Doc::Bool),
            any::<i64>().prop_map(Doc::Int),
            any::<u64>().prop_map(Doc::UInt),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Doc::Float),
            any::<String>().prop_map(Doc::Str),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Doc::Arr),
                proptest::collection::vec((key.clone(), inner), 0..6).prop_map(Doc::Obj),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn streaming_canonical_form_equals_the_value_form_on_any_document(
            d in doc(),
            space in proptest::prop_oneof![
                proptest::strategy::Just(""),
                proptest::strategy::Just(" "),
                proptest::strategy::Just("\n  "),
            ],
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<(proptest::sample::Index, u8)>(),
        ) {
            let mut text = String::new();
            d.write(&mut text, space);
            let bytes = text.into_bytes();
            proptest::prop_assert_eq!(canonical_json_of_bytes(&bytes), via_value(&bytes));
            // Damaged documents: both refuse, or both read the same value.
            let cut = &bytes[..cut.index(bytes.len() + 1)];
            proptest::prop_assert_eq!(canonical_json_of_bytes(cut), via_value(cut));
            let mut flipped = bytes.clone();
            if !flipped.is_empty() {
                let i = flip.0.index(flipped.len());
                flipped[i] = flip.1;
            }
            proptest::prop_assert_eq!(canonical_json_of_bytes(&flipped), via_value(&flipped));
        }
    }

    #[test]
    fn typed_values() {
        #[derive(Serialize)]
        struct In {
            b: u32,
            a: &'static str,
        }
        let a = Fingerprint::of_value("op", &In { b: 1, a: "x" }).unwrap();
        let b = Fingerprint::of_value("op", &serde_json::json!({"a":"x","b":1})).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            Fingerprint::of_value("op2", &serde_json::json!({"a":"x","b":1})).unwrap()
        );
    }
}
