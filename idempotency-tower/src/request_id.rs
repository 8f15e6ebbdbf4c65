//! `x-request-id`: the rule for a client's value ([`ensure_request_id`]) and
//! [`RequestIdLayer`], which gives every request of a service one, so the
//! idempotency layer, the handlers and the audit trail share it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{MAX_REQUEST_ID_LEN, X_REQUEST_ID};

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

/// Gives every request an `x-request-id` ([`ensure_request_id`]: the
/// client's when it is acceptable, else a new UUIDv7) and echoes it on the
/// response. Place it outermost, so every layer and handler below sees the
/// same id; the idempotency layer keeps the id it finds.
///
/// ```
/// use axum::{Router, routing::post};
/// use idempotency_core::MemoryStore;
/// use idempotency_tower::{IdempotencyLayer, RequestIdLayer};
///
/// let app: Router = Router::new()
///     .route("/orders", post(|| async { "created" }))
///     .layer(IdempotencyLayer::new(MemoryStore::new()))
///     .layer(RequestIdLayer);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = ensure_request_id(req.headers_mut());
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response future of [`RequestId`]: the inner response with the
    /// request's `x-request-id`.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_value_is_kept_only_when_bounded() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(ensure_request_id(&mut h), "req-1");
        for bad in ["", "a b", "\u{7f}"] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert(X_REQUEST_ID, v);
            }
            let id = ensure_request_id(&mut h);
            assert_eq!(id.len(), 36, "{bad:?}");
            assert_eq!(h[X_REQUEST_ID], id, "the request carries the new id");
        }
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static("one"));
        h.append(X_REQUEST_ID, HeaderValue::from_static("two"));
        assert_eq!(
            ensure_request_id(&mut h).len(),
            36,
            "two values: neither is trusted"
        );
    }
}
