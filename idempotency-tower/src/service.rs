//! [`Idempotency`], the service, and what a request goes through, step by
//! step: the key, the body, the record's identity and fingerprint, the
//! store's decision, and the answer (execution, replay or problem).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use idempotency_core::{BoxError, Claim, Fingerprint, IdempotencyStore, StorageKey, StoreError};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{CollectError, RequestBody, ResponseBody, collect_limited};
use crate::config::{Config, IDEMPOTENT_REPLAYED, StoreFailureMode};
use crate::execute::{ClaimOnDrop, execute, unprotected};
use crate::future::ResponseFuture;
use crate::hook::DecisionOutcome;
use crate::key::{KeyInput, KeyMaterial};
use crate::layer::IdempotencyLayer;
use crate::metrics::timed;
use crate::observe::Ctx;
use crate::problem::{Problem, ProblemType, Wording};
use crate::replay::replay;
use crate::request_id::ensure_request_id;

/// The inner service as the layer drives it: one bound for every step.
pub(crate) trait Inner<ReqBody, ResBody>:
    Service<
        Request<RequestBody<ReqBody>>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<T, ReqBody, ResBody> Inner<ReqBody, ResBody> for T
where
    T: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Send + 'static,
{
}

/// A request body the layer can buffer.
pub(crate) trait ReqBodyOf:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ReqBodyOf for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// A response body the layer can collect, store and forward.
pub(crate) trait ResBodyOf:
    Body<Data = Bytes, Error: Into<BoxError> + Send> + Send + 'static
{
}

impl<B> ResBodyOf for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
}

/// A store the layer can share with the handler's task.
pub(crate) trait SharedStore: IdempotencyStore + Clone + Send + Sync + 'static {}

impl<T: IdempotencyStore + Clone + Send + Sync + 'static> SharedStore for T {}

/// The middleware. Build it with [`IdempotencyLayer`] (or [`Idempotency::new`]
/// for the defaults).
#[derive(Clone, Debug)]
pub struct Idempotency<S, St> {
    inner: S,
    store: St,
    config: Arc<Config>,
}

impl<S, St> Idempotency<S, St> {
    /// Wraps `inner` with the default options over `store`.
    pub fn new(inner: S, store: St) -> Self {
        Self::from_parts(inner, store, Arc::new(Config::default()))
    }

    pub(crate) fn from_parts(inner: S, store: St, config: Arc<Config>) -> Self {
        Self {
            inner,
            store,
            config,
        }
    }

    /// A layer over `store` (same as [`IdempotencyLayer::new`]).
    pub fn layer(store: St) -> IdempotencyLayer<St> {
        IdempotencyLayer::new(store)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore + Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !self.config.handles(req.method()) {
            return ResponseFuture::pass_through(self.inner.call(req.map(RequestBody::streaming)));
        }
        // The ready service is the one that runs the request; keep a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        let config = self.config.clone();
        ResponseFuture::handled(Box::pin(handle(inner, store, config, req)))
    }
}

/// The span and observability context, made before the future: the boxed
/// future is then the steps alone, not the steps plus the request they were
/// made from (every byte of it is copied when the future is boxed).
fn handle<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    config: Arc<Config>,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: ReqBodyOf,
    ResBody: ResBodyOf,
{
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let correlation_id = ensure_request_id(&mut parts.headers);
    let route = config.route_of(&parts);
    let span = tracing::info_span!(
        "idempotency",
        http.method = %parts.method,
        http.route = %route,
        request_id = ?correlation_id,
        idempotency.outcome = tracing::field::Empty,
        idempotency.key_hash = tracing::field::Empty,
        idempotency.fence = tracing::field::Empty,
        idempotency.attempt = tracing::field::Empty,
        http.status_code = tracing::field::Empty,
    );
    let ctx = Ctx::new(config, started, &parts, route, correlation_id, span.clone());
    decide(inner, store, ctx, parts, body).instrument(span)
}

/// What the request's key source made of it.
enum KeyStep {
    /// The key.
    Key(KeyMaterial),
    /// No key, and none is required: run unprotected.
    Absent,
    /// Refused (missing but required, or invalid).
    Refused(Problem),
}

