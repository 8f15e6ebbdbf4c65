//! Request fingerprints: what makes two requests "the same request".
//!
//! A [`Fingerprint`] is SHA-256 over length-prefixed segments: method, route,
//! and the body as selected by a [`FingerprintMode`]. JSON bodies are
//! canonicalised first (object keys sorted, no insignificant whitespace), so a
//! client that re-serialises its payload with another key order still matches,
//! while any change of value does not.
//!
//! A JSON document whose objects repeat a member name (`{"sku":"zzz","sku":"s"}`,
//! at any depth, also when the names differ only by escapes: `"s"` and `"\u0073"`)
//! is refused with [`FingerprintError::DuplicateKey`]: parsers disagree on which
//! value counts (serde_json keeps the last), so such a body could otherwise
//! share a fingerprint with a different document.

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
    /// The body is JSON, but an object in it has a member name twice (names
    /// compared after unescaping). Which of the values counts is ambiguous,
    /// so the body has no fingerprint.
    #[error(
        "the JSON body has the member {pointer} more than once; which value counts is ambiguous"
    )]
    DuplicateKey {
        /// JSON pointer (RFC 6901) of the repeated member, e.g. `/items/0/sku`.
        pointer: String,
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
    /// [`FingerprintError::NotJson`] in [`FingerprintMode::Fields`] when the body is not JSON;
    /// [`FingerprintError::DuplicateKey`] in [`FingerprintMode::Body`] and
    /// [`FingerprintMode::Fields`] when the body is JSON with a repeated member name.
    ///
    /// ```
    /// use idempotency_core::{Fingerprint, FingerprintError, FingerprintMode};
    /// let twice = Fingerprint::compute("POST", "/orders", br#"{"sku":"zzz","sku":"s"}"#, &FingerprintMode::Body);
    /// assert_eq!(twice, Err(FingerprintError::DuplicateKey { pointer: "/sku".into() }));
    /// ```
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
                Ok(canonical) => {
                    seg(&mut h, b"json");
                    seg(&mut h, &canonical);
                }
                Err(NotCanonical::NotJson(_)) => {
                    seg(&mut h, b"raw");
                    seg(&mut h, body);
                }
                Err(NotCanonical::DuplicateKey(pointer)) => {
                    return Err(FingerprintError::DuplicateKey { pointer });
                }
            },
            FingerprintMode::Fields(pointers) => {
                let v = parse_json_strict(body).map_err(|e| match e {
                    NotCanonical::NotJson(e) => FingerprintError::NotJson {
                        reason: e.to_string(),
                    },
                    NotCanonical::DuplicateKey(pointer) => {
                        FingerprintError::DuplicateKey { pointer }
                    }
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

/// Why a body has no canonical JSON text.
#[derive(Debug)]
pub(crate) enum NotCanonical {
    /// It is not JSON (the parser's error).
    NotJson(serde_json::Error),
    /// It is JSON with a repeated member name, at this JSON pointer.
    DuplicateKey(String),
}

/// Parses a JSON document into a `serde_json::Value`, refusing repeated
/// member names at any depth (where `serde_json` would keep the last).
pub(crate) fn parse_json_strict(body: &[u8]) -> Result<serde_json::Value, NotCanonical> {
    let canonical = canonical_json_of_bytes(body)?;
    // The canonical text is valid JSON without repeats, and reads back as
    // the value of the body.
    serde_json::from_slice(&canonical).map_err(NotCanonical::NotJson)
}

/// The canonical JSON text of a JSON document. The same bytes as
/// [`canonical_json`] of the parsed `serde_json::Value`, written while
/// parsing, without building the tree — except that a repeated member name
/// (which `Value` silently collapses, keeping the last) is an error.
fn canonical_json_of_bytes(body: &[u8]) -> Result<Vec<u8>, NotCanonical> {
    let mut out = Vec::with_capacity(body.len());
    let mut side = Side::default();
    let parsed = canonicalise(body, &mut out, &mut side);
    match parsed {
        Ok(()) => Ok(out),
        // A repeat stops the parse where it is found: it counts only when
        // the document is JSON to its end.
        Err(e) => match side.duplicate {
            Some(pointer) => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(_) => Err(NotCanonical::DuplicateKey(pointer)),
                Err(not_json) => Err(NotCanonical::NotJson(not_json)),
            },
            // An object whose first key is one of serde_json's private tokens
            // (raw values, arbitrary-precision numbers): `Value` gives it a
            // meaning of its own, so take the `Value` path for exactly its
            // result, after a pass that reads every object plainly for repeats.
            None if side.fallback => {
                let mut plain = Side {
                    plain: true,
                    ..Side::default()
                };
                let mut scratch = Vec::with_capacity(body.len());
                if canonicalise(body, &mut scratch, &mut plain).is_err()
                    && let Some(pointer) = plain.duplicate
                {
                    return Err(NotCanonical::DuplicateKey(pointer));
                }
                serde_json::from_slice::<serde_json::Value>(body)
                    .map(|v| canonical_json(&v))
                    .map_err(NotCanonical::NotJson)
            }
            None => Err(NotCanonical::NotJson(e)),
        },
    }
}

fn canonicalise(body: &[u8], out: &mut Vec<u8>, side: &mut Side) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(Canonical { out, side }, &mut de)?;
    de.end()
}

/// What the canonicaliser tells its caller beside its error.
#[derive(Debug, Default)]
struct Side {
    /// An object starts with a serde_json private token (see `canonical_json_of_bytes`).
    fallback: bool,
    /// Read private tokens as plain keys (the repeat check of the fallback).
    plain: bool,
    /// The pointer of a repeated member; built up from the innermost object
    /// outwards as the error unwinds.
    duplicate: Option<String>,
}

/// Writes the canonical text of one JSON value to `out` as it is parsed.
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    side: &'a mut Side,
}

