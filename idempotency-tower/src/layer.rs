//! [`IdempotencyLayer`]: the builder (every option, with its doctest); the
//! options themselves live in the `config` module.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idempotency_core::{FingerprintMode, Policy, StorageKey};
use tower_layer::Layer;

use crate::config::{Concurrency, Config, RouteFn, StoreFailureMode};
use crate::hook::DecisionHook;
use crate::key::{KeyMaterial, KeySource, ScopeSource};
use crate::policy::OutcomePolicy;
use crate::service::Idempotency;
use crate::verify::VerifyResource;

/// Makes the side effect of each request run once per idempotency key.
///
/// Generic over the store `St` (any [`IdempotencyStore`](idempotency_core::IdempotencyStore)
/// that is `Clone + Send + Sync + 'static`; use
/// [`DynStore`](idempotency_core::DynStore) to choose it at run time). Every
/// option has a sensible default; see the crate documentation for the
/// semantics and the tables.
///
/// ```
/// use axum::{Router, routing::post};
/// use idempotency_core::MemoryStore;
/// use idempotency_tower::IdempotencyLayer;
///
/// let app: Router = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .layer(IdempotencyLayer::new(MemoryStore::new()).namespace("shop"));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct IdempotencyLayer<St> {
    pub(crate) store: St,
    pub(crate) config: Arc<Config>,
}

impl<St> IdempotencyLayer<St> {
    /// A layer over `store` with the default options.
    pub fn new(store: St) -> Self {
        Self {
            store,
            config: Arc::new(Config::default()),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// Names the application or operation family; records of different
    /// namespaces never meet (default: empty).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).namespace("billing-v1");
    /// ```
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.edit(|c| c.namespace = namespace)
    }

    /// Where the key comes from (default: [`HeaderKey::new`](crate::HeaderKey::new), the
    /// `Idempotency-Key` header, sf-string or bare).
    ///
    /// Derived keys: [`PathParams`](crate::PathParams),
    /// [`JsonFields`](crate::JsonFields), or a closure.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// use idempotency_tower::{IdempotencyLayer, JsonFields, KeyInput, KeyMaterial, KeyRejection, ParamType, PathParams};
    ///
    /// // The promotion of an estimate snapshot runs once per (estimate, version):
    /// // `/estimates/%45-1/versions/01/...` is the same promotion as `/estimates/E-1/versions/1/...`.
    /// let by_path = IdempotencyLayer::new(MemoryStore::new())
    ///     .key_source(PathParams::new(["estimate_id", "version"]).typed("version", ParamType::U64));
    /// // An upload runs once per vendor and file hash.
    /// let by_fields = IdempotencyLayer::new(MemoryStore::new())
    ///     .key_source(JsonFields::new(["/vendor_id", "/file_hash"]));
    /// // Anything else: a closure.
    /// let by_header = IdempotencyLayer::new(MemoryStore::new()).key_source(
    ///     |input: &KeyInput<'_>| -> Result<Option<KeyMaterial>, KeyRejection> {
    ///         Ok(input
    ///             .parts()
    ///             .headers
    ///             .get("x-message-id")
    ///             .map(|v| KeyMaterial::Derived(vec![v.as_bytes().to_vec()])))
    ///     },
    /// );
    /// ```
    pub fn key_source(self, source: impl KeySource) -> Self {
        let source: Arc<dyn KeySource> = Arc::new(source);
        self.edit(|c| c.key_source = source)
    }

    /// Whether a request without a key is refused with 400 `key-missing`
    /// (`true`, the default) or passes through unprotected (`false`).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// // Clients that send a key get exactly-once; others are served as before.
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).key_required(false);
    /// ```
    pub fn key_required(self, required: bool) -> Self {
        self.edit(|c| c.key_required = required)
    }

