//! Where the idempotency key and the scope come from.
//!
//! A [`KeySource`] turns a request into [`KeyMaterial`]: a client key from a
//! header ([`HeaderKey`]), or material derived from the request
//! ([`PathParams`], [`JsonFields`], or any closure). A [`ScopeSource`] names
//! the space the key lives in (tenant, principal), so two users' identical
//! keys never meet.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use idempotency_core::{IdempotencyKey, KeyError, derive_from_json};

use crate::config::IDEMPOTENCY_KEY;

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

impl KeyRejection {
    /// A key that cannot be derived from this request, and why (for key
    /// sources and [`PathParams::normalise`] closures).
    ///
    /// ```
    /// use idempotency_tower::KeyRejection;
    /// let e = KeyRejection::underivable("the version is not a number");
    /// assert_eq!(e.to_string(), "idempotency key could not be derived: the version is not a number");
    /// ```
    pub fn underivable(reason: impl Into<String>) -> Self {
        Self::Invalid(KeyError::Underivable {
            reason: reason.into(),
        })
    }
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

    /// The raw value of path parameter `name`, matching the route template
    /// (`{name}` or `{*name}` segments, axum 0.8 syntax) against the request
    /// path: the text exactly as the request spelt it, **not**
    /// percent-decoded, so `%45-1` and `E-1` are different values here
    /// although axum's `Path` hands the handler `E-1` for both. Key material
    /// wants [`path_param_decoded`](Self::path_param_decoded) (or
    /// [`PathParams`], which decodes and normalises).
    ///
    /// ```
    /// # use idempotency_tower::KeyInput;
    /// let parts = http::Request::post("/estimates/%45-1/promote").body(()).unwrap().into_parts().0;
    /// let input = KeyInput::new(&parts, "/estimates/{id}/promote", None);
    /// assert_eq!(input.path_param("id"), Some("%45-1"));
    /// assert_eq!(input.path_param_decoded("id").unwrap().as_deref(), Some("E-1"));
    /// ```
    pub fn path_param(&self, name: &str) -> Option<&'a str> {
        path_param(self.route, self.parts.uri.path(), name)
    }

    /// The value of path parameter `name` percent-decoded, as axum's `Path`
    /// decodes it (`%45-1` is `E-1`; `+` stays `+`), or `None` when the
    /// template has no such parameter or the path does not match it.
    ///
    /// # Errors
    ///
    /// A `key-invalid` [`KeyRejection`] when the value holds a `%` not
    /// followed by two hex digits, or is not UTF-8 once decoded (axum
    /// refuses the latter too; it would pass the former through as text).
    pub fn path_param_decoded(&self, name: &str) -> Result<Option<Cow<'a, str>>, KeyRejection> {
        match self.path_param(name) {
            None => Ok(None),
            Some(raw) => percent_decode(raw)
                .map(Some)
                .map_err(|why| KeyRejection::underivable(format!("path parameter `{name}` {why}"))),
        }
    }
}

/// Percent-decodes a path segment, strictly: every `%` starts an escape of
/// two hex digits, and the result is UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("has a `%` that is not followed by two hex digits");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "is not UTF-8 once percent-decoded")
}

/// Percent-decodes leniently, as axum does: a `%` without two hex digits
/// is kept as it is, and the bytes need not be UTF-8.
fn percent_decode_lenient(raw: &str) -> Cow<'_, [u8]> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                Some(hi << 4 | lo)
            })
            .flatten();
        match escape {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends `bytes` percent-encoded, everything but RFC 3986's unreserved
/// characters escaped (uppercase hex): one spelling per value, and a `/`
/// inside a value never reads as a segment boundary.
fn percent_encode_into(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
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

    /// The request path as the fingerprint sees it, asked after
    /// [`extract`](Self::extract) succeeded; `None` (the default): the path
    /// as the request spelt it.
    ///
    /// A source that normalises path parameters into its key material
    /// ([`PathParams`]) returns the path in the same normal form, so that a
    /// duplicate sent under another spelling of the same resource
    /// (`/snapshots/01/`, `/%45-1/`) is a replay rather than a 422
    /// "different request".
    fn canonical_path(&self, input: &KeyInput<'_>) -> Option<String> {
        let _ = input;
        None
    }

    /// The header the client puts its key in, when this source reads one
    /// ([`HeaderKey`]): the layer's answers name it ("a request with this
    /// Idempotency-Key is being processed"). `None` (the default) for a
    /// derived key: the client sent no key, and the answers speak of "a
    /// request for the same resource".
    fn header(&self) -> Option<&HeaderName> {
        None
    }
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
        Ok(Some(KeyMaterial::Client(IdempotencyKey::parse(
            value.as_bytes(),
        )?)))
    }
}

