//! Execution: the handler on its own task under the core lease engine, its
//! response classified by the outcome policy, its body collected, and the
//! record settled (completed, failed or released) before the answer.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use idempotency_core::metered::MeteredStore;
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, Completion, Failure, IdempotencyStore, Lease, Outcome,
    OwnedAttempt, SettleError, StoreError, claim_with_wait,
};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{Collected, RequestBody, ResponseBody, collect_response};
use crate::context::IdempotencyContext;
use crate::hook::DecisionOutcome;
use crate::observe::Ctx;
use crate::policy::OutcomeAction;
use crate::replay::{stored_response, stored_trailers};
use crate::service::{Inner, ResBodyOf, SharedStore};

/// Runs the request without a record (no key and key optional, or fail open).
pub(crate) async fn unprotected<S, ReqBody, ResBody>(
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

enum TaskError<E> {
    Service(E),
    Panic(Box<dyn Any + Send>),
}

/// Runs the owned request to its end, in place. Dropping this future (the
/// client went away, a timeout above the layer) does not cut it short: what
/// is left of it is handed to the runtime as a task of its own, so the
/// handler and the record's completion go on. The common case, a request
/// that is not dropped, pays for no task and no cross-task wake-up.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
pub(crate) fn execute<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    req: Request<RequestBody<ReqBody>>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: Send + 'static,
    ResBody: ResBodyOf,
{
    // Boxed here, not inside the returned future: that future is then the
    // box alone.
    let span = ctx.span.clone();
    let owned = DetachOnDrop::new(run_owned(inner, store, ctx, lease, kind, req).instrument(span));
    async move {
        match owned.await {
            Ok(res) => Ok(res),
            Err(TaskError::Service(e)) => Err(e),
            Err(TaskError::Panic(payload)) => std::panic::resume_unwind(payload),
        }
    }
}

/// Polls a future in place; if dropped before it finished, spawns the rest
/// on the current runtime so that it still runs to its end (its output is
/// then dropped). Outside a runtime nothing can be spawned, and a dropped
/// future is dropped: the record then stays pending until its lease expires
/// (see the crate docs on cancellation).
struct DetachOnDrop<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    fut: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    fn new(fut: F) -> Self {
        Self {
            fut: Some(Box::pin(fut)),
        }
    }
}

impl<F: Future + Send + 'static> Future for DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(fut) = self.fut.as_mut() else {
            panic!("DetachOnDrop polled after it finished");
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<F: Future + Send + 'static> Drop for DetachOnDrop<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn(fut));
        }
    }
}

type BoxedClaim = Pin<Box<dyn Future<Output = Result<Claim, StoreError>> + Send>>;

/// The claim, owned: polled in place; if dropped before the store answered
/// (the client went away, the claim's time budget ran out, a timeout above
/// the layer), the claim is handed to the runtime and driven to its end, and
/// a lease it acquired is released at once: nobody is left to execute, and
/// a record left `Pending` would refuse every retry until its lease expired.
pub(crate) struct ClaimOnDrop<St: SharedStore> {
    claim: Option<BoxedClaim>,
    store: St,
}

impl<St: SharedStore> ClaimOnDrop<St> {
    pub(crate) fn new(store: St, req: ClaimRequest, wait: Option<std::time::Duration>) -> Self {
        let claiming = store.clone();
        Self {
            claim: Some(Box::pin(async move {
                claim_with_wait(&claiming, &req, wait).await
            })),
            store,
        }
    }
}

// The claim is boxed and the store is never pinned: moving this is fine.
impl<St: SharedStore> Unpin for ClaimOnDrop<St> {}

impl<St: SharedStore> Future for ClaimOnDrop<St> {
    type Output = Result<Claim, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(claim) = self.claim.as_mut() else {
            panic!("ClaimOnDrop polled after it finished");
        };
        let out = std::task::ready!(claim.as_mut().poll(cx));
        self.claim = None;
        Poll::Ready(out)
    }
}

