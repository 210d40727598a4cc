//! Graceful shutdown on SIGTERM (Kubernetes) or SIGINT (Ctrl-C), in phases, so that a
//! rolling update fails no caller's call:
//!
//! 1. **Not serving.** Health answers `NOT_SERVING`, `/readyz` answers 503 and new
//!    tokenvend API calls are refused with `UNAVAILABLE` ([`SHUTTING_DOWN`]), which callers
//!    retry on another replica. The listeners stay open for `delay`, the time load
//!    balancers need to notice and stop sending; calls already running carry on.
//! 2. **Draining.** The listeners close, open connections are told to go away, health
//!    `Watch` streams end, and the calls in flight finish, for at most `timeout`; past it
//!    the rest are cut.
//! 3. The caller then releases what this replica holds fleet-wide, and the process exits.
//!
//! A second signal skips whatever is left of the waits (the impatient Ctrl-C).

mod gate;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

pub use gate::{Gate, GateLayer, SHUTTING_DOWN, Tracked};

/// Paths refused during shutdown: the tokenvend API. Health and reflection keep answering,
/// so probes and load balancers can read `NOT_SERVING`.
const REFUSED_PREFIX: &str = "/tokenvend.";

/// Whether shutdown has begun, and how many calls are in flight. Cheap to clone; shared by
/// the gRPC and HTTP layers, `/readyz` and the shutdown sequence.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle(Arc<State>);

#[derive(Debug, Default)]
struct State {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self::default()
    }

    /// True from the first shutdown signal on.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// Calls (gRPC and HTTP) whose response has not been sent completely yet. Streams such
    /// as health `Watch` count for as long as they are open.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Acquire)
    }

    /// For the tonic server: counts calls, refuses tokenvend API calls once draining.
    pub fn grpc_layer(&self) -> GateLayer {
        GateLayer::new(self.clone(), Some(REFUSED_PREFIX))
    }

    /// For the HTTP side port: counts requests, refuses none (an end user half-way through
    /// an OAuth callback should not lose it to a rolling update).
    pub fn http_layer(&self) -> GateLayer {
        GateLayer::new(self.clone(), None)
    }

    fn begin(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    fn enter(&self) -> CallGuard {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }
}

/// One call in flight; uncounted when dropped, whether the call ended or was cut.
#[derive(Debug)]
pub struct CallGuard(Lifecycle);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// SIGTERM and SIGINT, listened to from the moment this is built: built before the
/// listeners announce themselves, a signal sent right after start-up is never lost to the
/// default action (which would kill the process on the spot).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn listen() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal received.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            // Both streams ended (the runtime is going away): no signal will come.
            else => std::future::pending().await,
        }
    }
}

/// `TOKENVEND_SHUTDOWN_DELAY` and `TOKENVEND_SHUTDOWN_TIMEOUT`.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long to keep the listeners open while refusing new calls (phase 1).
    pub delay: Duration,
    /// How long calls in flight may take to finish once the listeners are closed (phase 2).
    pub timeout: Duration,
}

/// How the drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every call finished (or the servers stopped without a signal).
    Drained,
    /// The deadline passed (or a second signal came) with this many calls still running.
    Cut { calls: usize },
}

/// Everything the sequence acts on.
pub struct Shutdown {
    pub settings: Settings,
    pub lifecycle: Lifecycle,
    pub health: HealthReporter,
    /// Health service names set `NOT_SERVING` in phase 1 (`""` is the whole server).
    pub health_services: Vec<&'static str>,
    /// Cancelled at the start of phase 2: the servers stop accepting and drain.
    pub stop_accepting: CancellationToken,
}

impl Shutdown {
    /// Runs `servers` (which must stop accepting and drain when `stop_accepting` is
    /// cancelled) until a signal, then runs the shutdown phases. A server error ends it
    /// early, as an error.
    pub async fn serve_until_signal<F>(
        mut self,
        servers: F,
        mut signals: Signals,
    ) -> anyhow::Result<Outcome>
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let Settings { delay, timeout } = self.settings;
        tokio::pin!(servers);
        let signal = tokio::select! {
            r = &mut servers => return r.map(|()| Outcome::Drained),
            s = signals.next() => s,
        };
        tracing::info!("{signal} received: shutting down");

        // Phase 1: not serving.
        self.lifecycle.begin();
        for service in &self.health_services {
            self.health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            ?delay,
            "not serving: health NOT_SERVING, /readyz 503, new calls refused with UNAVAILABLE; \
             waiting {delay:?} for load balancers to notice (a second signal skips the waits)"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            s = signals.next() => return Ok(self.cut(s)),
            r = &mut servers => return r.map(|()| Outcome::Drained),
        }

        // Phase 2: draining.
        self.stop_accepting.cancel();
        let n = self.lifecycle.in_flight();
        // Health `Watch` streams only end when their status goes away; left open they
        // would hold the drain until its deadline. A `Check` cannot arrive any more: the
        // listener is closed and open connections are told to go away.
        for service in &self.health_services {
            self.health.clear_service_status(service).await;
        }
        tracing::info!(
            calls = n,
            ?timeout,
            "stopped accepting connections; draining {n} calls in flight (deadline {timeout:?})"
        );
        tokio::select! {
            r = tokio::time::timeout(timeout, &mut servers) => match r {
                Ok(r) => {
                    r?;
                    tracing::info!("drained: every call finished");
                    Ok(Outcome::Drained)
                }
                Err(_) => {
                    let calls = self.lifecycle.in_flight();
                    tracing::warn!(
                        calls,
                        "drain deadline ({timeout:?}) passed: cutting {calls} calls still in flight"
                    );
                    Ok(Outcome::Cut { calls })
                }
            },
            s = signals.next() => Ok(self.cut(s)),
        }
    }

    /// A second signal: stop waiting.
    fn cut(&self, signal: &str) -> Outcome {
        self.stop_accepting.cancel();
        let calls = self.lifecycle.in_flight();
        tracing::warn!(
            calls,
            "{signal} received again: not waiting any longer, cutting {calls} calls still in flight"
        );
        Outcome::Cut { calls }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, ServiceExt, service_fn};

    use super::*;

    async fn answer(_: http::Request<()>) -> Result<http::Response<tonic::body::Body>, Infallible> {
        Ok(http::Response::new(tonic::body::Body::empty()))
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::post(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_count_until_their_body_is_gone_and_the_api_is_refused_once_draining() {
        let lifecycle = Lifecycle::new();
        let grpc = lifecycle.grpc_layer().layer(service_fn(answer));
        let http = lifecycle.http_layer().layer(service_fn(answer));
        let api = "/tokenvend.v1.TokenService/GetToken";

        let res = grpc.clone().oneshot(call(api)).await.unwrap();
        assert_eq!(
            lifecycle.in_flight(),
            1,
            "counted while the body is being sent"
        );
        drop(res);
        assert_eq!(lifecycle.in_flight(), 0);

        lifecycle.begin();
        let refused = grpc.clone().oneshot(call(api)).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "14");
        assert_eq!(lifecycle.in_flight(), 0, "a refused call is not counted");
        // Health (and reflection) keep answering; so does the HTTP side port.
        let health = grpc
            .oneshot(call("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert!(health.headers().get("grpc-status").is_none());
        let callback = http.oneshot(call(api)).await.unwrap();
        assert!(callback.headers().get("grpc-status").is_none());
        assert_eq!(lifecycle.in_flight(), 2);
    }
}
