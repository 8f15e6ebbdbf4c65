//! Where the idempotency key and the scope come from.
//!
//! A [`KeySource`] turns a request into [`KeyMaterial`]: a client key from a
//! header ([`HeaderKey`]), or material derived from the request
//! ([`PathParams`], [`JsonFields`], or any closure). A [`ScopeSource`] names
//! the space the key lives in (tenant, principal), so two users' identical
//! keys never meet.

mod header;
mod json;
mod path;

use std::borrow::Cow;

use http::HeaderName;
use http::request::Parts;
use idempotency_core::{IdempotencyKey, KeyError};

pub use header::{HeaderKey, parse_key_header};
pub use json::JsonFields;
pub use path::{ParamType, PathParams};
pub(crate) use path::{path_param, percent_decode};

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

impl KeyMaterial {
    /// The record's identity for this material, exactly as the layer
    /// computes it: namespace and scope always; a client key alone (the
    /// method and route do not count: the same key sent to another route is
    /// the same operation, answered 422); derived material together with
    /// the method and the route template.
    ///
    /// Operator tools use it to find the record of a request from what the
    /// service was configured with.
    ///
    /// ```
    /// use idempotency_core::{IdempotencyKey, KeySpec};
    /// use idempotency_tower::KeyMaterial;
    ///
    /// let key = IdempotencyKey::new("order-42").unwrap();
    /// let material = KeyMaterial::Client(key.clone());
    /// assert_eq!(
    ///     material.storage_key("shop", "tenant-1", "POST", "/orders"),
    ///     KeySpec::new("shop").scope("tenant-1").client_key(&key).storage_key(),
    /// );
    /// // Derived material: the route template is part of the identity.
    /// let derived = KeyMaterial::Derived(vec![b"E-1".to_vec(), b"3".to_vec()]);
    /// assert_ne!(
    ///     derived.storage_key("promotion", "", "POST", "/estimates/{id}/promote"),
    ///     derived.storage_key("promotion", "", "POST", "/estimates/{id}/copy"),
    /// );
    /// ```
    pub fn storage_key(
        &self,
        namespace: &str,
        scope: &str,
        method: &str,
        route: &str,
    ) -> idempotency_core::StorageKey {
        // The same keys as `KeySpec` gives, hashed without building one.
        let (namespace, scope) = (namespace.as_bytes(), scope.as_bytes());
        match self {
            Self::Client(k) => idempotency_core::StorageKey::for_client_key(namespace, scope, k),
            Self::Derived(values) => idempotency_core::StorageKey::for_derived(
                namespace,
                scope,
                method.as_bytes(),
                route.as_bytes(),
                values,
            ),
        }
    }
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
    use super::path::*;
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