/// How a path parameter's value becomes key material (see [`PathParams::typed`]).
///
/// Every value is percent-decoded first (as axum's `Path` does); a type then
/// reads it the way the handler's extractor will and keys on its canonical
/// text, so every spelling the handler accepts for one value is one record,
/// and a spelling the handler would refuse is refused by the layer (400
/// `key-invalid`) before anything runs.
///
/// Integers are canonicalised rather than refused in their non-canonical
/// forms because axum's `Path<u64>` (and `Path<u32>`, `Path<i64>`, ...)
/// accepts them: it reads the value with `str::parse`, which takes a leading
/// `+` and leading zeros (`01`, `+1`, `0001` are all `1`). Refusing them
/// would turn away requests the handler serves; keeping them apart would
/// run one operation once per spelling.
///
/// ```
/// use idempotency_tower::ParamType;
/// assert_eq!(ParamType::U64.canonical("+01").as_deref(), Some("1"));
/// assert_eq!(ParamType::U64.canonical("-1"), None);
/// assert_eq!(ParamType::I64.canonical("-00").as_deref(), Some("0"));
/// assert_eq!(
///     ParamType::Uuid.canonical("{67E55044-10B1-426F-9247-BB680E5FE0C8}").as_deref(),
///     Some("67e55044-10b1-426f-9247-bb680e5fe0c8"),
/// );
/// assert_eq!(ParamType::Str.canonical("E-1").as_deref(), Some("E-1"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ParamType {
    /// Text, compared exactly (case-sensitive) once percent-decoded. The default.
    #[default]
    Str,
    /// An unsigned integer, as `u64::from_str` (axum's `Path<u64>`) reads it:
    /// an optional `+`, decimal digits, at most `u64::MAX`. Keyed on its
    /// canonical decimal.
    U64,
    /// A signed integer, as `i64::from_str` (axum's `Path<i64>`) reads it:
    /// an optional `+` or `-`, decimal digits. Keyed on its canonical
    /// decimal (`-0` is `0`).
    I64,
    /// A UUID in any form `Uuid::parse_str` (axum's `Path<uuid::Uuid>`)
    /// reads: hyphenated, simple, braced or URN, any case. Keyed on its
    /// lowercase hyphenated form.
    Uuid,
}

impl ParamType {
    /// The canonical text of a percent-decoded value, or `None` when the
    /// value is not of this type.
    pub fn canonical(self, value: &str) -> Option<String> {
        match self {
            Self::Str => Some(value.to_owned()),
            Self::U64 => value.parse::<u64>().ok().map(|n| n.to_string()),
            Self::I64 => value.parse::<i64>().ok().map(|n| n.to_string()),
            Self::Uuid => uuid::Uuid::parse_str(value)
                .ok()
                .map(|u| u.hyphenated().to_string()),
        }
    }

    const fn describe(self) -> &'static str {
        match self {
            Self::Str => "text",
            Self::U64 => "an unsigned integer",
            Self::I64 => "an integer",
            Self::Uuid => "a UUID",
        }
    }
}

type NormaliseFn = dyn Fn(&str) -> Result<String, KeyRejection> + Send + Sync;

#[derive(Clone)]
enum Normalise {
    Type(ParamType),
    With(Arc<NormaliseFn>),
}

impl std::fmt::Debug for Normalise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Type(t) => t.fmt(f),
            Self::With(_) => f.write_str("With(..)"),
        }
    }
}

#[derive(Debug, Clone)]
struct Param {
    name: String,
    normalise: Normalise,
}

impl Param {
    fn apply(&self, decoded: &str) -> Result<String, KeyRejection> {
        match &self.normalise {
            Normalise::Type(t) => t.canonical(decoded).ok_or_else(|| {
                KeyRejection::underivable(format!(
                    "path parameter `{}` is not {}",
                    self.name,
                    t.describe()
                ))
            }),
            Normalise::With(f) => f(decoded),
        }
    }
}

