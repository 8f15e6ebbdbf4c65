//! [`Idempotency`]: the service and its request handling.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body::Body;
use idempotency_core::{
    BoxError, Claim, ClaimKind, Completed, Completion, Failure, Fingerprint, IdempotencyStore,
    Lease, Observed, Outcome, OwnedAttempt, SettleError, StorageKey, StoreError, StoredResponse,
    claim_with_wait,
};
use tower_service::Service;
use tracing::{Instrument, Span};

use crate::body::{
    CollectError, Collected, RequestBody, ResponseBody, collect_limited, collect_response,
};
use crate::context::{IdempotencyContext, stored_response, stored_trailers};
use crate::future::ResponseFuture;
use crate::hook::{Decision, DecisionOutcome};
use crate::key::KeyInput;
use crate::layer::{Config, IdempotencyLayer, StoreFailureMode};
use crate::metrics::{Metered, count_outcome, timed};
use crate::policy::OutcomeAction;
use crate::problem::{Problem, ProblemType, Wording};

/// `Idempotent-Replayed`, set to `true` on every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// `x-request-id`: read from the request, generated (UUIDv7) when absent, and
/// echoed on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// What one handled request has learnt so far, for its span, metrics and decision.
struct Ctx {
    config: Arc<Config>,
    started: Instant,
    method: Method,
    route: String,
    path: String,
    correlation_id: HeaderValue,
    span: Span,
    resource: Option<String>,
    /// The record's storage key; its hex form is made only when something reads it.
    key: Option<StorageKey>,
    fence: Option<u64>,
    attempt: Option<u32>,
}

impl Ctx {
    fn decide(&self, outcome: DecisionOutcome, status: Option<StatusCode>) {
        self.span.record("idempotency.outcome", outcome.as_str());
        if let Some(s) = status {
            self.span.record("http.status_code", s.as_u16());
        }
        count_outcome(outcome);
        tracing::debug!(parent: &self.span, outcome = outcome.as_str(), status = status.map(|s| s.as_u16()), "idempotency decision");
        let Some(hook) = &self.config.hook else {
            return;
        };
        let decision = Decision {
            outcome,
            key_hash: self.key.map(|k| k.to_hex()),
            fence: self.fence,
            attempt: self.attempt,
            method: self.method.clone(),
            route: self.route.clone(),
            path: self.path.clone(),
            resource: self.resource.clone(),
            status,
            correlation_id: String::from_utf8_lossy(self.correlation_id.as_bytes()).into_owned(),
            elapsed: self.started.elapsed(),
        };
        if std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_decision(&decision))).is_err() {
            tracing::error!(parent: &self.span, "decision hook panicked; ignored");
        }
    }

    /// Echoes the correlation id on a response.
    fn finish<B>(&self, mut res: Response<B>) -> Response<B> {
        if !res.headers().contains_key(X_REQUEST_ID) {
            res.headers_mut()
                .insert(X_REQUEST_ID, self.correlation_id.clone());
        }
        res
    }

    /// Answers a problem and records the decision.
    fn problem<B: Body>(
        &self,
        outcome: DecisionOutcome,
        problem: Problem,
    ) -> Response<ResponseBody<B>> {
        self.decide(outcome, Some(problem.kind.status()));
        self.finish(problem.into_response())
    }
}

/// The longest `x-request-id` taken from a client: 128 characters.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `x-request-id` is used as it is: 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters (no spaces, no controls).
/// Anything else is replaced by a generated id, so an unbounded client
/// value never reaches a log line, a response or an audit row.
pub fn is_acceptable_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// The request's correlation id: the client's `x-request-id` when it is
/// acceptable ([`is_acceptable_request_id`]), else a new UUIDv7, which then
/// replaces the client's value in the request's headers.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next())
        && is_acceptable_request_id(v)
    {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    let v = HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    headers.insert(X_REQUEST_ID, v.clone());
    v
}

async fn handle<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    config: Arc<Config>,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore + Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
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
    let ctx = Ctx {
        config,
        started,
        method: parts.method.clone(),
        route,
        path: parts.uri.path().to_owned(),
        correlation_id,
        span: span.clone(),
        resource: None,
        key: None,
        fence: None,
        attempt: None,
    };
    decide_and_run(inner, store, ctx, parts, body)
        .instrument(span)
        .await
}

