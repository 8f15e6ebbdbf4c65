//! Where the idempotency key and the scope come from.
//!
//! A [`KeySource`] turns a request into [`KeyMaterial`]: a client key from a
//! header ([`HeaderKey`]), or material derived from the request
//! ([`PathParams`], [`JsonFields`], or any closure). A [`ScopeSource`] names
//! the space the key lives in (tenant, principal), so two users' identical
//! keys never meet.

use http::HeaderName;
use http::request::Parts;
use idempotency_core::{IdempotencyKey, KeyError, derive_from_json};

/// The name of the standard header, `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What identifies the operation within its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyMaterial {
    /// A key the client chose (the `Idempotency-Key` header). Two requests with
    /// the same client key are the same operation whatever their method or
    /// path: a different method, path or payload is answered 422.
    Client(IdempotencyKey),
    /// Values taken from the request (path parameters, JSON fields). They
    /// identify an operation only together with the method and route
    /// template, which are part of the record's identity.
    Derived(Vec<Vec<u8>>),
}

/// Why a request's key was refused (answered 400 `key-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRejection {
    /// The value is not a valid key (empty, too long, non-printable, malformed
    /// sf-string) or could not be derived.
    #[error(transparent)]
    Invalid(#[from] KeyError),
    /// The key header appears more than once.
    #[error("the {header} header appears more than once")]
    Duplicated {
        /// The header.
        header: HeaderName,
    },
}

/// What a [`KeySource`] sees of the request.
#[derive(Debug)]
pub struct KeyInput<'a> {
    pub(crate) parts: &'a Parts,
    pub(crate) route: &'a str,
    pub(crate) body: Option<&'a [u8]>,
}

impl<'a> KeyInput<'a> {
    /// Builds an input by hand (for testing a key source).
    pub fn new(parts: &'a Parts, route: &'a str, body: Option<&'a [u8]>) -> Self {
        Self { parts, route, body }
    }

    /// Method, URI, headers and extensions.
    pub fn parts(&self) -> &'a Parts {
        self.parts
    }

    /// The route template (`/orders/{id}`), or the path when no router told it.
    pub fn route(&self) -> &'a str {
        self.route
    }

    /// The buffered request body, when the source [reads the body](KeySource::reads_body).
    pub fn body(&self) -> Option<&'a [u8]> {
        self.body
    }

    /// The value of path parameter `name`, matching the route template
    /// (`{name}` or `{*name}` segments, axum 0.8 syntax) against the request
    /// path. Values are taken as they appear in the path (not percent-decoded).
    pub fn path_param(&self, name: &str) -> Option<&'a str> {
        path_param(self.route, self.parts.uri.path(), name)
    }
}

pub(crate) fn path_param<'p>(template: &str, path: &'p str, name: &str) -> Option<&'p str> {
    let mut rest = path.trim_start_matches('/');
    for seg in template.trim_start_matches('/').split('/') {
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if let Some(wild) = inner.strip_prefix('*') {
                return (wild == name).then_some(rest);
            }
            let (value, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if inner == name {
                return Some(value);
            }
            rest = tail;
        } else {
            let (value, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if value != seg {
                return None;
            }
            rest = tail;
        }
    }
    None
}

/// Extracts the key from a request.
///
/// Return `Ok(None)` when the request carries no key: the layer answers 400
/// `key-missing`, or lets the request through unprotected when the key is
/// optional ([`IdempotencyLayer::key_required`](crate::IdempotencyLayer::key_required)).
///
/// Closures `Fn(&KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection>`
/// implement this trait (and see the body).
pub trait KeySource: Send + Sync + 'static {
    /// Whether [`extract`](Self::extract) needs the body. Sources that do not
    /// are asked before the body is read, so a request without a key is
    /// answered (or passed through) without buffering it. Default: `true`.
    fn reads_body(&self) -> bool {
        true
    }

    /// The key material of this request.
    ///
    /// # Errors
    ///
    /// [`KeyRejection`] when the request carries a key that is not acceptable.
    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection>;
}

impl<F> KeySource for F
where
    F: Fn(&KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> + Send + Sync + 'static,
{
    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        self(input)
    }
}

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
        Ok(Some(KeyMaterial::Client(IdempotencyKey::parse(
            value.as_bytes(),
        )?)))
    }
}

/// A key derived from path parameters of the route template, e.g.
/// `PathParams::new(["estimate_id", "version"])` on
/// `/estimates/{estimate_id}/versions/{version}/promote`.
///
/// Needs the route template (axum's `MatchedPath`, or
/// [`IdempotencyLayer::route`](crate::IdempotencyLayer::route)). A missing
/// parameter is a `key-invalid` rejection.
#[derive(Debug, Clone)]
pub struct PathParams {
    names: Vec<String>,
}

impl PathParams {
    /// The parameters, in order.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            names: names.into_iter().map(Into::into).collect(),
        }
    }
}

impl KeySource for PathParams {
    fn reads_body(&self) -> bool {
        false
    }

    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let mut parts = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let value = input
                .path_param(name)
                .ok_or_else(|| KeyError::Underivable {
                    reason: format!("path parameter `{name}` not found"),
                })?;
            parts.push(value.as_bytes().to_vec());
        }
        Ok(Some(KeyMaterial::Derived(parts)))
    }
}

/// A key derived from JSON body fields given as JSON pointers (RFC 6901),
/// e.g. `JsonFields::new(["/estimateId", "/snapshotVersion"])`.
///
/// A missing field, a non-scalar field or a body that is not JSON is a
/// `key-invalid` rejection.
#[derive(Debug, Clone)]
pub struct JsonFields {
    pointers: Vec<String>,
}

