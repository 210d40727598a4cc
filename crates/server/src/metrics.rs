//! Prometheus metrics on the HTTP port's `/metrics`. The names are the ones dashboards and
//! alerts depend on (README "Operating"). Labels are fixed sets and template names only —
//! never a tenant, subject or token — so the series count is bounded whatever the traffic.
//!
//! The hot path pays one clock read and one histogram observation (a bucket search and
//! three relaxed atomic adds, on a child resolved at start-up); everything else is counted
//! off it, and the cached-token gauge is read when scraped.

use std::{sync::Arc, time::Duration};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokenvend_core::{cache::TokenCache, observe::Observer};

/// From 50 µs (a cache hit) to 30 s (`TOKENVEND_MAX_WAIT`).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// How a GetToken call ended, for `tokenvend_get_token_duration_seconds{outcome}`.
#[derive(Clone, Copy, Debug)]
pub enum GetTokenOutcome {
    Hit,
    Miss,
    Error,
}

impl GetTokenOutcome {
    /// The label value (metric and span attribute).
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    cache: Arc<TokenCache>,
    get_token: [Histogram; 3],
    provider_requests: IntCounterVec,
    provider_duration: HistogramVec,
    singleflight_joined: IntCounter,
    refresh_ahead: IntCounterVec,
    cached_tokens: IntGauge,
    watch_streams: IntGauge,
    watch_pushes: IntCounter,
    lease_wait: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn histogram(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    pub fn new(cache: Arc<TokenCache>) -> Self {
        let registry = Registry::new();
        let get_token_vec = HistogramVec::new(
            histogram(
                "tokenvend_get_token_duration_seconds",
                "GetToken latency by outcome (hit: from memory; miss: fetched or loaded; error)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let get_token = ["hit", "miss", "error"].map(|o| get_token_vec.with_label_values(&[o]));
        let provider_requests = IntCounterVec::new(
            Opts::new(
                "tokenvend_provider_requests_total",
                "HTTP requests to providers' token endpoints",
            ),
            &["template", "grant_type", "outcome"],
        )
        .expect("valid metric");
        let provider_duration = HistogramVec::new(
            histogram(
                "tokenvend_provider_request_duration_seconds",
                "Duration of one HTTP exchange with a provider's token endpoint",
            ),
            &["template", "grant_type", "outcome"],
        )
        .expect("valid metric");
        let singleflight_joined = IntCounter::new(
            "tokenvend_singleflight_joined_total",
            "Callers that joined a fetch already running for their key instead of starting one",
        )
        .expect("valid metric");
        let refresh_ahead = IntCounterVec::new(
            Opts::new(
                "tokenvend_refresh_ahead_total",
                "Background renewals before expiry by outcome (refreshed, failed)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let cached_tokens = IntGauge::new(
            "tokenvend_cached_tokens",
            "Tokens held in this replica's memory",
        )
        .expect("valid metric");
        let watch_streams = IntGauge::new(
            "tokenvend_watch_streams",
            "WatchToken streams open on this replica",
        )
        .expect("valid metric");
        let watch_pushes = IntCounter::new(
            "tokenvend_watch_pushes_total",
            "Tokens pushed on WatchToken streams after the first (replacements)",
        )
        .expect("valid metric");
        let lease_wait = Histogram::with_opts(histogram(
            "tokenvend_lease_wait_seconds",
            "How long a fetch waited for another replica's refresh of the same key",
        ))
        .expect("valid metric");
        for c in [
            Box::new(get_token_vec) as Box<dyn prometheus::core::Collector>,
            Box::new(provider_requests.clone()),
            Box::new(provider_duration.clone()),
            Box::new(singleflight_joined.clone()),
            Box::new(refresh_ahead.clone()),
            Box::new(cached_tokens.clone()),
            Box::new(watch_streams.clone()),
            Box::new(watch_pushes.clone()),
            Box::new(lease_wait.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both outcomes exist from the start, so a dashboard's rate() has a series to read.
        for o in ["refreshed", "failed"] {
            refresh_ahead.with_label_values(&[o]);
        }
        Self {
            registry,
            cache,
            get_token,
            provider_requests,
            provider_duration,
            singleflight_joined,
            refresh_ahead,
            cached_tokens,
            watch_streams,
            watch_pushes,
            lease_wait,
        }
    }

    pub fn watch_opened(&self) {
        self.watch_streams.inc();
    }

    pub fn watch_closed(&self) {
        self.watch_streams.dec();
    }

    pub fn watch_pushed(&self) {
        self.watch_pushes.inc();
    }

    pub fn get_token(&self, outcome: GetTokenOutcome, took: Duration) {
        self.get_token[outcome as usize].observe(took.as_secs_f64());
    }

    /// The text exposition format, as scraped.
    pub fn render(&self) -> String {
        self.cached_tokens.set(self.cache.len() as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Observer for Metrics {
    fn provider_request(
        &self,
        template: &'static str,
        grant_type: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        let labels = [template, grant_type, outcome];
        self.provider_requests.with_label_values(&labels).inc();
        self.provider_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    fn singleflight_joined(&self) {
        self.singleflight_joined.inc();
    }

    fn refresh_ahead(&self, outcome: &'static str) {
        self.refresh_ahead.with_label_values(&[outcome]).inc();
    }

    fn lease_wait(&self, took: Duration) {
        self.lease_wait.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names_with_bounded_labels() {
        let m = Metrics::new(Arc::new(TokenCache::new()));
        m.get_token(GetTokenOutcome::Hit, Duration::from_micros(80));
        m.get_token(GetTokenOutcome::Error, Duration::from_millis(3));
        m.provider_request(
            "enode",
            "client_credentials",
            "ok",
            Duration::from_millis(40),
        );
        m.singleflight_joined();
        m.refresh_ahead("refreshed");
        m.lease_wait(Duration::from_millis(120));
        let text = m.render();
        for line in [
            "tokenvend_get_token_duration_seconds_count{outcome=\"hit\"} 1",
            "tokenvend_get_token_duration_seconds_count{outcome=\"error\"} 1",
            "tokenvend_provider_requests_total{grant_type=\"client_credentials\",outcome=\"ok\",template=\"enode\"} 1",
            "tokenvend_singleflight_joined_total 1",
            "tokenvend_refresh_ahead_total{outcome=\"refreshed\"} 1",
            "tokenvend_refresh_ahead_total{outcome=\"failed\"} 0",
            "tokenvend_cached_tokens 0",
            "tokenvend_lease_wait_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