async fn decide_and_run<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    mut ctx: Ctx,
    parts: Parts,
    body: ReqBody,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore + Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let config = ctx.config.clone();
    let source = config.key_source.clone();
    let wording = Wording::new(source.header());

    // 1. A key read from headers or the path is checked before the body is read.
    let mut material = None;
    if !source.reads_body() {
        match source.extract(&KeyInput::new(&parts, &ctx.route, None)) {
            Ok(Some(m)) => material = Some(m),
            Ok(None) if config.key_required => {
                return Ok(ctx.problem(DecisionOutcome::Rejected, wording.key_missing()));
            }
            Ok(None) => {
                let req = Request::from_parts(parts, RequestBody::streaming(body));
                return unprotected(inner, &ctx, req, DecisionOutcome::PassedThrough).await;
            }
            Err(e) => {
                return Ok(ctx.problem(DecisionOutcome::Rejected, Problem::key_rejected(&e)));
            }
        }
    }

    // 2. The body, bounded while streaming.
    let body = match collect_limited(body, config.max_request_body).await {
        Ok(b) => b,
        Err(CollectError::TooLarge) => {
            let detail = format!("the request body exceeds {} bytes", config.max_request_body);
            return Ok(ctx.problem(
                DecisionOutcome::Rejected,
                Problem::new(ProblemType::RequestTooLarge, detail),
            ));
        }
        Err(CollectError::Body(e)) => {
            let e: BoxError = e.into();
            tracing::debug!(error = %e, "request body could not be read");
            return Ok(ctx.problem(
                DecisionOutcome::Rejected,
                Problem::new(
                    ProblemType::InvalidBody,
                    "the request body could not be read",
                ),
            ));
        }
    };

    // 3. A key derived from the body.
    let material = match material {
        Some(m) => m,
        None => match source.extract(&KeyInput::new(&parts, &ctx.route, Some(&body))) {
            Ok(Some(m)) => m,
            Ok(None) if config.key_required => {
                return Ok(ctx.problem(DecisionOutcome::Rejected, wording.key_missing()));
            }
            Ok(None) => {
                let req = Request::from_parts(parts, RequestBody::buffered(body));
                return unprotected(inner, &ctx, req, DecisionOutcome::PassedThrough).await;
            }
            Err(e) => {
                return Ok(ctx.problem(DecisionOutcome::Rejected, Problem::key_rejected(&e)));
            }
        },
    };

    // 4. The record's identity and the request's fingerprint.
    let Some(scope) = config.scope_of(&parts) else {
        tracing::error!(
            "the idempotency scope source found no scope for this request (is the layer placed \
             after authentication?); answered 500 scope-missing, nothing ran \
             (IdempotencyLayer::allow_unscoped lets such requests share one key space)"
        );
        return Ok(ctx.problem(DecisionOutcome::Rejected, Problem::scope_missing()));
    };
    let key = config.storage_key(&parts.method, &ctx.route, &scope, &material);
    if !ctx.span.is_disabled() {
        ctx.span
            .record("idempotency.key_hash", key.to_hex().as_str());
    }
    ctx.key = Some(key);
    let canonical = source.canonical_path(&KeyInput::new(&parts, &ctx.route, Some(&body)));
    let target = config.fingerprint_target(&parts.uri, canonical.as_deref());
    let fingerprint =
        match Fingerprint::compute(parts.method.as_str(), &target, &body, &config.fingerprint) {
            Ok(f) => f,
            Err(e) => {
                return Ok(ctx.problem(
                    DecisionOutcome::Rejected,
                    Problem::new(ProblemType::InvalidBody, e.to_string()),
                ));
            }
        };

    // 5. The store decides.
    let claim_req = config.policy.claim_request(key, fingerprint);
    let wait = config.policy.wait_timeout();
    let op = if wait.is_some() {
        "claim_wait"
    } else {
        "claim"
    };
    let budget = config.policy.claim_budget();
    let claim = match timed(op, budget, claim_with_wait(&store, &claim_req, wait)).await {
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

    match claim {
        Claim::Acquired { lease, kind } => {
            ctx.fence = Some(lease.fence);
            ctx.attempt = Some(lease.attempt);
            ctx.span.record("idempotency.fence", lease.fence);
            ctx.span.record("idempotency.attempt", lease.attempt);
            let req = Request::from_parts(parts, RequestBody::buffered(body));
            // Not `inner.call` here: the call starts on the task, so that
            // dropping this future never drops the handler.
            execute(inner, store, ctx, lease, kind, req).await
        }
        Claim::InFlight { retry_after, .. } => Ok(ctx.problem(
            DecisionOutcome::InFlight,
            wording.in_flight().retry_after(retry_after),
        )),
        Claim::Completed(completed) => {
            ctx.resource.clone_from(&completed.resource);
            Ok(replay(&store, &ctx, &key, completed).await)
        }
        Claim::Failed(failed) => {
            let mut res = ctx.problem(
                DecisionOutcome::Replayed,
                wording.operation_failed(&failed.reason),
            );
            res.headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(res)
        }
        Claim::Mismatch => Ok(ctx.problem(DecisionOutcome::Mismatch, wording.key_reused())),
        Claim::Corrupted { detail } => {
            tracing::error!(alert = true, %detail, "idempotency record is corrupted");
            Ok(ctx.problem(
                DecisionOutcome::Corrupted,
                Problem::new(
                    ProblemType::RecordCorrupted,
                    "the idempotency record for this key is corrupted; an operator must resolve it",
                ),
            ))
        }
        other => {
            tracing::error!(claim = ?other, "unexpected claim decision from the store");
            Ok(ctx.problem(
                DecisionOutcome::StoreUnavailable,
                Problem::new(
                    ProblemType::StoreUnavailable,
                    "the idempotency store gave an unexpected answer",
                )
                .retry_after(Duration::from_secs(1)),
            ))
        }
    }
}