/// A key derived from path parameters of the route template, e.g.
/// `PathParams::new(["estimate_id", "version"])` on
/// `/estimates/{estimate_id}/versions/{version}/promote`.
///
/// Each value is percent-decoded (as axum's `Path` decodes it) and then
/// normalised by its [`ParamType`] ([`Str`](ParamType::Str) unless
/// [`typed`](Self::typed)) or by a [`normalise`](Self::normalise) closure, so
/// the aliases of one resource (`/estimates/%45-1/versions/01/promote`,
/// `/estimates/E-1/versions/+1/promote`) are one record: one execution,
/// replays for the others. The fingerprint sees the path in the same normal
/// form ([`KeySource::canonical_path`]).
///
/// Needs the route template (axum's `MatchedPath`, or
/// [`IdempotencyLayer::route`](crate::IdempotencyLayer::route)). A missing
/// parameter, an invalid percent-encoding, a value that is not UTF-8 once
/// decoded, or a value that is not of its type is a `key-invalid` rejection.
///
/// ```
/// use idempotency_tower::{KeyInput, KeyMaterial, KeySource, ParamType, PathParams};
/// let source = PathParams::new(["estimate_id", "version"]).typed("version", ParamType::U64);
/// let route = "/estimates/{estimate_id}/versions/{version}/promote";
/// let key = |path: &str| {
///     let parts = http::Request::post(path).body(()).unwrap().into_parts().0;
///     source.extract(&KeyInput::new(&parts, route, None))
/// };
/// let canonical = key("/estimates/E-1/versions/1/promote").unwrap();
/// assert_eq!(key("/estimates/%45-1/versions/01/promote").unwrap(), canonical);
/// assert_eq!(key("/estimates/E-1/versions/+1/promote").unwrap(), canonical);
/// assert!(key("/estimates/E-1/versions/one/promote").is_err());
/// assert!(key("/estimates/E%ZZ1/versions/1/promote").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PathParams {
    params: Vec<Param>,
}

impl PathParams {
    /// The parameters, in order, each [`ParamType::Str`] until typed.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            params: names
                .into_iter()
                .map(|name| Param {
                    name: name.into(),
                    normalise: Normalise::Type(ParamType::Str),
                })
                .collect(),
        }
    }

    fn param_mut(&mut self, name: &str) -> &mut Param {
        let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let message = format!("PathParams: `{name}` is not one of the parameters {known:?}");
        self.params
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{message}"))
    }

    /// Reads parameter `name` as a `ty` and keys on its canonical text.
    ///
    /// # Panics
    ///
    /// When `name` is not one of the parameters given to [`new`](Self::new)
    /// (a configuration error, found when the layer is built).
    pub fn typed(mut self, name: &str, ty: ParamType) -> Self {
        self.param_mut(name).normalise = Normalise::Type(ty);
        self
    }

    /// Normalises parameter `name` with `f`, which receives the
    /// percent-decoded value and returns its canonical text, or a
    /// [`KeyRejection`] (answered 400 `key-invalid`) for a value that names
    /// no resource. Make it agree with what the handler does with the value.
    ///
    /// ```
    /// use idempotency_tower::{KeyRejection, PathParams};
    /// // Order references are case-insensitive in this service.
    /// let source = PathParams::new(["order"]).normalise("order", |v: &str| {
    ///     if v.is_empty() || v.len() > 64 {
    ///         return Err(KeyRejection::underivable("the order reference is empty or too long"));
    ///     }
    ///     Ok(v.to_ascii_uppercase())
    /// });
    /// ```
    ///
    /// # Panics
    ///
    /// When `name` is not one of the parameters given to [`new`](Self::new).
    pub fn normalise<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&str) -> Result<String, KeyRejection> + Send + Sync + 'static,
    {
        self.param_mut(name).normalise = Normalise::With(Arc::new(f));
        self
    }

    fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Appends the canonical form of one (raw) parameter value.
    fn push_canonical(&self, name: &str, raw: &str, out: &mut String) -> Option<()> {
        match self.param(name) {
            Some(p) => {
                let decoded = percent_decode(raw).ok()?;
                percent_encode_into(p.apply(&decoded).ok()?.as_bytes(), out);
            }
            None => percent_encode_into(&percent_decode_lenient(raw), out),
        }
        Some(())
    }
}