    /// Names the space keys live in, from the request as it reaches the layer
    /// (after authentication): two scopes' identical keys never meet.
    ///
    /// **Fails closed**: when the source returns `None` for a request (the
    /// authentication layer is missing, or placed after this one), the
    /// request is answered 500 `scope-missing` with an error log, and
    /// nothing runs or is stored — rather than putting every such caller in
    /// one shared key space, where one user could receive another's replay.
    /// Requests that may go unscoped are an explicit choice:
    /// [`allow_unscoped`](Self::allow_unscoped), or a source that returns
    /// `Some(String::new())` for them. Without a scope source every request
    /// is in the shared space.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// #[derive(Clone)]
    /// struct Principal(String);
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(|parts: &http::request::Parts| {
    ///         parts.extensions.get::<Principal>().map(|p| p.0.clone())
    ///     });
    /// ```
    pub fn scope(self, scope: impl ScopeSource) -> Self {
        let scope: Arc<dyn ScopeSource> = Arc::new(scope);
        self.edit(|c| c.scope = Some(scope))
    }

    /// Lets a request for which the [scope](Self::scope) source returns
    /// `None` run in the shared, unscoped key space (with every other such
    /// request), instead of answering 500 `scope-missing`. For services where
    /// anonymous callers are expected and share nothing worth protecting.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// #[derive(Clone)]
    /// struct Principal(String);
    ///
    /// // Signed-in users have their own keys; anonymous callers share one space.
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(|parts: &http::request::Parts| parts.extensions.get::<Principal>().map(|p| p.0.clone()))
    ///     .allow_unscoped();
    /// ```
    pub fn allow_unscoped(self) -> Self {
        self.edit(|c| c.allow_unscoped = true)
    }

    /// How to name the route template of a request, when neither axum's
    /// `MatchedPath` (read automatically with the `axum` feature) nor the path
    /// will do. Returning `None` falls back to those.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).route(|parts: &http::request::Parts| {
    ///     parts.uri.path().starts_with("/orders/").then(|| "/orders/{id}".to_owned())
    /// });
    /// ```
    pub fn route<F>(self, route: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        let route: Arc<RouteFn> = Arc::new(route);
        self.edit(|c| c.route = Some(route))
    }

    /// The methods the layer handles (default `POST` and `PATCH`). Safe
    /// methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`) always pass through, even
    /// if listed.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// use http::Method;
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .methods([Method::POST, Method::PATCH, Method::PUT, Method::DELETE]);
    /// ```
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.edit(|c| c.methods = methods)
    }

    /// Sets lease, heartbeat, retention, max attempts, waiting, store timeout
    /// and settle timeout at once from a core [`Policy`] (its values are
    /// clamped into safe ranges; see its table).
    ///
    /// ```
    /// # use idempotency_core::{MemoryStore, Policy};
    /// # use idempotency_tower::IdempotencyLayer;
    /// use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .policy(Policy::default().lease(Duration::from_secs(30)).max_attempts(5));
    /// ```
    pub fn policy(self, policy: Policy) -> Self {
        self.edit(|c| c.policy = policy)
    }

    /// How long a claim is exclusive without a heartbeat (default 10 s). The
    /// layer renews it every third of the lease while the handler runs, so a
    /// handler may run longer than the lease; a crashed worker's key is taken
    /// over once it runs out.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// # use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).lease(Duration::from_secs(5));
    /// ```
    pub fn lease(self, lease: Duration) -> Self {
        self.edit(|c| c.policy = c.policy.clone().lease(lease))
    }

    /// How long a finished record is replayed, from completion (default 24 h).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// # use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .retention(Duration::from_secs(7 * 24 * 3600));
    /// ```
    pub fn retention(self, retention: Duration) -> Self {
        self.edit(|c| c.policy = c.policy.clone().retention(retention))
    }

    /// How many executions one key may start in total, crash takeovers and
    /// retries after a retryable failure included (default 3). The last
    /// allowed attempt's failure is terminal: later requests get 500
    /// `operation-failed`.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).max_attempts(5);
    /// ```
    pub fn max_attempts(self, n: u32) -> Self {
        self.edit(|c| c.policy = c.policy.clone().max_attempts(n))
    }

    /// What a duplicate does while the first request executes: 409 at once
    /// ([`Concurrency::Reject`], the default) or wait for its response
    /// ([`Concurrency::Wait`]).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::{Concurrency, IdempotencyLayer};
    /// # use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .concurrency(Concurrency::Wait(Duration::from_secs(5)));
    /// ```
    pub fn concurrency(self, mode: Concurrency) -> Self {
        self.edit(|c| {
            c.policy = match mode {
                Concurrency::Reject => c.policy.clone().no_wait(),
                Concurrency::Wait(t) => c.policy.clone().wait(t),
            }
        })
    }

    /// What happens when the store fails: 503 ([`StoreFailureMode::FailClosed`],
    /// the default) or run unprotected ([`StoreFailureMode::FailOpen`]).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::{IdempotencyLayer, StoreFailureMode};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).on_store_failure(StoreFailureMode::FailOpen);
    /// ```
    pub fn on_store_failure(self, mode: StoreFailureMode) -> Self {
        self.edit(|c| c.store_failure = mode)
    }

    /// How long one store operation may take before it counts as a store
    /// failure (default 5 s; in wait mode the claim may also wait the wait timeout).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// # use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).store_timeout(Duration::from_millis(500));
    /// ```
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.policy = c.policy.clone().store_timeout(timeout))
    }

    /// How long the final write of an execution (complete, fail, release) is
    /// retried with backoff while the store fails, the lease renewed
    /// meanwhile (default 60 s). The response waits for it: a retry sent
    /// after the answer finds the record settled.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// # use std::time::Duration;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).settle_timeout(Duration::from_secs(20));
    /// ```
    pub fn settle_timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.policy = c.policy.clone().settle_timeout(timeout))
    }

    /// The largest request body accepted, in bytes (default 1 MiB). Enforced
    /// while streaming, chunked bodies included: a request over it is answered
    /// 413 `request-too-large` as soon as the cap is crossed, and nothing is
    /// stored.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).max_request_body(64 * 1024);
    /// ```
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.edit(|c| c.max_request_body = bytes)
    }

    /// The largest response body stored for replay, in bytes (default 1 MiB).
    /// A larger response still reaches its client in full; its record becomes
    /// a tombstone that never re-executes (replays get the original status
    /// and replayed headers, such as `Location` and `Content-Type`, an empty
    /// body and `Idempotent-Replayed: true`).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).max_stored_response(256 * 1024);
    /// ```
    pub fn max_stored_response(self, bytes: usize) -> Self {
        self.edit(|c| c.max_stored_response = bytes)
    }

    /// Which responses are stored and replayed, which release the key and
    /// which mark a retryable failure (see [`OutcomePolicy`] for the default table).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// use http::StatusCode;
    /// use idempotency_tower::{IdempotencyLayer, OutcomeAction, OutcomePolicy};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).outcomes(
    ///     OutcomePolicy::default().with(StatusCode::CONFLICT, OutcomeAction::Release),
    /// );
    /// ```
    pub fn outcomes(self, policy: OutcomePolicy) -> Self {
        self.edit(|c| c.outcomes = policy)
    }

    /// What makes two requests with one key "the same request" (besides
    /// method and path): the whole body as canonical JSON
    /// ([`FingerprintMode::Body`], the default), selected JSON fields, or
    /// nothing ([`FingerprintMode::None`]: method and path only, the query
    /// ignored unless [`fingerprint_query`](Self::fingerprint_query) says otherwise).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// use idempotency_core::FingerprintMode;
    /// # use idempotency_tower::IdempotencyLayer;
    /// // A client-side timestamp in the body must not make a retry a "different request".
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .fingerprint(FingerprintMode::fields(["/sku", "/quantity"]));
    /// ```
    pub fn fingerprint(self, mode: FingerprintMode) -> Self {
        self.edit(|c| c.fingerprint = mode)
    }

    /// Whether the query string takes part in the fingerprint, i.e. whether
    /// `?a=1` and `?a=2` with one key are different requests (answered 422).
    /// Default: yes with [`FingerprintMode::Body`] and
    /// [`FingerprintMode::Fields`]; no with [`FingerprintMode::None`], where
    /// the path is the whole request (a tracking parameter such as `?utm=1`
    /// on a retry is the same request, and is replayed).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// use idempotency_core::FingerprintMode;
    /// # use idempotency_tower::IdempotencyLayer;
    /// // The body decides; the query only carries tracking parameters.
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .fingerprint(FingerprintMode::Body)
    ///     .fingerprint_query(false);
    /// ```
    pub fn fingerprint_query(self, counts: bool) -> Self {
        self.edit(|c| c.fingerprint_query = Some(counts))
    }

    /// The response headers stored and replayed (default: `Content-Type`,
    /// `Location`, `ETag`, `Last-Modified`, `Link`, `Content-Location`). The
    /// headers in [`NEVER_REPLAYED`](crate::NEVER_REPLAYED) (`Set-Cookie`, `Date`, `WWW-Authenticate`,
    /// ...) are never replayed, even if listed.
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::{IdempotencyLayer, DEFAULT_REPLAY_HEADERS};
    /// use http::HeaderName;
    /// let mut headers = DEFAULT_REPLAY_HEADERS.to_vec();
    /// headers.push(HeaderName::from_static("x-order-version"));
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).replay_headers(headers);
    /// ```
    pub fn replay_headers(self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let headers: Vec<HeaderName> = headers.into_iter().collect();
        self.edit(|c| c.replay_headers = headers)
    }

    /// Receives one [`Decision`](crate::Decision) per handled request (an
    /// audit sink, a test probe). Replaces any earlier hook; see
    /// [`DecisionHook`] for its contract (cheap, never blocking).
    ///
    /// ```
    /// # use idempotency_core::MemoryStore;
    /// # use idempotency_tower::{Decision, IdempotencyLayer};
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .decision_hook(|d: &Decision| eprintln!("{} {}", d.outcome, d.route));
    /// ```
    pub fn decision_hook(self, hook: impl DecisionHook) -> Self {
        let hook: Arc<dyn DecisionHook> = Arc::new(hook);
        self.edit(|c| c.hook = Some(hook))
    }
}