/// Runs the request without a record (no key and key optional, or fail open).
async fn unprotected<S, ReqBody, ResBody>(
    mut inner: S,
    ctx: &Ctx,
    req: Request<RequestBody<ReqBody>>,
    outcome: DecisionOutcome,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let res = inner.call(req).await?;
    ctx.decide(outcome, Some(res.status()));
    Ok(ctx.finish(res.map(ResponseBody::inner)))
}

async fn replay<St: IdempotencyStore, B: Body>(
    store: &St,
    ctx: &Ctx,
    key: &StorageKey,
    completed: Completed,
) -> Response<ResponseBody<B>> {
    let observed = Observed::completed(completed.fence);
    if let (Some(check), Some(resource)) = (&ctx.config.verify, &completed.resource) {
        match timed_check(
            ctx.config.policy.store_timeout_duration(),
            check.exists(resource.clone()),
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                let detail = format!("the record's resource {resource} no longer exists");
                return corrupted(store, ctx, key, observed, &detail).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, %resource, "could not verify the record's resource");
                return ctx.problem(
                    DecisionOutcome::StoreUnavailable,
                    Problem::new(
                        ProblemType::StoreUnavailable,
                        "the stored response could not be verified; retry later",
                    )
                    .retry_after(Duration::from_secs(1)),
                );
            }
        }
    }
    let built = match completed.outcome {
        Outcome::Response(stored) => replay_stored(&ctx.config, &stored),
        // Too large to store: the original status and allow-listed headers
        // (`Location`, `Content-Type`, ...), no body.
        Outcome::Tombstone {
            status, headers, ..
        } => {
            let status = status
                .filter(|s| StatusCode::from_u16(*s).is_ok())
                .unwrap_or(200);
            let head = StoredResponse {
                status,
                headers,
                body: Bytes::new(),
                trailers: Vec::new(),
            };
            replay_stored(&ctx.config, &head)
        }
        _ => Err("the record holds no HTTP response"),
    };
    match built {
        Ok(mut res) => {
            res.headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            ctx.decide(DecisionOutcome::Replayed, Some(res.status()));
            ctx.finish(res)
        }
        Err(detail) => corrupted(store, ctx, key, observed, detail).await,
    }
}

/// Marks the record corrupted (only the version this request replayed:
/// `observed`), raises the alert and answers 500.
///
/// If the record changed since it was read (`StoreError::Conflict`: an
/// operator resolved it, or it expired and a new claim re-created it),
/// nothing is marked and the answer is 503 with `Retry-After`: the record
/// this request found is gone, and a retry gets whatever the key holds now.
async fn corrupted<St: IdempotencyStore, B: Body>(
    store: &St,
    ctx: &Ctx,
    key: &StorageKey,
    observed: Observed,
    detail: &str,
) -> Response<ResponseBody<B>> {
    tracing::error!(
        alert = true,
        detail,
        "idempotency record corrupted; marking it"
    );
    let timeout = ctx.config.policy.store_timeout_duration();
    let mark = store.mark_corrupted(key, observed, detail);
    match timed("mark_corrupted", timeout, mark).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            tracing::info!(
                fence = observed.fence,
                "the record changed before it could be marked corrupted; answering retry-later"
            );
            return ctx.problem(
                DecisionOutcome::StoreUnavailable,
                Problem::new(
                    ProblemType::StoreUnavailable,
                    "the idempotency record for this key changed while this request read it; retry",
                )
                .retry_after(Duration::from_secs(1)),
            );
        }
        Err(e) => tracing::warn!(error = %e, "could not mark the record corrupted"),
    }
    ctx.problem(
        DecisionOutcome::Corrupted,
        Problem::new(
            ProblemType::RecordCorrupted,
            "the idempotency record for this key is corrupted; an operator must resolve it",
        ),
    )
}

