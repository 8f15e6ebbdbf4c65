//! The layer's configuration and the header names it reads and writes, in
//! one place: what [`IdempotencyLayer`](crate::IdempotencyLayer) builds.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idempotency_core::{FingerprintMode, Policy, StorageKey};

use crate::hook::DecisionHook;
use crate::key::{HeaderKey, KeyMaterial, KeySource, ScopeSource};
use crate::policy::OutcomePolicy;
use crate::verify::VerifyResource;

/// The name of the standard header, `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`, set to `true` on every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `x-request-id`: read from the request, generated (UUIDv7) when absent, and
/// echoed on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest `x-request-id` taken from a client: 128 characters.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Default cap on request bodies: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Default cap on stored responses: 1 MiB.
pub const DEFAULT_MAX_STORED_RESPONSE: usize = 1024 * 1024;

/// Headers replayed by default: what a client needs to read the body and
/// find what was created (a replay behind a compression layer keeps its
/// `Content-Encoding`, so the stored bytes decode).
pub const DEFAULT_REPLAY_HEADERS: [HeaderName; 9] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    http::header::VARY,
    http::header::LOCATION,
    http::header::ETAG,
    http::header::LAST_MODIFIED,
    http::header::LINK,
    http::header::CONTENT_LOCATION,
];

/// Headers never replayed, whatever the allow-list says: they belong to one
/// response only (cookies, dates, auth challenges, framing).
pub const NEVER_REPLAYED: [HeaderName; 8] = [
    http::header::SET_COOKIE,
    http::header::DATE,
    http::header::WWW_AUTHENTICATE,
    http::header::PROXY_AUTHENTICATE,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    HeaderName::from_static("idempotent-replayed"),
];

/// What a duplicate does while the first request with its key executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Concurrency {
    /// Answer 409 `in-flight` with `Retry-After` at once (the default).
    Reject,
    /// Wait up to this long for the first request to finish, then answer its
    /// response marked as a replay (or 409 when the wait times out).
    Wait(Duration),
}

/// What the layer does when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreFailureMode {
    /// Answer 503 `store-unavailable` with `Retry-After` (the default).
    #[default]
    FailClosed,
    /// Run the request without idempotency protection, logging a warning.
    FailOpen,
}

pub(crate) type RouteFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) key_source: Arc<dyn KeySource>,
    pub(crate) key_required: bool,
    pub(crate) scope: Option<Arc<dyn ScopeSource>>,
    /// A configured scope that finds none puts the request in the shared space.
    pub(crate) allow_unscoped: bool,
    pub(crate) route: Option<Arc<RouteFn>>,
    pub(crate) methods: Vec<Method>,
    pub(crate) policy: Policy,
    pub(crate) store_failure: StoreFailureMode,
    pub(crate) max_request_body: usize,
    pub(crate) max_stored_response: usize,
    pub(crate) outcomes: OutcomePolicy,
    pub(crate) fingerprint: FingerprintMode,
    /// Whether the query takes part in the fingerprint; `None`: as the mode says.
    pub(crate) fingerprint_query: Option<bool>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) hook: Option<Arc<dyn DecisionHook>>,
    pub(crate) verify: Option<Arc<dyn VerifyResource>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            key_source: Arc::new(HeaderKey::new()),
            key_required: true,
            scope: None,
            allow_unscoped: false,
            route: None,
            methods: vec![Method::POST, Method::PATCH],
            policy: Policy::default(),
            store_failure: StoreFailureMode::FailClosed,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_stored_response: DEFAULT_MAX_STORED_RESPONSE,
            outcomes: OutcomePolicy::default(),
            fingerprint: FingerprintMode::Body,
            fingerprint_query: None,
            replay_headers: DEFAULT_REPLAY_HEADERS.to_vec(),
            hook: None,
            verify: None,
        }
    }
}

impl Config {
    /// Whether the layer handles requests with this method. Safe methods never.
    pub(crate) fn handles(&self, method: &Method) -> bool {
        !method.is_safe() && self.methods.contains(method)
    }

    pub(crate) fn route_of(&self, parts: &Parts) -> String {
        if let Some(route) = self.route.as_ref().and_then(|f| f(parts)) {
            return route;
        }
        #[cfg(feature = "axum")]
        if let Some(m) = parts.extensions.get::<axum::extract::MatchedPath>() {
            return m.as_str().to_owned();
        }
        parts.uri.path().to_owned()
    }

    /// The request's scope: the configured source's answer; the shared,
    /// unscoped space (`""`) when no source is configured, or when it found
    /// none and [`allow_unscoped`](IdempotencyLayer::allow_unscoped) was
    /// chosen; `None` when the request must not run (fail closed).
    pub(crate) fn scope_of(&self, parts: &Parts) -> Option<String> {
        match &self.scope {
            None => Some(String::new()),
            Some(source) => source
                .scope(parts)
                .or_else(|| self.allow_unscoped.then(String::new)),
        }
    }

    /// The record's identity: namespace, scope and the key material (client
    /// keys alone; derived material together with method and route template).
    pub(crate) fn storage_key(
        &self,
        method: &Method,
        route: &str,
        scope: &str,
        material: &KeyMaterial,
    ) -> StorageKey {
        material.storage_key(&self.namespace, scope, method.as_str(), route)
    }

    /// Whether the query string takes part in the fingerprint.
    pub(crate) fn query_counts(&self) -> bool {
        self.fingerprint_query
            .unwrap_or(!matches!(self.fingerprint, FingerprintMode::None))
    }

    /// What the fingerprint hashes as the request's target: the path (in the
    /// key source's canonical form when it has one), and the query when it counts.
    pub(crate) fn fingerprint_target<'u>(
        &self,
        uri: &'u http::Uri,
        canonical_path: Option<&str>,
    ) -> std::borrow::Cow<'u, str> {
        let query = uri.query().filter(|_| self.query_counts());
        match (canonical_path, query) {
            (None, Some(_)) => uri.path_and_query().map_or("/", |p| p.as_str()).into(),
            (None, None) => uri.path().into(),
            (Some(path), Some(q)) => format!("{path}?{q}").into(),
            (Some(path), None) => path.to_owned().into(),
        }
    }

    pub(crate) fn replays(&self, name: &HeaderName) -> bool {
        self.replay_headers.contains(name) && !NEVER_REPLAYED.contains(name)
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("namespace", &self.namespace)
            .field("key_required", &self.key_required)
            .field("allow_unscoped", &self.allow_unscoped)
            .field("methods", &self.methods)
            .field("policy", &self.policy)
            .field("store_failure", &self.store_failure)
            .field("max_request_body", &self.max_request_body)
            .field("max_stored_response", &self.max_stored_response)
            .field("outcomes", &self.outcomes)
            .field("fingerprint", &self.fingerprint)
            .field("fingerprint_query", &self.fingerprint_query)
            .field("replay_headers", &self.replay_headers)
            .finish_non_exhaustive()
    }
}