impl<St> IdempotencyLayer<St> {
    /// Checks, before each replay of a completed record that carries a
    /// resource reference, that the resource still exists (see
    /// [`VerifyResource`] for what each answer does). Default: no check.
    ///
    /// ```
    /// # use idempotency_core::{BoxError, MemoryStore};
    /// # use idempotency_tower::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .verify_resource(|_resource: String| async { Ok::<_, BoxError>(true) });
    /// ```
    pub fn verify_resource(self, check: impl VerifyResource) -> Self {
        let check: Arc<dyn VerifyResource> = Arc::new(check);
        self.edit(|c| c.verify = Some(check))
    }

    /// The storage key the layer uses for a request with this method, route
    /// template, scope and key material: for operator tools that act on one
    /// record (resolve it, read it) without a request at hand.
    ///
    /// ```
    /// use http::Method;
    /// use idempotency_core::MemoryStore;
    /// use idempotency_tower::{IdempotencyLayer, KeyMaterial, PathParams};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .namespace("promotion")
    ///     .key_source(PathParams::new(["estimate_id", "version"]));
    /// let material = KeyMaterial::Derived(vec![b"E-1".to_vec(), b"3".to_vec()]);
    /// let key = layer.storage_key(&Method::POST, "/estimates/{estimate_id}/snapshots/{version}/promote", "", &material);
    /// assert_eq!(key.to_hex().len(), 64);
    /// ```
    pub fn storage_key(
        &self,
        method: &Method,
        route: &str,
        scope: &str,
        material: &KeyMaterial,
    ) -> StorageKey {
        self.config.storage_key(method, route, scope, material)
    }
}

impl<S, St: Clone> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(inner, self.store.clone(), self.config.clone())
    }
}