/// Runs a resource check under the store timeout.
async fn timed_check(
    timeout: Duration,
    check: impl Future<Output = Result<bool, BoxError>>,
) -> Result<bool, BoxError> {
    match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        Err(_) => Err("the resource check timed out".into()),
    }
}

fn replay_stored<B: Body>(
    config: &Config,
    stored: &StoredResponse,
) -> Result<Response<ResponseBody<B>>, &'static str> {
    let status = StatusCode::from_u16(stored.status)
        .map_err(|_| "stored status is not a valid HTTP status")?;
    let trailers = if stored.trailers.is_empty() {
        None
    } else {
        let mut map = HeaderMap::with_capacity(stored.trailers.len());
        for (name, value) in &stored.trailers {
            let (name, value) = field(name, value)?;
            map.append(name, value);
        }
        Some(map)
    };
    let body = ResponseBody::full_with_trailers(stored.body.clone(), trailers);
    let mut res = Response::new(body);
    *res.status_mut() = status;
    for (name, value) in &stored.headers {
        let (name, value) = field(name, value)?;
        if config.replays(&name) {
            res.headers_mut().append(name, value);
        }
    }
    Ok(res)
}

/// A stored header or trailer field, checked.
fn field(name: &str, value: &Bytes) -> Result<(HeaderName, HeaderValue), &'static str> {
    let name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| "stored header name is invalid")?;
    let value = HeaderValue::from_maybe_shared(value.clone())
        .map_err(|_| "stored header value is invalid")?;
    Ok((name, value))
}

enum TaskError<E> {
    Service(E),
    Panic(Box<dyn Any + Send>),
}

/// Runs the owned request on its own task and waits for it. Dropping this
/// future detaches the task: the handler and the record's completion go on.
async fn execute<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore + Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let span = ctx.span.clone();
    let task = tokio::spawn(run_owned(inner, store, ctx, lease, kind, req).instrument(span));
    match task.await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(TaskError::Service(e))) => Err(e),
        Ok(Err(TaskError::Panic(payload))) => std::panic::resume_unwind(payload),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => {
            // The runtime is shutting down and cancelled the task.
            let problem =
                Problem::new(ProblemType::StoreUnavailable, "the server is shutting down")
                    .retry_after(Duration::from_secs(1));
            Ok(problem.into_response())
        }
    }
}

