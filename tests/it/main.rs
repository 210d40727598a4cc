//! End-to-end tests: the real `tokenvend` binary, spoken to over gRPC with a client built
//! from descriptors fetched through server reflection (as grpcurl does), against a real
//! OAuth server (oidc-provider), precise mock token endpoints (wiremock), SQLite and a real
//! PostgreSQL server started by the harness.

mod support;

mod authcode;
mod cli;
mod client;
mod destination;
mod docs;
mod errors;
mod fleet;
mod grants;
mod hardening;
mod lifecycle;
mod metrics;
mod mtls;
mod otel;
mod providers;
mod proxy;
mod reflection;
mod refresh_state;
mod rewrap;
mod security;
mod shutdown;
mod stampede;
mod telemetry_off;
mod walkthrough;
mod watch;
