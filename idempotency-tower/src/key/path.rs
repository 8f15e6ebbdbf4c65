//! [`PathParams`]: keys derived from path parameters, percent-decoded and
//! normalised by [`ParamType`], and the percent-coding they rest on.

use std::borrow::Cow;
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};

use super::{KeyInput, KeyMaterial, KeyRejection, KeySource};

/// The unreserved characters of RFC 3986 (section 2.3) stay as they are;
/// every other byte is escaped, so one value has one canonical spelling.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-decodes a path segment, strictly: every `%` starts an escape of
/// two hex digits, and the result is UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let well_formed = raw.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err("has a `%` that is not followed by two hex digits");
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "is not UTF-8 once percent-decoded")
}

/// Percent-decodes leniently, as axum does: a `%` without two hex digits
/// is kept as it is, and the bytes need not be UTF-8.
pub(super) fn percent_decode_lenient(raw: &str) -> Cow<'_, [u8]> {
    percent_decode_str(raw).into()
}

/// Appends `bytes` percent-encoded, uppercase hex, all but the unreserved
/// characters escaped.
pub(super) fn percent_encode_into(bytes: &[u8], out: &mut String) {
    out.extend(percent_encode(bytes, ESCAPED));
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
