//! The server span of each gRPC call, for OpenTelemetry: named `package.Service/Method`,
//! kind server, the `rpc.*` attributes and the gRPC status, its parent the W3C
//! `traceparent` (and `tracestate`) of the incoming metadata. Its `trace_id` field puts the
//! trace id on every log line written inside the call.
//!
//! Installed always, active only when spans are exported (`telemetry`): otherwise the call
//! passes straight through, with no span and no allocation. Also here: the trace context
//! sent onward to providers that opted in.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::Either;
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone, Copy, Debug)]
pub struct RpcTraceLayer {
    enabled: bool,
}

impl RpcTraceLayer {
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace {
            inner,
            enabled: self.enabled,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcTrace<S> {
    inner: S,
    enabled: bool,
}

type Traced<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for RpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Traced<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return Either::Left(self.inner.call(req));
        }
        let span = server_span(&req);
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let recorder = span.clone();
        Either::Right(Box::pin(
            async move {
                let result = future.await;
                if let Ok(response) = &result {
                    record_status(&recorder, response);
                }
                result
            }
            .instrument(span),
        ))
    }
}

fn server_span<B>(req: &http::Request<B>) -> tracing::Span {
    let name = req.uri().path().trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        trace_id = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    // Fails only without the OpenTelemetry layer, and then there is nothing to parent.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    span
}

/// The status of a trailers-only answer (every error) is in the headers; an answer without
/// one is OK.
fn record_status<R>(span: &tracing::Span, response: &http::Response<R>) {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    span.record("rpc.grpc.status_code", code);
    // The OpenTelemetry conventions for a gRPC server: only these codes are its own errors.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The current span's trace context as W3C headers, for token requests to providers whose
/// connection opted in (`propagate_trace_context`). Installed only when spans are exported.
#[derive(Debug, Default)]
pub struct W3cTraceContext;

impl tokenvend_core::observe::TraceContext for W3cTraceContext {
    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = std::collections::HashMap::new();
        TraceContextPropagator::new()
            .inject_context(&tracing::Span::current().context(), &mut headers);
        headers.into_iter().collect()
    }
}