async fn run_owned<S, St, ReqBody, ResBody>(
    mut inner: S,
    store: St,
    mut ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    mut req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, TaskError<S::Error>>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    St: IdempotencyStore + Clone + Send + Sync + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let config = ctx.config.clone();
    // One engine owns the attempt from here to its final record write: it
    // renews the lease while the handler runs *and* while its body is
    // collected, and retries the final write while it still holds the lease.
    let mut owned = OwnedAttempt::new(Metered(store), config.policy.clone(), lease, kind);
    let context = IdempotencyContext::new(owned.attempt().clone(), config.clone());
    req.extensions_mut().insert(context.clone());
    let call = AssertUnwindSafe(inner.call(req)).catch_unwind();
    let result = owned.run(call).await;
    let executed = if kind == ClaimKind::New {
        DecisionOutcome::Executed
    } else {
        DecisionOutcome::Reclaimed
    };
    if let Some(resource) = context.completed_resource() {
        // The handler completed the record in its own transaction: nothing
        // is left to store, fail or release, whatever it answered.
        owned.finish();
        ctx.resource = resource;
        return match result {
            Err(panic) => {
                ctx.decide(executed, Some(StatusCode::INTERNAL_SERVER_ERROR));
                Err(TaskError::Panic(panic))
            }
            Ok(Err(e)) => {
                ctx.decide(executed, None);
                Err(TaskError::Service(e))
            }
            Ok(Ok(res)) => {
                ctx.decide(executed, Some(res.status()));
                Ok(ctx.finish(res.map(ResponseBody::inner)))
            }
        };
    }
    let res = match result {
        Err(panic) => {
            let status = Some(StatusCode::INTERNAL_SERVER_ERROR);
            record_failure(
                owned,
                &ctx,
                Failure::retryable("the handler panicked"),
                status,
            )
            .await;
            return Err(TaskError::Panic(panic));
        }
        Ok(Err(e)) => {
            let failure = Failure::retryable("the inner service returned an error");
            record_failure(owned, &ctx, failure, None).await;
            return Err(TaskError::Service(e));
        }
        Ok(Ok(res)) => res,
    };
    let (head, body) = res.into_parts();
    let status = head.status;
    if owned.is_lost() {
        owned.finish();
        tracing::warn!("lease lost while the handler ran; its response is not recorded");
        ctx.decide(DecisionOutcome::Fenced, Some(status));
        return Ok(ctx.finish(Response::from_parts(head, ResponseBody::inner(body))));
    }
    match config.outcomes.classify_response(&head) {
        OutcomeAction::Release => {
            let outcome = settled(owned.release().await, DecisionOutcome::Released);
            ctx.decide(outcome, Some(status));
            Ok(ctx.finish(Response::from_parts(head, ResponseBody::inner(body))))
        }
        action @ (OutcomeAction::FailRetryable | OutcomeAction::FailTerminal) => {
            let reason = format!("the handler answered {status}");
            let failure = if action == OutcomeAction::FailRetryable {
                Failure::retryable(reason)
            } else {
                Failure::terminal(reason)
            };
            record_failure(owned, &ctx, failure, Some(status)).await;
            Ok(ctx.finish(Response::from_parts(head, ResponseBody::inner(body))))
        }
        OutcomeAction::Store => {
            // The lease is renewed while the body is collected, however slow.
            let collected = owned
                .run(collect_response(Box::pin(body), config.max_stored_response))
                .await;
            if owned.is_lost() {
                owned.finish();
                tracing::warn!("lease lost while the response body was read; it is not recorded");
                ctx.decide(DecisionOutcome::Fenced, Some(status));
                let body = match collected {
                    Collected::Complete { data, trailers } => {
                        ResponseBody::full_with_trailers(data, trailers)
                    }
                    Collected::TooLarge { prefix, rest } => ResponseBody::prefixed(prefix, rest),
                    Collected::Failed { prefix, error } => ResponseBody::errored(prefix, error),
                };
                return Ok(ctx.finish(Response::from_parts(head, body)));
            }
            let (outcome, body) = match collected {
                Collected::Complete { data, trailers } => {
                    let mut stored = stored_response(&config, status, &head.headers, data.clone());
                    // Trailers are part of the outcome (gRPC's `grpc-status`).
                    stored.trailers = stored_trailers(trailers.as_ref());
                    let completion = Completion::new(Outcome::Response(stored));
                    let outcome = settled(owned.complete(completion).await, executed);
                    (outcome, ResponseBody::full_with_trailers(data, trailers))
                }
                Collected::TooLarge { prefix, rest } => {
                    let reason = format!(
                        "response body larger than {} bytes was not stored",
                        config.max_stored_response
                    );
                    tracing::info!("response too large to store; the record becomes a tombstone");
                    // The headers a stored response would keep, without its body.
                    let kept = stored_response(&config, status, &head.headers, Bytes::new());
                    let tombstone = Outcome::Tombstone {
                        status: Some(status.as_u16()),
                        headers: kept.headers,
                        reason,
                    };
                    let completion = Completion::new(tombstone);
                    let outcome = settled(owned.complete(completion).await, executed);
                    (outcome, ResponseBody::prefixed(prefix, rest))
                }
                Collected::Failed { prefix, error } => {
                    let failure = Failure::retryable("the response body failed while it was read");
                    record_failure(owned, &ctx, failure, Some(status)).await;
                    return Ok(ctx.finish(Response::from_parts(
                        head,
                        ResponseBody::errored(prefix, error),
                    )));
                }
            };
            ctx.decide(outcome, Some(status));
            Ok(ctx.finish(Response::from_parts(head, body)))
        }
    }
}

/// The decision for a final write: `ok` when it landed (or the store kept
/// failing: the engine logged what happens to the record), fenced when the
/// lease was lost.
fn settled(result: Result<(), SettleError>, ok: DecisionOutcome) -> DecisionOutcome {
    match result {
        Ok(()) | Err(SettleError::Store(_)) => ok,
        Err(SettleError::LeaseLost) => DecisionOutcome::Fenced,
        Err(_) => ok,
    }
}

/// Records a failure of the attempt and the decision.
async fn record_failure<St: IdempotencyStore + Clone + 'static>(
    owned: OwnedAttempt<St>,
    ctx: &Ctx,
    failure: Failure,
    status: Option<StatusCode>,
) {
    if owned.is_lost() {
        owned.finish();
        ctx.decide(DecisionOutcome::Fenced, status);
        return;
    }
    let outcome = settled(owned.fail(failure).await, DecisionOutcome::Failed);
    ctx.decide(outcome, status);
}