impl<St: SharedStore> Drop for ClaimOnDrop<St> {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        drop(runtime.spawn(async move {
            if let Ok(Claim::Acquired { lease, .. }) = claim.await {
                match store.release(&lease).await {
                    Ok(()) => tracing::debug!(key = %lease.key.short(), "a claim that outlived its request was released"),
                    Err(e) => tracing::warn!(key = %lease.key.short(), error = %e, "a claim that outlived its request could not be released; the record stays pending until its lease expires"),
                }
                store.attempt_ended(&lease);
            }
        }));
    }
}

type HandlerResult<R, E> = Result<Result<Response<R>, E>, Box<dyn Any + Send>>;

/// The owned request: the handler under the lease engine, then its outcome.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
fn run_owned<S, St, ReqBody, ResBody>(
    mut inner: S,
    store: St,
    mut ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    mut req: Request<RequestBody<ReqBody>>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, TaskError<S::Error>>>
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: Send + 'static,
    ResBody: ResBodyOf,
{
    // The set-up runs before the future is made (and boxed by `execute`):
    // the future then holds the attempt and the handler's call, not also
    // the request and lease they were made from.
    let config = ctx.config.clone();
    // One engine owns the attempt from here to its final record write: it
    // renews the lease while the handler runs *and* while its body is
    // collected, and retries the final write while it still holds the lease.
    let mut owned = OwnedAttempt::new(MeteredStore::new(store), config.policy.clone(), lease, kind);
    let context = IdempotencyContext::new(owned.attempt().clone(), config);
    req.extensions_mut().insert(context.clone());
    let call = AssertUnwindSafe(inner.call(req)).catch_unwind();
    async move {
        let result = owned.run(call).await;
        let executed = if kind == ClaimKind::New {
            DecisionOutcome::Executed
        } else {
            DecisionOutcome::Reclaimed
        };
        if let Some(resource) = context.completed_resource() {
            owned.finish();
            ctx.resource = resource;
            return completed_by_handler(&ctx, executed, result);
        }
        let res = match result {
            Err(panic) => {
                let status = Some(StatusCode::INTERNAL_SERVER_ERROR);
                let failure = Failure::retryable("the handler panicked");
                // Boxed, as on every failure path: a rare path does not make
                // every request's future larger.
                Box::pin(record_failure(owned, &ctx, failure, status)).await;
                return Err(TaskError::Panic(panic));
            }
            Ok(Err(e)) => {
                let failure = Failure::retryable("the inner service returned an error");
                Box::pin(record_failure(owned, &ctx, failure, None)).await;
                return Err(TaskError::Service(e));
            }
            Ok(Ok(res)) => res,
        };
        // The policy's verdict and the collected body first, with the
        // attempt only borrowed; then the one final write, which consumes
        // it. The attempt is laid out once in this future, not once more in
        // each step's.
        let (last, head, body) = settlement(&mut owned, &ctx, res).await;
        let status = head.status;
        let outcome = match last {
            Last::Fenced => {
                owned.finish();
                Some(DecisionOutcome::Fenced)
            }
            Last::Complete(completion) => Some(settled(owned.complete(completion).await, executed)),
            Last::Release => Some(settled(
                Box::pin(owned.release()).await,
                DecisionOutcome::Released,
            )),
            Last::Fail(failure) => {
                // Decides itself (fenced when the lease is lost meanwhile).
                Box::pin(record_failure(owned, &ctx, failure, Some(status))).await;
                None
            }
        };
        if let Some(outcome) = outcome {
            ctx.decide(outcome, Some(status));
        }
        Ok(ctx.finish(Response::from_parts(head, body)))
    }
}

/// The handler completed the record in its own transaction: nothing is
/// left to store, fail or release, whatever it answered.
fn completed_by_handler<R, E>(
    ctx: &Ctx,
    executed: DecisionOutcome,
    result: HandlerResult<R, E>,
) -> Result<Response<ResponseBody<R>>, TaskError<E>> {
    match result {
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
    }
}

/// The final write an attempt's response calls for.
enum Last {
    /// None: the lease was lost.
    Fenced,
    /// The outcome to store (a response, or a tombstone when too large).
    Complete(Completion),
    /// Forget the record.
    Release,
    /// Record the failure.
    Fail(Failure),
}

/// Applies the outcome policy to the handler's response and, when it is to
/// be stored, collects its body (the lease renewed meanwhile, however slow
/// it is) into the outcome, or a tombstone when it is too large. Answers
/// the final write and the response to send, its body as collected.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: the future holds its arguments once, not also as the locals an async fn moves them to"
)]
fn settlement<'a, St: SharedStore, ResBody: ResBodyOf>(
    owned: &'a mut OwnedAttempt<St>,
    ctx: &'a Ctx,
    res: Response<ResBody>,
) -> impl Future<Output = (Last, http::response::Parts, ResponseBody<ResBody>)> + 'a {
    async move {
        let (head, body) = res.into_parts();
        let status = head.status;
        if owned.is_lost() {
            tracing::warn!("lease lost while the handler ran; its response is not recorded");
            return (Last::Fenced, head, ResponseBody::inner(body));
        }
        let config = &ctx.config;
        match config.outcomes.classify_response(&head) {
            OutcomeAction::Release => return (Last::Release, head, ResponseBody::inner(body)),
            action @ (OutcomeAction::FailRetryable | OutcomeAction::FailTerminal) => {
                let reason = format!("the handler answered {status}");
                let failure = if action == OutcomeAction::FailRetryable {
                    Failure::retryable(reason)
                } else {
                    Failure::terminal(reason)
                };
                return (Last::Fail(failure), head, ResponseBody::inner(body));
            }
            OutcomeAction::Store => {}
        }
        let collected = owned
            .run(collect_response(Box::pin(body), config.max_stored_response))
            .await;
        if owned.is_lost() {
            tracing::warn!("lease lost while the response body was read; it is not recorded");
            let body = match collected {
                Collected::Complete { data, trailers } => {
                    ResponseBody::full_with_trailers(data, trailers)
                }
                Collected::TooLarge { prefix, rest } => ResponseBody::prefixed(prefix, rest),
                Collected::Failed { prefix, error } => ResponseBody::errored(prefix, error),
            };
            return (Last::Fenced, head, body);
        }
        match collected {
            Collected::Complete { data, trailers } => {
                let mut stored = stored_response(config, status, &head.headers, data.clone());
                // Trailers are part of the outcome (gRPC's `grpc-status`).
                stored.trailers = stored_trailers(trailers.as_ref());
                let completion = Completion::new(Outcome::Response(stored));
                let body = ResponseBody::full_with_trailers(data, trailers);
                (Last::Complete(completion), head, body)
            }
            Collected::TooLarge { prefix, rest } => {
                let reason = format!(
                    "response body larger than {} bytes was not stored",
                    config.max_stored_response
                );
                tracing::info!("response too large to store; the record becomes a tombstone");
                // The headers a stored response would keep, without its body.
                let kept = stored_response(config, status, &head.headers, Bytes::new());
                let tombstone = Outcome::Tombstone {
                    status: Some(status.as_u16()),
                    headers: kept.headers,
                    reason,
                };
                let body = ResponseBody::prefixed(prefix, rest);
                (Last::Complete(Completion::new(tombstone)), head, body)
            }
            Collected::Failed { prefix, error } => {
                let failure = Failure::retryable("the response body failed while it was read");
                (
                    Last::Fail(failure),
                    head,
                    ResponseBody::errored(prefix, error),
                )
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::DetachOnDrop;

    #[tokio::test]
    async fn a_finished_future_answers_in_place() {
        assert_eq!(DetachOnDrop::new(async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn a_dropped_future_runs_to_its_end_on_its_own() {
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let work = DetachOnDrop::new({
            let finished = Arc::clone(&finished);
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(50)).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        // Dropped while it waits, the way hyper drops a service future
        // whose client went away.
        tokio::select! {
            () = work => panic!("finished too early"),
            _ = started => {}
        }
        assert!(!finished.load(Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(5), async {
            while !finished.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the rest of the work ran after the drop");
    }
}