impl Canonical<'_> {
    fn child(&mut self) -> Canonical<'_> {
        Canonical {
            out: &mut *self.out,
            side: &mut *self.side,
        }
    }
}

/// Prepends the reference token `token` (RFC 6901: `~` as `~0`, `/` as `~1`).
fn prepend_token(pointer: &mut String, token: &str) {
    let escaped = token.replace('~', "~0").replace('/', "~1");
    pointer.insert_str(0, &escaped);
    pointer.insert(0, '/');
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

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut index = 0usize;
        loop {
            let mark = self.out.len();
            if index > 0 {
                self.out.push(b',');
            }
            match seq.next_element_seed(self.child()) {
                Ok(Some(())) => {}
                Ok(None) => {
                    self.out.truncate(mark);
                    break;
                }
                Err(e) => {
                    if let Some(pointer) = &mut self.side.duplicate {
                        prepend_token(pointer, &index.to_string());
                    }
                    return Err(e);
                }
            }
            index += 1;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // The values are written after `start` in arrival order, then the
        // object is rebuilt with its keys sorted.
        let start = self.out.len();
        let mut entries: Vec<(std::borrow::Cow<'de, str>, usize, usize)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if entries.is_empty() && !self.side.plain && key.starts_with("$serde_json::private::") {
                self.side.fallback = true;
                return Err(serde::de::Error::custom("serde_json private token"));
            }
            let from = self.out.len();
            if let Err(e) = map.next_value_seed(self.child()) {
                if let Some(pointer) = &mut self.side.duplicate {
                    prepend_token(pointer, &key);
                }
                return Err(e);
            }
            entries.push((key, from, self.out.len()));
        }
        // Keys are compared unescaped: `"s"` and `"\u0073"` are one name.
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            let mut pointer = String::new();
            prepend_token(&mut pointer, &pair[0].0);
            self.side.duplicate = Some(pointer);
            return Err(serde::de::Error::custom("repeated member name"));
        }
        let mut object = Vec::with_capacity(self.out.len() - start + entries.len() * 8 + 2);
        object.push(b'{');
        for (i, (key, from, to)) in entries.iter().enumerate() {
            if i > 0 {
                object.push(b',');
            }
            write_json(&mut object, key.as_ref());
            object.push(b':');
            object.extend_from_slice(&self.out[*from..*to]);
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

    /// The streaming form, `None` when the body is not JSON; panics on a repeat.
    fn streaming(body: &[u8]) -> Option<Vec<u8>> {
        match canonical_json_of_bytes(body) {
            Ok(c) => Some(c),
            Err(NotCanonical::NotJson(_)) => None,
            Err(NotCanonical::DuplicateKey(p)) => {
                panic!("{p} repeated in {}", String::from_utf8_lossy(body))
            }
        }
    }

    fn repeated(body: &[u8]) -> Option<String> {
        match canonical_json_of_bytes(body) {
            Err(NotCanonical::DuplicateKey(p)) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn streaming_canonical_form_equals_the_value_form() {
        for body in [
            br#"{"sku":"SKU-1","quantity":1,"note":"bench"}"#.as_slice(),
            br#"{"b":1,"a":2,"c":3}"#,
            br#"{"a":{"z":[],"y":{}},"b":null}"#,
            br#"[1,-1,0,-0,1.0,1e5,1E-7,-0.0,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809]"#,
            br#"{"\u0041":"\u00e9\ud83d\ude00\n\t\"\\\/","B":1}"#,
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
                streaming(body),
                via_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(streaming(deep.as_bytes()), None);
        assert_eq!(via_value(deep.as_bytes()), None);
    }

    #[test]
    fn repeated_member_names_are_refused_at_any_depth() {
        for (body, pointer) in [
            (
                br#"{"sku":"zzz","sku":"s","quantity":1}"#.as_slice(),
                "/sku",
            ),
            (br#"{"b":1,"a":2,"b":3}"#, "/b"),
            (br#"{"a":{"z":[],"y":{}},"a":null}"#, "/a"),
            (br#"{"order":{"sku":"a","n":1,"sku":"a"}}"#, "/order/sku"),
            (
                br#"{"items":[{"sku":"a"},{"sku":"b","sku":"c"}]}"#,
                "/items/1/sku",
            ),
            (br#"[[{"x":1}],[{},{"y":1,"y":1}]]"#, "/1/1/y"),
            // Names compared unescaped.
            (br#"{"s":1,"\u0073":1}"#, "/s"),
            ("{\"\\u00e9\":1,\"é\":2}".as_bytes(), "/é"),
            // Pointer tokens escaped (RFC 6901).
            (br#"{"a/b~c":1,"a\/b~c":2}"#, "/a~1b~0c"),
            (br#"{"":1,"":2}"#, "/"),
            // Behind a private token, the plain check still sees repeats.
            (
                br#"{"$serde_json::private::Number":"1","x":{"k":1,"k":2}}"#,
                "/x/k",
            ),
        ] {
            assert_eq!(
                repeated(body).as_deref(),
                Some(pointer),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                Fingerprint::compute("POST", "/o", body, &FingerprintMode::Body),
                Err(FingerprintError::DuplicateKey {
                    pointer: pointer.to_owned()
                })
            );
            assert!(matches!(
                Fingerprint::compute("POST", "/o", body, &FingerprintMode::fields(["/sku"])),
                Err(FingerprintError::DuplicateKey { .. })
            ));
        }
        // A repeat in a document that is not JSON to its end: not JSON (raw bytes).
        for body in [
            br#"{"a":{"b":1,"b":2},"c":"#.as_slice(),
            br#"[{"a":1,"a":2},1e400]"#,
        ] {
            assert_eq!(repeated(body), None);
            assert_eq!(streaming(body), None);
            assert!(Fingerprint::compute("POST", "/o", body, &FingerprintMode::Body).is_ok());
        }
        // The same name in different objects is no repeat.
        assert!(streaming(br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#).is_some());
    }

    #[test]
    fn a_body_with_repeats_never_replays_another_document() {
        // The issue: last-wins collapsed this into the fingerprint of `{"sku":"s","quantity":1}`.
        let m = FingerprintMode::Body;
        assert!(Fingerprint::compute("POST", "/o", br#"{"sku":"s","quantity":1}"#, &m).is_ok());
        assert!(
            Fingerprint::compute("POST", "/o", br#"{"sku":"zzz","sku":"s","quantity":1}"#, &m)
                .is_err()
        );
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
        /// Whether an object in the document has a name twice.
        fn repeats(&self) -> bool {
            match self {
                Doc::Arr(items) => items.iter().any(Doc::repeats),
                Doc::Obj(entries) => {
                    let mut seen = std::collections::HashSet::new();
                    entries.iter().any(|(k, d)| !seen.insert(k) || d.repeats())
                }
                _ => false,
            }
        }

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
                // Half the objects keep each name once, so both outcomes are common.
                (
                    proptest::collection::vec((key.clone(), inner), 0..6),
                    any::<bool>()
                )
                    .prop_map(|(mut entries, unique)| {
                        if unique {
                            let mut seen = std::collections::HashSet::new();
                            entries.retain(|(k, _)| seen.insert(k.clone()));
                        }
                        Doc::Obj(entries)
                    }),
            ]
        })
    }

    /// Whether some object of `body` repeats a member name, by a plain
    /// reading (names as unescaped strings, one set per object); `None`
    /// when `body` is not JSON.
    fn repeats_by_set(body: &[u8]) -> Option<bool> {
        struct Check<'a>(&'a mut bool);
        impl<'de> serde::de::DeserializeSeed<'de> for Check<'_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Check<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<(), E> {
                Ok(())
            }
            fn visit_i64<E>(self, _: i64) -> Result<(), E> {
                Ok(())
            }
            fn visit_u64<E>(self, _: u64) -> Result<(), E> {
                Ok(())
            }
            fn visit_f64<E>(self, _: f64) -> Result<(), E> {
                Ok(())
            }
            fn visit_str<E>(self, _: &str) -> Result<(), E> {
                Ok(())
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                Ok(())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
                while s.next_element_seed(Check(&mut *self.0))?.is_some() {}
                Ok(())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value_seed(Check(&mut *self.0))?;
                    if !seen.insert(k) {
                        *self.0 = true;
                    }
                }
                Ok(())
            }
        }
        via_value(body)?;
        let mut found = false;
        let mut de = serde_json::Deserializer::from_slice(body);
        serde::de::DeserializeSeed::deserialize(Check(&mut found), &mut de).ok()?;
        Some(found)
    }

    /// Streaming equals `Value` on documents without repeats, refuses those
    /// with repeats, and calls "not JSON" exactly what `Value` does.
    fn check_against_value(bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let got = canonical_json_of_bytes(bytes);
        match (via_value(bytes), repeats_by_set(bytes)) {
            (None, _) => proptest::prop_assert!(matches!(got, Err(NotCanonical::NotJson(_)))),
            (Some(_), Some(true)) => {
                proptest::prop_assert!(matches!(got, Err(NotCanonical::DuplicateKey(_))));
            }
            (Some(v), _) => proptest::prop_assert_eq!(got.ok(), Some(v)),
        }
        Ok(())
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
            proptest::prop_assert_eq!(repeats_by_set(&bytes), Some(d.repeats()));
            check_against_value(&bytes)?;
            // Damaged documents: both refuse, or both read the same value.
            let cut = &bytes[..cut.index(bytes.len() + 1)];
            check_against_value(cut)?;
            let mut flipped = bytes.clone();
            if !flipped.is_empty() {
                let i = flip.0.index(flipped.len());
                flipped[i] = flip.1;
            }
            check_against_value(&flipped)?;
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