/// Asks the key source, once per place it may look (before the body for
/// header and path keys, after it for body-derived keys).
fn key_step(ctx: &Ctx, wording: &Wording<'_>, parts: &Parts, body: Option<&[u8]>) -> KeyStep {
    let input = KeyInput::new(parts, &ctx.route, body);
    match ctx.config.key_source.extract(&input) {
        Ok(Some(m)) => KeyStep::Key(m),
        Ok(None) if ctx.config.key_required => KeyStep::Refused(wording.key_missing()),
        Ok(None) => KeyStep::Absent,
        Err(e) => KeyStep::Refused(Problem::key_rejected(&e)),
    }
}

/// The body, bounded while streaming.
async fn read_body<B: ReqBodyOf>(config: &Config, body: B) -> Result<Bytes, Problem> {
    match collect_limited(body, config.max_request_body).await {
        Ok(b) => Ok(b),
        Err(CollectError::TooLarge) => {
            let detail = format!("the request body exceeds {} bytes", config.max_request_body);
            Err(Problem::new(ProblemType::RequestTooLarge, detail))
        }
        Err(CollectError::Body(e)) => {
            let e: BoxError = e.into();
            tracing::debug!(error = %e, "request body could not be read");
            Err(Problem::new(
                ProblemType::InvalidBody,
                "the request body could not be read",
            ))
        }
    }
}

/// The record's identity (namespace, scope, key material) and the request's
/// fingerprint; records the key on the context.
fn identify(
    ctx: &mut Ctx,
    parts: &Parts,
    body: &Bytes,
    material: &KeyMaterial,
) -> Result<(StorageKey, Fingerprint), Problem> {
    let config = ctx.config.clone();
    let Some(scope) = config.scope_of(parts) else {
        tracing::error!(
            "the idempotency scope source found no scope for this request (is the layer placed \
             after authentication?); answered 500 scope-missing, nothing ran \
             (IdempotencyLayer::allow_unscoped lets such requests share one key space)"
        );
        return Err(Problem::scope_missing());
    };
    let key = config.storage_key(&parts.method, &ctx.route, &scope, material);
    ctx.set_key(key);
    let source = &config.key_source;
    let canonical = source.canonical_path(&KeyInput::new(parts, &ctx.route, Some(body)));
    let target = config.fingerprint_target(&parts.uri, canonical.as_deref());
    Fingerprint::compute(parts.method.as_str(), &target, body, &config.fingerprint)
        .map(|fp| (key, fp))
        .map_err(|e| Problem::new(ProblemType::InvalidBody, e.to_string()))
}

/// The store's decision, under the claim budget (store timeout, plus the
/// wait in wait mode).
async fn claim<St: SharedStore>(
    store: &St,
    config: &Config,
    key: StorageKey,
    fingerprint: Fingerprint,
) -> Result<Claim, StoreError> {
    let claim_req = config.policy.claim_request(key, fingerprint);
    let wait = config.policy.wait_timeout();
    let op = if wait.is_some() {
        "claim_wait"
    } else {
        "claim"
    };
    let budget = config.policy.claim_budget();
    // Owned: a claim cut short by the budget or by the request's end still
    // reaches the store's answer, and lets go of a lease it acquired.
    timed(op, budget, ClaimOnDrop::new(store.clone(), claim_req, wait)).await
}

