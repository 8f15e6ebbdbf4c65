//! [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

pub(crate) type BoxResponseFuture<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<ResBody>>, E>> + Send>>;

pin_project! {
    /// Response future of [`Idempotency`](crate::Idempotency).
    ///
    /// # Cancel safety
    ///
    /// Dropping it (the client went away) never cuts a handler half-way: once
    /// a request owns its key, the inner service runs on its own Tokio task,
    /// to completion, and the record is completed, released or failed as if
    /// the client had stayed. Dropping it earlier (while the body is read or
    /// the key claimed) executes nothing.
    pub struct ResponseFuture<F, ResBody, E> {
        #[pin]
        state: State<F, ResBody, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody, E> {
        PassThrough { #[pin] future: F },
        Handled { future: BoxResponseFuture<ResBody, E> },
    }
}

impl<F, ResBody, E> ResponseFuture<F, ResBody, E> {
    pub(crate) fn pass_through(future: F) -> Self {
        Self {
            state: State::PassThrough { future },
        }
    }

    pub(crate) fn handled(future: BoxResponseFuture<ResBody, E>) -> Self {
        Self {
            state: State::Handled { future },
        }
    }
}

impl<F, ResBody, E> std::fmt::Debug for ResponseFuture<F, ResBody, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::PassThrough { .. } => "PassThrough",
            State::Handled { .. } => "Handled",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::PassThrough { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(ResponseBody::inner)))
            }
            StateProj::Handled { future } => future.as_mut().poll(cx),
        }
    }
}
