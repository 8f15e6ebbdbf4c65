//! The replay path: the stored form of a response, and how a completed
//! record is answered (verified, rebuilt, or marked corrupted).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body::Body;
use idempotency_core::{
    BoxError, Completed, IdempotencyStore, Observed, Outcome, StorageKey, StoreError,
    StoredResponse,
};

use crate::body::ResponseBody;
use crate::config::{Config, IDEMPOTENT_REPLAYED, NEVER_REPLAYED};
use crate::hook::DecisionOutcome;
use crate::metrics::timed;
use crate::observe::Ctx;
use crate::problem::{Problem, ProblemType};

/// The stored form of a response: status, the replayed headers in order, body.
pub(crate) fn stored_response(
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        headers: fields(headers, |name| config.replays(name)),
        body,
        trailers: Vec::new(),
    }
}

/// The stored form of trailer fields: every one of them (a trailer such as
/// gRPC's `grpc-status` is the outcome itself), but those never replayed.
pub(crate) fn stored_trailers(trailers: Option<&HeaderMap>) -> Vec<(String, Bytes)> {
    trailers.map_or_else(Vec::new, |t| {
        fields(t, |name| !NEVER_REPLAYED.contains(name))
    })
}

fn fields(map: &HeaderMap, keep: impl Fn(&http::HeaderName) -> bool) -> Vec<(String, Bytes)> {
    map.iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

pub(crate) async fn replay<St: IdempotencyStore, B: Body>(
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