impl JsonFields {
    /// The pointers, in order.
    pub fn new<I, S>(pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            pointers: pointers.into_iter().map(Into::into).collect(),
        }
    }
}

impl KeySource for JsonFields {
    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let pointers: Vec<&str> = self.pointers.iter().map(String::as_str).collect();
        let parts = derive_from_json(input.body.unwrap_or_default(), &pointers)?;
        Ok(Some(KeyMaterial::Derived(parts)))
    }
}

/// Names the space a key lives in: a tenant, the authenticated principal.
///
/// Runs on the request as it reaches the layer, so place the layer after
/// authentication and read what it left in the extensions. `None` puts the
/// request in the shared, unscoped space.
///
/// Closures `Fn(&http::request::Parts) -> Option<String>` implement this trait.
pub trait ScopeSource: Send + Sync + 'static {
    /// The scope of this request.
    fn scope(&self, parts: &Parts) -> Option<String>;
}

impl<F> ScopeSource for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn scope(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_forms_are_the_same_key() {
        let src = HeaderKey::new();
        let a = parts("/o", &[("idempotency-key", b"\"abc\"")]);
        let b = parts("/o", &[("idempotency-key", b"abc")]);
        let ka = src.extract(&KeyInput::new(&a, "/o", None)).unwrap();
        let kb = src.extract(&KeyInput::new(&b, "/o", None)).unwrap();
        assert!(ka.is_some());
        assert_eq!(ka, kb);
        assert!(!src.reads_body());
    }

    #[test]
    fn header_rejections() {
        let src = HeaderKey::new();
        let none = parts("/o", &[]);
        assert_eq!(
            src.extract(&KeyInput::new(&none, "/o", None)).unwrap(),
            None
        );
        let dup = parts(
            "/o",
            &[("idempotency-key", b"a"), ("idempotency-key", b"b")],
        );
        assert!(matches!(
            src.extract(&KeyInput::new(&dup, "/o", None)),
            Err(KeyRejection::Duplicated { .. })
        ));
        let empty = parts("/o", &[("idempotency-key", b"")]);
        assert!(matches!(
            src.extract(&KeyInput::new(&empty, "/o", None)),
            Err(KeyRejection::Invalid(KeyError::Empty))
        ));
        let long = "k".repeat(256);
        let long = parts("/o", &[("idempotency-key", long.as_bytes())]);
        assert!(matches!(
            src.extract(&KeyInput::new(&long, "/o", None)),
            Err(KeyRejection::Invalid(KeyError::TooLong { .. }))
        ));
        let ctl = parts("/o", &[("idempotency-key", b"a\tb")]);
        assert!(matches!(
            src.extract(&KeyInput::new(&ctl, "/o", None)),
            Err(KeyRejection::Invalid(KeyError::InvalidCharacter { .. }))
        ));
        let named = HeaderKey::named(HeaderName::from_static("x-key"));
        let p = parts("/o", &[("x-key", b"abc")]);
        assert!(
            named
                .extract(&KeyInput::new(&p, "/o", None))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn path_params_match_the_template() {
        assert_eq!(path_param("/a/{id}/b", "/a/42/b", "id"), Some("42"));
        assert_eq!(path_param("/a/{id}/b/{v}", "/a/42/b/7", "v"), Some("7"));
        assert_eq!(path_param("/a/{id}", "/x/42", "id"), None);
        assert_eq!(path_param("/a/{id}", "/a/42", "nope"), None);
        assert_eq!(path_param("/f/{*rest}", "/f/x/y", "rest"), Some("x/y"));
        let p = parts("/est/E1/versions/3/promote", &[]);
        let src = PathParams::new(["id", "v"]);
        let input = KeyInput::new(&p, "/est/{id}/versions/{v}/promote", None);
        assert_eq!(
            src.extract(&input).unwrap(),
            Some(KeyMaterial::Derived(vec![b"E1".to_vec(), b"3".to_vec()]))
        );
        let missing = KeyInput::new(&p, "/est/{id}/versions/{v}/promote", None);
        assert!(PathParams::new(["x"]).extract(&missing).is_err());
    }

    #[test]
    fn json_fields_and_closures() {
        let p = parts("/o", &[]);
        let body = br#"{"a":"x","b":2}"#;
        let src = JsonFields::new(["/a", "/b"]);
        assert!(src.reads_body());
        let got = src.extract(&KeyInput::new(&p, "/o", Some(body))).unwrap();
        assert!(matches!(got, Some(KeyMaterial::Derived(ref v)) if v.len() == 2));
        assert!(
            src.extract(&KeyInput::new(&p, "/o", Some(b"nope")))
                .is_err()
        );

        let closure = |input: &KeyInput<'_>| -> Result<Option<KeyMaterial>, KeyRejection> {
            Ok(input
                .parts()
                .headers
                .get("x-op")
                .map(|v| KeyMaterial::Derived(vec![v.as_bytes().to_vec()])))
        };
        assert_eq!(
            closure.extract(&KeyInput::new(&p, "/o", None)).unwrap(),
            None
        );

        let scope = |parts: &Parts| {
            parts
                .headers
                .get("x-user")
                .map(|v| v.to_str().unwrap_or("").to_owned())
        };
        let u = parts("/o", &[("x-user", b"alice")]);
        assert_eq!(scope.scope(&u).as_deref(), Some("alice"));
    }
}
