//! Execution: the handler on its own task under the core lease engine, its
//! response classified by the outcome policy, its body collected, and the
//! record settled (completed, failed or released) before the answer.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use idempotency_core::metered::MeteredStore;
use idempotency_core::{
    ClaimKind, Completion, Failure, IdempotencyStore, Lease, Outcome, OwnedAttempt, SettleError,
};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{Collected, RequestBody, ResponseBody, collect_response};
use crate::context::IdempotencyContext;
use crate::hook::DecisionOutcome;
use crate::observe::Ctx;
use crate::policy::OutcomeAction;
use crate::problem::{Problem, ProblemType};
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

/// Runs the owned request on its own task and waits for it. Dropping this
/// future detaches the task: the handler and the record's completion go on.
pub(crate) async fn execute<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: Send + 'static,
    ResBody: ResBodyOf,
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

type HandlerResult<R, E> = Result<Result<Response<R>, E>, Box<dyn Any + Send>>;

/// The owned request: the handler under the lease engine, then its outcome.
async fn run_owned<S, St, ReqBody, ResBody>(
    mut inner: S,
    store: St,
    mut ctx: Ctx,
    lease: Lease,
    kind: ClaimKind,
    mut req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, TaskError<S::Error>>
where
    S: Inner<ReqBody, ResBody>,
    St: SharedStore,
    ReqBody: Send + 'static,
    ResBody: ResBodyOf,
{
    let config = ctx.config.clone();
    // One engine owns the attempt from here to its final record write: it
    // renews the lease while the handler runs *and* while its body is
    // collected, and retries the final write while it still holds the lease.
    let mut owned = OwnedAttempt::new(MeteredStore::new(store), config.policy.clone(), lease, kind);
    let context = IdempotencyContext::new(owned.attempt().clone(), config);
    req.extensions_mut().insert(context.clone());
    let call = AssertUnwindSafe(inner.call(req)).catch_unwind();
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
    Ok(settle_response(owned, &ctx, executed, res).await)
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

/// Applies the outcome policy to the handler's response and settles the record.
async fn settle_response<St: SharedStore, ResBody: ResBodyOf>(
    owned: OwnedAttempt<St>,
    ctx: &Ctx,
    executed: DecisionOutcome,
    res: Response<ResBody>,
) -> Response<ResponseBody<ResBody>> {
    let (head, body) = res.into_parts();
    let status = head.status;
    if owned.is_lost() {
        owned.finish();
        tracing::warn!("lease lost while the handler ran; its response is not recorded");
        ctx.decide(DecisionOutcome::Fenced, Some(status));
        return ctx.finish(Response::from_parts(head, ResponseBody::inner(body)));
    }
    match ctx.config.outcomes.classify_response(&head) {
        OutcomeAction::Release => {
            let outcome = settled(owned.release().await, DecisionOutcome::Released);
            ctx.decide(outcome, Some(status));
            ctx.finish(Response::from_parts(head, ResponseBody::inner(body)))
        }
        action @ (OutcomeAction::FailRetryable | OutcomeAction::FailTerminal) => {
            let reason = format!("the handler answered {status}");
            let failure = if action == OutcomeAction::FailRetryable {
                Failure::retryable(reason)
            } else {
                Failure::terminal(reason)
            };
            record_failure(owned, ctx, failure, Some(status)).await;
            ctx.finish(Response::from_parts(head, ResponseBody::inner(body)))
        }
        OutcomeAction::Store => store_response(owned, ctx, executed, head, body).await,
    }
}

/// Collects the body (the lease renewed meanwhile, however slow it is) and
/// stores it, or a tombstone when it is too large; answers the response.
async fn store_response<St: SharedStore, ResBody: ResBodyOf>(
    mut owned: OwnedAttempt<St>,
    ctx: &Ctx,
    executed: DecisionOutcome,
    head: http::response::Parts,
    body: ResBody,
) -> Response<ResponseBody<ResBody>> {
    let config = &ctx.config;
    let status = head.status;
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
        return ctx.finish(Response::from_parts(head, body));
    }
    let (outcome, body) = match collected {
        Collected::Complete { data, trailers } => {
            let mut stored = stored_response(config, status, &head.headers, data.clone());
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
            let kept = stored_response(config, status, &head.headers, Bytes::new());
            let tombstone = Outcome::Tombstone {
                status: Some(status.as_u16()),
                headers: kept.headers,
                reason,
            };
            let outcome = settled(owned.complete(Completion::new(tombstone)).await, executed);
            (outcome, ResponseBody::prefixed(prefix, rest))
        }
        Collected::Failed { prefix, error } => {
            let failure = Failure::retryable("the response body failed while it was read");
            record_failure(owned, ctx, failure, Some(status)).await;
            return ctx.finish(Response::from_parts(
                head,
                ResponseBody::errored(prefix, error),
            ));
        }
    };
    ctx.decide(outcome, Some(status));
    ctx.finish(Response::from_parts(head, body))
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
