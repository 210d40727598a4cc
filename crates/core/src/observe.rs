//! What the domain reports for metrics, as a port: the server implements it with Prometheus,
//! tests and tools with nothing. Every method is called off the cache-hit path (a provider
//! request, a joined fetch, a lease wait, a background renewal), and label values are fixed
//! sets or template names — never a tenant, subject or token.

use std::time::Duration;

pub trait Observer: Send + Sync + 'static {
    /// One HTTP exchange with a token endpoint. `outcome`: `ok`, `oauth_error`, `rejected`,
    /// `bad_response`, `unavailable`, `refused`.
    fn provider_request(
        &self,
        _template: &'static str,
        _grant_type: &'static str,
        _outcome: &'static str,
        _took: Duration,
    ) {
    }
    /// A caller joined a fetch already running for its key.
    fn singleflight_joined(&self) {}
    /// A background renewal ended: `refreshed`, `failed`.
    fn refresh_ahead(&self, _outcome: &'static str) {}
    /// How long a fetch waited for another replica's refresh lease.
    fn lease_wait(&self, _took: Duration) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// The trace context sent to a provider whose connection opted in
/// (`propagate_trace_context`): the server implements it with OpenTelemetry.
pub trait TraceContext: Send + Sync + 'static {
    /// Headers (W3C `traceparent`, `tracestate`) for a request made in the current span.
    fn headers(&self) -> Vec<(String, String)>;
}
