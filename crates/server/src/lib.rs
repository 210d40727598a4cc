//! The `tokenvend` server: configuration, gRPC services, authentication, the HTTP side port
//! and logging, wired together in [`app`]. The domain lives in `tokenvend-core`.

pub mod app;
pub mod auth;
pub mod config;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod panic;
pub mod preflight;
pub mod rpc_trace;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
