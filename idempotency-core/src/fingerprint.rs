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
            FingerprintMode::Body => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(v) => {
                    seg(&mut h, b"json");
                    seg(&mut h, &canonical_json(&v));
                }
                Err(_) => {
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