/// Every step of a handled request, in order.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
fn decide<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    mut ctx: Ctx,
    parts: Parts,
    body: ReqBody,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: ReqBodyOf,
    ResBody: ResBodyOf,
{
    async move {
        let config = ctx.config.clone();
        let wording = Wording::new(config.key_source.header());

        // 1. A key read from headers or the path is checked before the body is read.
        let reads_body = config.key_source.reads_body();
        let early = (!reads_body).then(|| key_step(&ctx, &wording, &parts, None));
        match early {
            Some(KeyStep::Absent) => {
                let req = Request::from_parts(parts, RequestBody::streaming(body));
                return unprotected(inner, &ctx, req, DecisionOutcome::PassedThrough).await;
            }
            Some(KeyStep::Refused(p)) => return Ok(ctx.problem(DecisionOutcome::Rejected, p)),
            Some(KeyStep::Key(_)) | None => {}
        }

        // 2. The body, bounded while streaming.
        let body = match read_body(&config, body).await {
            Ok(b) => b,
            Err(p) => return Ok(ctx.problem(DecisionOutcome::Rejected, p)),
        };

        // 3. A key derived from the body.
        let step = match early {
            Some(step) => step,
            None => key_step(&ctx, &wording, &parts, Some(&body)),
        };
        let material = match step {
            KeyStep::Key(m) => m,
            KeyStep::Absent => {
                let req = Request::from_parts(parts, RequestBody::buffered(body));
                return unprotected(inner, &ctx, req, DecisionOutcome::PassedThrough).await;
            }
            KeyStep::Refused(p) => return Ok(ctx.problem(DecisionOutcome::Rejected, p)),
        };

        // 4. The record's identity and the request's fingerprint.
        let (key, fingerprint) = match identify(&mut ctx, &parts, &body, &material) {
            Ok(x) => x,
            Err(p) => return Ok(ctx.problem(DecisionOutcome::Rejected, p)),
        };

        // 5. The store decides.
        let claim = match claim(&store, &config, key, fingerprint).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "idempotency store failed on claim");
                return match config.store_failure {
                    StoreFailureMode::FailClosed => Ok(ctx.problem(
                        DecisionOutcome::StoreUnavailable,
                        Problem::new(
                            ProblemType::StoreUnavailable,
                            "the idempotency store is unavailable; retry later",
                        )
                        .retry_after(Duration::from_secs(1)),
                    )),
                    StoreFailureMode::FailOpen => {
                        let req = Request::from_parts(parts, RequestBody::buffered(body));
                        unprotected(inner, &ctx, req, DecisionOutcome::StoreUnavailable).await
                    }
                };
            }
        };

        // 6. The answer.
        match claim {
            Claim::Acquired { lease, kind } => {
                ctx.set_lease(&lease);
                let req = Request::from_parts(parts, RequestBody::buffered(body));
                // Not `inner.call` here: `execute` makes the call and boxes
                // it at once in a future that runs to its end even when this
                // one is dropped, so dropping this future never drops the
                // handler.
                execute(inner, store, ctx, lease, kind, req).await
            }
            other => Ok(answer(&store, &mut ctx, &wording, &key, other).await),
        }
    }
}

/// The answer to every decision but an execution.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
fn answer<St: SharedStore, B: Body>(
    store: &St,
    ctx: &mut Ctx,
    wording: &Wording<'_>,
    key: &StorageKey,
    claim: Claim,
) -> impl Future<Output = Response<ResponseBody<B>>> {
    async move {
        match claim {
            Claim::InFlight { retry_after, .. } => ctx.problem(
                DecisionOutcome::InFlight,
                wording.in_flight().retry_after(retry_after),
            ),
            Claim::Completed(completed) => {
                ctx.resource.clone_from(&completed.resource);
                replay(store, ctx, key, completed).await
            }
            Claim::Failed(failed) => {
                let mut res = ctx.problem(
                    DecisionOutcome::Replayed,
                    wording.operation_failed(&failed.reason),
                );
                res.headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                res
            }
            Claim::Mismatch => ctx.problem(DecisionOutcome::Mismatch, wording.key_reused()),
            Claim::Corrupted { detail } => {
                tracing::error!(alert = true, %detail, "idempotency record is corrupted");
                ctx.problem(
                DecisionOutcome::Corrupted,
                Problem::new(
                    ProblemType::RecordCorrupted,
                    "the idempotency record for this key is corrupted; an operator must resolve it",
                ),
            )
            }
            other => {
                tracing::error!(claim = ?other, "unexpected claim decision from the store");
                ctx.problem(
                    DecisionOutcome::StoreUnavailable,
                    Problem::new(
                        ProblemType::StoreUnavailable,
                        "the idempotency store gave an unexpected answer",
                    )
                    .retry_after(Duration::from_secs(1)),
                )
            }
        }
    }
}
