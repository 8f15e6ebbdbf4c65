//! [`HeaderKey`]: the client's key from a header (`Idempotency-Key`), and
//! the header's syntax ([`parse_key_header`]: RFC 8941 sf-string or bare,
//! optional whitespace around it).

use http::HeaderName;
use idempotency_core::{IdempotencyKey, KeyError};

use super::{KeyInput, KeyMaterial, KeyRejection, KeySource};
use crate::config::IDEMPOTENCY_KEY;

/// The key from a header: `Idempotency-Key` by default, as an RFC 8941
/// sf-string (`"abc"`) or bare (`abc`) — both forms are the same key.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// The `Idempotency-Key` header.
    pub fn new() -> Self {
        Self {
            name: IDEMPOTENCY_KEY,
        }
    }

    /// Another header.
    pub fn named(name: HeaderName) -> Self {
        Self { name }
    }
}

impl Default for HeaderKey {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySource for HeaderKey {
    fn reads_body(&self) -> bool {
        false
    }

    fn header(&self) -> Option<&HeaderName> {
        Some(&self.name)
    }

    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let mut values = input.parts.headers.get_all(&self.name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyRejection::Duplicated {
                header: self.name.clone(),
            });
        }
        Ok(Some(KeyMaterial::Client(parse_key_header(
            value.as_bytes(),
        )?)))
    }
}

/// Reads an `Idempotency-Key` header value: an RFC 8941 sf-string (`"abc"`,
/// with `\"` and `\\` escapes) or a bare token (`abc`), which denote the same
/// key. Optional whitespace (SP, HTAB) around the value is ignored, as HTTP
/// field parsing does. The key itself must be 1..=255 printable ASCII
/// characters ([`IdempotencyKey::new`]).
///
/// # Errors
///
/// [`KeyError`] when the value is empty, too long, holds a character outside
/// printable ASCII, or is a malformed quoted string.
///
/// ```
/// use idempotency_tower::parse_key_header;
/// let quoted = parse_key_header(br#""8e03978e-40d5""#).unwrap();
/// let bare = parse_key_header(b"8e03978e-40d5").unwrap();
/// assert_eq!(quoted, bare);
/// assert!(parse_key_header(b"").is_err());
/// ```
pub fn parse_key_header(value: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let value = trim_ows(value);
    match value.first() {
        None => Err(KeyError::Empty),
        Some(b'"') => IdempotencyKey::from_bytes(&unquote(value)?),
        Some(_) => IdempotencyKey::from_bytes(value),
    }
}

/// The content of an sf-string (`"` ... `"`, escapes `\"` and `\\`).
fn unquote(value: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 1;
    loop {
        match value.get(i) {
            None => {
                return Err(KeyError::MalformedString {
                    reason: "missing closing quote",
                });
            }
            Some(b'\\') => {
                let next = value.get(i + 1).copied();
                match next {
                    Some(c @ (b'"' | b'\\')) => out.push(c),
                    Some(_) => {
                        return Err(KeyError::MalformedString {
                            reason: "only \\\" and \\\\ escapes are allowed",
                        });
                    }
                    None => {
                        return Err(KeyError::MalformedString {
                            reason: "dangling escape",
                        });
                    }
                }
                i += 2;
            }
            Some(b'"') => {
                if i + 1 != value.len() {
                    return Err(KeyError::MalformedString {
                        reason: "data after closing quote",
                    });
                }
                return Ok(out);
            }
            Some(&c @ 0x20..=0x7e) => {
                out.push(c);
                i += 1;
            }
            Some(_) => return Err(KeyError::InvalidCharacter { position: i }),
        }
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_bare_are_the_same_key() {
        let a = parse_key_header(br#""abc-123""#).unwrap();
        let b = parse_key_header(b"abc-123").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.expose_secret(), b"abc-123");
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let a = parse_key_header(b"  abc\t").unwrap();
        assert_eq!(a.expose_secret(), b"abc");
    }

    #[test]
    fn escapes_in_sf_string() {
        let a = parse_key_header(br#""a\"b\\c""#).unwrap();
        assert_eq!(a.expose_secret(), br#"a"b\c"#);
        for bad in [&br#""a\nb""#[..], br#""abc"#, br#""abc"x"#, br#""abc\"#] {
            assert!(
                matches!(parse_key_header(bad), Err(KeyError::MalformedString { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(parse_key_header(b""), Err(KeyError::Empty));
        assert_eq!(parse_key_header(b"   "), Err(KeyError::Empty));
        assert_eq!(parse_key_header(br#""""#), Err(KeyError::Empty));
    }

    #[test]
    fn length_limits() {
        let ok = "k".repeat(255);
        assert!(parse_key_header(ok.as_bytes()).is_ok());
        assert!(parse_key_header(format!("\"{ok}\"").as_bytes()).is_ok());
        let long = "k".repeat(256);
        assert_eq!(
            parse_key_header(long.as_bytes()),
            Err(KeyError::TooLong { len: 256 })
        );
        assert_eq!(
            parse_key_header(format!("\"{long}\"").as_bytes()),
            Err(KeyError::TooLong { len: 256 })
        );
        assert!(parse_key_header(&vec![b'a'; 1 << 20]).is_err());
    }

    #[test]
    fn rejects_control_and_non_ascii() {
        assert_eq!(
            parse_key_header(b"ab\x01c"),
            Err(KeyError::InvalidCharacter { position: 2 })
        );
        assert_eq!(
            parse_key_header(b"ab\x7fc"),
            Err(KeyError::InvalidCharacter { position: 2 })
        );
        assert!(matches!(
            parse_key_header("clé".as_bytes()),
            Err(KeyError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            parse_key_header(b"\"ab\x00\""),
            Err(KeyError::InvalidCharacter { .. })
        ));
    }
}
