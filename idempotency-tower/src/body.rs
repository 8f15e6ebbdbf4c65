//! Bodies: the request body handed to the inner service, the response body
//! the layer returns, and bounded collection of both.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use idempotency_core::BoxError;
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives.
    ///
    /// Requests the layer handles were read (up to the cap) to compute their
    /// fingerprint, so they arrive as one buffered chunk; requests that pass
    /// through keep their original, streaming body.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    /// A body that yields `data` once.
    pub fn buffered(data: Bytes) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Wraps a streaming body untouched.
    pub fn streaming(body: B) -> Self {
        Self {
            kind: RequestKind::Streaming { body },
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Buffered { data } => f
                .debug_struct("RequestBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            RequestKind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            RequestKindProj::Streaming { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Buffered { data } => data.is_none(),
            RequestKind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestKind::Streaming { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body the layer returns.
    ///
    /// Either the inner service's body untouched, a buffered body (a replay, a
    /// problem, or a first response that was read to be stored), or the
    /// already-read start of a response too large to store followed by the
    /// rest of the inner body.
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Inner { #[pin] body: B },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
        Errored { prefix: Option<Bytes>, error: Option<BoxError> },
    }
}

impl<B> ResponseBody<B> {
    /// A body that yields `data` once.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers: None,
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The inner service's body, untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: ResponseKind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: ResponseKind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
        }
    }

    pub(crate) fn errored(prefix: Bytes, error: impl Into<BoxError>) -> Self {
        Self {
            kind: ResponseKind::Errored {
                prefix: (!prefix.is_empty()).then_some(prefix),
                error: Some(error.into()),
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.kind {
            ResponseKind::Full { .. } => "Full",
            ResponseKind::Inner { .. } => "Inner",
            ResponseKind::Prefixed { .. } => "Prefixed",
            ResponseKind::Errored { .. } => "Errored",
        };
        write!(f, "ResponseBody::{name}")
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ResponseKindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            ResponseKindProj::Prefixed { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                rest.as_mut().poll_frame(cx).map_err(Into::into)
            }
            ResponseKindProj::Errored { prefix, error } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ResponseKind::Errored { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            ResponseKind::Errored { .. } => SizeHint::default(),
        }
    }
}

/// Why a request body could not be collected.
#[derive(Debug)]
pub(crate) enum CollectError<E> {
    /// More than `limit` bytes (declared or streamed).
    TooLarge,
    /// The body failed (client went away, malformed chunking, ...).
    Body(E),
}

/// Reads a request body into memory, refusing (and stopping reading) as soon
/// as it exceeds `limit` bytes: a declared `Content-Length` over the limit is
/// refused before reading anything, and a chunked body is cut off at the
/// first frame that crosses the limit. Memory stays bounded by `limit` plus
/// one frame.
pub(crate) async fn collect_limited<B>(
    body: B,
    limit: usize,
) -> Result<Bytes, CollectError<B::Error>>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers do not take part in the fingerprint.
        };
        let total = buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len();
        if total > limit {
            return Err(CollectError::TooLarge);
        }
        // The common case of a single frame avoids a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// A response body read for storage.
pub(crate) enum Collected<B: Body> {
    /// Whole body (and trailers), within the limit.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Over the limit: the part read so far and the rest of the body.
    TooLarge { prefix: Bytes, rest: B },
    /// The body failed after `prefix`.
    Failed { prefix: Bytes, error: B::Error },
}

/// Reads a response body up to `limit` bytes; past it, hands back what was
/// read and the unread rest, so the client still receives everything.
pub(crate) async fn collect_response<B>(mut body: B, limit: usize) -> Collected<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    loop {
        match body.frame().await {
            None => {
                return Collected::Complete {
                    data: buf.freeze(),
                    trailers,
                };
            }
            Some(Err(error)) => {
                return Collected::Failed {
                    prefix: buf.freeze(),
                    error,
                };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Collected::TooLarge {
                            prefix: buf.freeze(),
                            rest: body,
                        };
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = (0..n).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn declared_length_over_limit_is_refused_up_front() {
        let body = Full::new(Bytes::from(vec![0u8; 11]));
        assert!(matches!(
            collect_limited(body, 10).await,
            Err(CollectError::TooLarge)
        ));
        let body = Full::new(Bytes::from(vec![0u8; 10]));
        assert_eq!(collect_limited(body, 10).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn streamed_body_is_cut_at_the_limit() {
        assert!(matches!(
            collect_limited(chunks(100, 10), 55).await,
            Err(CollectError::TooLarge)
        ));
        let ok = collect_limited(chunks(5, 10), 50).await.unwrap();
        assert_eq!(ok.len(), 50);
        assert!(collect_limited(chunks(0, 10), 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn body_errors_surface() {
        let frames: Vec<Result<Frame<Bytes>, &str>> =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err("boom")];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        assert!(matches!(
            collect_limited(body, 10).await,
            Err(CollectError::Body("boom"))
        ));
    }

    #[tokio::test]
    async fn large_responses_keep_their_rest() {
        let c = collect_response(Box::pin(chunks(10, 10)), 25).await;
        let Collected::TooLarge { prefix, rest } = c else {
            panic!("expected TooLarge");
        };
        assert_eq!(prefix.len(), 30);
        let body = ResponseBody::prefixed(prefix, rest);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 100);

        let c = collect_response(Box::pin(chunks(2, 10)), 25).await;
        assert!(matches!(c, Collected::Complete { ref data, .. } if data.len() == 20));
    }

    #[tokio::test]
    async fn request_body_variants() {
        let b: RequestBody<Full<Bytes>> = RequestBody::buffered(Bytes::from_static(b"abc"));
        assert_eq!(b.size_hint().exact(), Some(3));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");
        let s = RequestBody::streaming(Full::new(Bytes::from_static(b"xyz")));
        assert_eq!(s.collect().await.unwrap().to_bytes(), "xyz");
        let e: RequestBody<Full<Bytes>> = RequestBody::buffered(Bytes::new());
        assert!(e.is_end_stream());
    }

    #[tokio::test]
    async fn errored_body_yields_prefix_then_error() {
        let mut b: ResponseBody<Full<Bytes>> =
            ResponseBody::errored(Bytes::from_static(b"ab"), "boom");
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        assert!(matches!(b.frame().await, Some(Err(e)) if e.to_string() == "boom"));
        assert!(b.frame().await.is_none());
    }
}
