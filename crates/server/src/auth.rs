//! Authentication and authorization of every TokenService and AdminService call, as a tower
//! layer in front of the services: `authorization: Bearer <api key>` (or a verified client
//! certificate bound to a principal) → principal → role check, all in memory
//! (`access::Authorizer`), before a handler runs or anything is looked up. The finer check
//! — may this caller get tokens of this (tenant, provider)? — needs the decoded request, so
//! the token handlers make it first thing, through [`Caller`].
//!
//! Reflection and health pass without a key, so grpcurl can discover the API and probes
//! need none. Every refusal and every administrative change is audited here.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::future::Either;
use tokenvend_core::{
    Error,
    access::{Authorizer, Credential, Principal},
    audit::{AuditEntry, Auditor},
};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{limits::Limits, status::to_status};

const TOKEN_SERVICE: &str = "/tokenvend.v1.TokenService/";
const ADMIN_SERVICE: &str = "/tokenvend.v1.AdminService/";

/// Who is calling, for the handlers (request extension).
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// The token handlers' check, before any lookup: the same refusal whether the tenant
    /// exists or not. Refusals are audited.
    pub fn may_get_token(
        &self,
        auditor: &Auditor,
        action: &str,
        tenant: &str,
        provider: &str,
        subject: &str,
    ) -> Result<(), Status> {
        if self.principal.may_get_token(tenant, provider) {
            return Ok(());
        }
        auditor.refusal(AuditEntry {
            principal: self.principal.name.to_string(),
            action: action.to_owned(),
            tenant: tenant.to_owned(),
            provider: provider.to_owned(),
            subject: subject.to_owned(),
            outcome: code_name(Code::PermissionDenied),
            peer: peer_text(self.peer),
        });
        Err(to_status(&Error::PermissionDenied(
            "this caller may not get tokens of that tenant and provider",
        )))
    }
}

/// What an administrative change acted on, filled in by its handler (request extension)
/// and read by the layer once the answer is known.
#[derive(Clone, Default, Debug)]
pub struct AuditTarget(Arc<Mutex<(String, String, String)>>);

impl AuditTarget {
    pub fn set(&self, tenant: &str, provider: &str, subject: &str) {
        if let Ok(mut t) = self.0.lock() {
            *t = (tenant.to_owned(), provider.to_owned(), subject.to_owned());
        }
    }
}

/// Records the target of an audited change, if the layer asked for one.
pub fn audit_target<T>(req: &tonic::Request<T>, tenant: &str, provider: &str, subject: &str) {
    if let Some(t) = req.extensions().get::<AuditTarget>() {
        t.set(tenant, provider, subject);
    }
}

/// Reads of AdminService: not audited (they change nothing), still admin-only.
fn is_read(action: &str) -> bool {
    action.starts_with("Get") || action.starts_with("List")
}

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map(|p| p.to_string()).unwrap_or_default()
}

/// The remote address of a plaintext or TLS connection.
fn peer_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::TcpConnectInfo;
    req.extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| tls_peer(req))
}

/// The remote address of a TLS connection.
fn tls_peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
}

/// The presented API key, or why the header is unusable.
fn bearer<B>(req: &http::Request<B>) -> Result<Option<&str>, Error> {
    let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Some)
        .ok_or(Error::Unauthenticated(
            "authorization metadata must be `Bearer <api key>`",
        ))
}

#[derive(Clone)]
pub struct AuthLayer {
    inner: Arc<Shared>,
}

