//! The GetToken call straight to its service, every other call through tonic's router.
//!
//! tonic's `Routes` is an axum router: path matching, a boxed clone of the service and a
//! boxed future per call, about 14 allocations (`benches/hot_path.rs`,
//! `grpc_service_routed` vs `grpc_service_fast_path`). GetToken is the one call on every
//! request path of the services that use tokenvend, so it skips that: one string compare.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use futures::future::Either;
use tonic::{body::Body, server::NamedService, service::Routes};
use tower::Service;

use tokenvend_proto::v1::token_service_server::TokenServiceServer;

use crate::grpc::token::TokenApi;

/// `/tokenvend.v1.TokenService/GetToken`.
const GET_TOKEN: &str = "/tokenvend.v1.TokenService/GetToken";

#[derive(Clone)]
pub struct FastPath {
    token: TokenServiceServer<TokenApi>,
    routes: Routes,
}

impl FastPath {
    /// `routes` must also hold `token` (it answers TokenService's other methods).
    pub fn new(token: TokenServiceServer<TokenApi>, routes: Routes) -> Self {
        debug_assert!(GET_TOKEN.starts_with(&format!(
            "/{}/",
            <TokenServiceServer<TokenApi> as NamedService>::NAME
        )));
        Self {
            token,
            routes: routes.prepare(),
        }
    }
}

impl Service<http::Request<Body>> for FastPath {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <TokenServiceServer<TokenApi> as Service<http::Request<Body>>>::Future,
        <Routes as Service<http::Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (neither applies backpressure).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == GET_TOKEN {
            Either::Left(self.token.call(req))
        } else {
            Either::Right(self.routes.call(req))
        }
    }
}
