//! The tower layer between the servers and their services: counts the calls in flight
//! (so the drain can say how many it waited for, or cut) and, once shutdown has begun,
//! refuses new tokenvend API calls with `UNAVAILABLE`.
//!
//! A layer of its own, outside `AuthLayer`: it sees every call before authentication
//! (an unauthenticated caller should also be told to go elsewhere), and it sees the
//! response body, whose end is the true end of a call (a streaming call outlives the
//! handler's future).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::Either;
use tower::{Layer, Service};

use super::{CallGuard, Lifecycle};

/// The message of the `UNAVAILABLE` answer to calls that arrive during shutdown.
pub const SHUTTING_DOWN: &str = "tokenvend is shutting down; retry on another replica";

/// Wraps a service with the count of calls in flight; with `refuse_prefix`, paths that
/// start with it are answered `UNAVAILABLE` (trailers-only) once shutdown has begun.
#[derive(Clone, Debug)]
pub struct GateLayer {
    lifecycle: Lifecycle,
    refuse_prefix: Option<&'static str>,
}

impl GateLayer {
    pub(super) fn new(lifecycle: Lifecycle, refuse_prefix: Option<&'static str>) -> Self {
        Self {
            lifecycle,
            refuse_prefix,
        }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            lifecycle: self.lifecycle.clone(),
            refuse_prefix: self.refuse_prefix,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    lifecycle: Lifecycle,
    refuse_prefix: Option<&'static str>,
}

pin_project_lite::pin_project! {
    /// The inner call's future, answered with its body counted (no box: every call
    /// passes here).
    pub struct Counted<F> {
        #[pin]
        future: F,
        call: Option<CallGuard>,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.future.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(res.map(|inner| Tracked { inner, _call: call })))
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Gate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, S::Error>>, Counted<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let refused = self
            .refuse_prefix
            .is_some_and(|p| req.uri().path().starts_with(p))
            && self.lifecycle.is_draining();
        if refused {
            let answer = tonic::Status::unavailable(SHUTTING_DOWN)
                .into_http::<ResBody>()
                .map(|body| Tracked {
                    inner: body,
                    _call: None,
                });
            return Either::Left(std::future::ready(Ok(answer)));
        }
        // Counted from here until the response body is dropped (sent, or the call cut).
        let call = self.lifecycle.enter();
        Either::Right(Counted {
            future: self.inner.call(req),
            call: Some(call),
        })
    }
}

/// A response body that keeps its call counted as in flight until it is dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _call: Option<CallGuard>,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