struct Shared {
    authorizer: Arc<Authorizer>,
    auditor: Auditor,
    limits: Arc<Limits>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl AuthLayer {
    pub fn new(authorizer: Arc<Authorizer>, auditor: Auditor, limits: Arc<Limits>) -> Self {
        Self {
            inner: Arc::new(Shared {
                authorizer,
                auditor,
                limits,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.inner.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The inner service's own future (no allocation: the path of every GetToken), an answer
/// given here (a refusal), or an audited change that records its outcome once answered.
type AuthFuture<F, T, E> = Either<F, Either<std::future::Ready<Result<T, E>>, BoxFuture<T, E>>>;

impl Shared {
    /// Who is calling: an API key if one is presented, else a verified client certificate
    /// bound to a principal.
    fn identify<B>(&self, req: &http::Request<B>) -> Result<Arc<Principal>, Error> {
        if let Some(key) = bearer(req)? {
            return self.authorizer.authenticate_key(key);
        }
        let identities = crate::tls::peer_identities(req);
        if !identities.is_empty() {
            return self.authorizer.authenticate_certificate(&identities).ok_or(
                Error::Unauthenticated("the client certificate is not bound to a principal"),
            );
        }
        Err(Error::Unauthenticated(
            "missing `authorization: Bearer <api key>` metadata",
        ))
    }

    /// What `identify` accepted, to be checked again later (see `Credential`).
    fn credential<B>(&self, req: &http::Request<B>) -> Credential {
        match bearer(req) {
            Ok(Some(key)) => self.authorizer.key_credential(key),
            _ => Credential::Certificate(crate::tls::peer_identities(req)),
        }
    }

    fn refuse(
        &self,
        principal: &str,
        action: &str,
        peer: Option<SocketAddr>,
        err: &Error,
    ) -> Status {
        let status = to_status(err);
        self.auditor.refusal(AuditEntry {
            principal: principal.to_owned(),
            action: action.to_owned(),
            outcome: code_name(status.code()),
            peer: peer_text(peer),
            ..Default::default()
        });
        status
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let admin = path.starts_with(ADMIN_SERVICE);
        if !admin && !path.starts_with(TOKEN_SERVICE) {
            // Reflection, health, and unknown paths (answered UNIMPLEMENTED by tonic).
            return Either::Left(self.inner.call(req));
        }
        // Borrowed from the path: nothing is allocated on the way to a cache hit.
        let action = path.rsplit('/').next().unwrap_or_default();
        let shared = &self.shared;
        let peer = peer_of(&req);
        let answer = |status: Status| -> Self::Future {
            Either::Right(Either::Left(std::future::ready(Ok(
                status.into_http::<ResBody>()
            ))))
        };
        let principal = match shared.identify(&req) {
            Ok(p) => p,
            Err(e) => return answer(shared.refuse("", action, peer, &e)),
        };
        if admin {
            if !principal.is_admin() {
                let e = Error::PermissionDenied("AdminService needs a ROLE_ADMIN principal");
                return answer(shared.refuse(principal.name.as_str(), action, peer, &e));
            }
            if let Err(retry_after) = shared.limits.check(principal.name.as_str()) {
                return answer(to_status(&Error::RateLimited {
                    what: "this principal's rate limit is spent",
                    retry_after,
                }));
            }
        }
        // A stream checks its caller again when keys or permissions change.
        let credential = (action == "WatchToken").then(|| shared.credential(&req));
        let audited = (admin && !is_read(action)).then(|| {
            (
                action.to_owned(),
                principal.name.to_string(),
                AuditTarget::default(),
            )
        });
        if let Some((_, _, target)) = &audited {
            req.extensions_mut().insert(target.clone());
        }
        if let Some(credential) = credential {
            req.extensions_mut().insert(credential);
        }
        req.extensions_mut().insert(Caller { principal, peer });
        let future = self.inner.call(req);
        let Some((action, name, target)) = audited else {
            return Either::Left(future);
        };
        let auditor = shared.auditor.clone();
        Either::Right(Either::Right(Box::pin(async move {
            let res = future.await?;
            // A unary error answer is trailers-only: its status is in the headers. No
            // grpc-status there means the call succeeded (the status trails the message).
            let code = res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(Code::Ok, Code::from_i32);
            let (tenant, provider, subject) =
                target.0.lock().map(|t| t.clone()).unwrap_or_default();
            auditor
                .change(AuditEntry {
                    principal: name,
                    action,
                    tenant,
                    provider,
                    subject,
                    outcome: code_name(code),
                    peer: peer_text(peer),
                })
                .await;
            Ok(res)
        })))
    }
}