impl KeySource for PathParams {
    fn reads_body(&self) -> bool {
        false
    }

    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let mut parts = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let decoded = input.path_param_decoded(&p.name)?.ok_or_else(|| {
                KeyRejection::underivable(format!("path parameter `{}` not found", p.name))
            })?;
            parts.push(p.apply(&decoded)?.into_bytes());
        }
        Ok(Some(KeyMaterial::Derived(parts)))
    }

    /// The path rebuilt from the route template: literal segments as the
    /// template has them, this source's parameters in their canonical form,
    /// other parameters percent-decoded; every value re-encoded one way.
    fn canonical_path(&self, input: &KeyInput<'_>) -> Option<String> {
        let mut out = String::with_capacity(input.parts.uri.path().len());
        let mut rest = input.parts.uri.path().trim_start_matches('/');
        for seg in input.route.trim_start_matches('/').split('/') {
            out.push('/');
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if let Some(wild) = inner.strip_prefix('*') {
                    self.push_canonical(wild, rest, &mut out)?;
                    rest = "";
                    break;
                }
                let (value, tail) = rest.split_once('/').unwrap_or((rest, ""));
                self.push_canonical(inner, value, &mut out)?;
                rest = tail;
            } else {
                let (value, tail) = rest.split_once('/').unwrap_or((rest, ""));
                if value != seg {
                    return None;
                }
                out.push_str(seg);
                rest = tail;
            }
        }
        rest.is_empty().then_some(out)
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
/// authentication and read what it left in the extensions. `None` means the
/// request has no scope: it is answered 500 `scope-missing` and does not run
/// (unless [`allow_unscoped`](crate::IdempotencyLayer::allow_unscoped) puts it
/// in the shared, unscoped space). Return `Some(String::new())` for requests
/// that are meant to share that space.
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
    fn path_params_are_decoded_and_normalised() {
        let route = "/e/{id}/v/{v}";
        let key = |src: &PathParams, path: &str| {
            let p = parts(path, &[]);
            src.extract(&KeyInput::new(&p, route, None))
        };
        let typed = PathParams::new(["id", "v"]).typed("v", ParamType::U64);
        let want = Some(KeyMaterial::Derived(vec![b"E-1".to_vec(), b"1".to_vec()]));
        for path in [
            "/e/E-1/v/1",
            "/e/%45-1/v/01",
            "/e/%45%2d1/v/+1",
            "/e/E-1/v/%2B0001",
        ] {
            assert_eq!(key(&typed, path).unwrap(), want, "{path}");
        }
        for path in [
            "/e/E%zz/v/1",
            "/e/E%4/v/1",
            "/e/%FF/v/1",
            "/e/E-1/v/x",
            "/e/E-1/v/-1",
        ] {
            assert!(
                matches!(
                    key(&typed, path),
                    Err(KeyRejection::Invalid(KeyError::Underivable { .. }))
                ),
                "{path}"
            );
        }
        // Untyped: decoded text, nothing else.
        let text = PathParams::new(["id", "v"]);
        assert_eq!(
            key(&text, "/e/%45-1/v/01").unwrap(),
            Some(KeyMaterial::Derived(vec![b"E-1".to_vec(), b"01".to_vec()]))
        );
        // A closure.
        let upper = PathParams::new(["id"]).normalise("id", |v: &str| Ok(v.to_ascii_uppercase()));
        assert_eq!(
            key(&upper, "/e/e-1/v/1").unwrap(),
            Some(KeyMaterial::Derived(vec![b"E-1".to_vec()]))
        );
        let refuse =
            PathParams::new(["id"]).normalise("id", |_: &str| Err(KeyRejection::underivable("no")));
        assert!(key(&refuse, "/e/e-1/v/1").is_err());
    }

    #[test]
    #[should_panic(expected = "`nope` is not one of the parameters")]
    fn typing_an_unknown_parameter_is_a_configuration_error() {
        let _ = PathParams::new(["id"]).typed("nope", ParamType::U64);
    }

    #[test]
    fn the_canonical_path_is_one_spelling_per_resource() {
        let src = PathParams::new(["id", "v"]).typed("v", ParamType::U64);
        let canonical = |route: &str, path: &str| {
            let p = parts(path, &[]);
            src.canonical_path(&KeyInput::new(&p, route, None))
        };
        let route = "/e/{id}/v/{v}/l/{line}";
        let want = canonical(route, "/e/E-1/v/1/l/A").unwrap();
        assert_eq!(want, "/e/E-1/v/1/l/A");
        assert_eq!(canonical(route, "/e/%45-1/v/+01/l/%41").unwrap(), want);
        // Other parameters: decoded leniently, re-encoded one way; `/` in a value stays apart.
        assert_eq!(
            canonical(route, "/e/E-1/v/1/l/a%2Fb").unwrap(),
            "/e/E-1/v/1/l/a%2Fb"
        );
        assert_eq!(
            canonical(route, "/e/E-1/v/1/l/%zz").unwrap(),
            "/e/E-1/v/1/l/%25zz"
        );
        assert_eq!(
            canonical(route, "/e/E-1/v/1/l/%FF").unwrap(),
            "/e/E-1/v/1/l/%FF"
        );
        assert_eq!(canonical("/f/{*rest}", "/f/x/%79").unwrap(), "/f/x%2Fy");
        // Not this template, or not normalisable: the path as sent.
        assert_eq!(canonical(route, "/x/E-1/v/1/l/A"), None);
        assert_eq!(canonical(route, "/e/E-1/v/one/l/A"), None);
        assert_eq!(canonical(route, "/e/E-1/v/1/l/A/more"), None);
        assert_eq!(
            HeaderKey::new().canonical_path(&KeyInput::new(&parts("/o", &[]), "/o", None)),
            None
        );
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
