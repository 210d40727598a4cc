//! `tokenvend.v1.TokenService`.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use tokenvend_core::{
    InvalidInput,
    access::Credential,
    audit::Auditor,
    cache::CachedToken,
    ids::{ProviderId, Subject, TenantId, TokenKey},
    vend::Vendor,
    watch::TokenWatch,
};
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, InvalidateTokenRequest, InvalidateTokenResponse,
    token_service_server::TokenService,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{
    caller_wait, invalid, status, timestamp,
    watch::{WatchDeps, WatchStream, Watcher},
};
use crate::{
    auth::Caller,
    limits::Limits,
    metrics::{GetTokenOutcome, Metrics},
};

/// Upper bound for `min_ttl_seconds`: no provider issues tokens for longer than a year.
const MAX_MIN_TTL_SECS: i64 = 366 * 86_400;

pub struct TokenApi {
    vendor: Arc<Vendor>,
    auditor: Auditor,
    limits: Arc<Limits>,
    metrics: Option<Arc<Metrics>>,
    watch: WatchDeps,
}

impl TokenApi {
    pub fn new(
        vendor: Arc<Vendor>,
        auditor: Auditor,
        limits: Arc<Limits>,
        metrics: Option<Arc<Metrics>>,
        watch: WatchDeps,
    ) -> Self {
        Self {
            vendor,
            auditor,
            limits,
            metrics,
            watch,
        }
    }

    /// The caller the auth layer put on the request, allowed on (tenant, provider) — checked
    /// on the names as given, before anything is looked up.
    fn authorize<T>(
        &self,
        req: &Request<T>,
        action: &str,
        tenant: &str,
        provider: &str,
        subject: &str,
    ) -> Result<Caller, Status> {
        let caller = req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            status(tokenvend_core::Error::Internal(
                "no caller on the request: the auth layer is missing".into(),
            ))
        })?;
        caller.may_get_token(&self.auditor, action, tenant, provider, subject)?;
        Ok(caller)
    }

    /// The answer and whether it came from memory (the metric's outcome).
    async fn answer_get_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<(Response<GetTokenResponse>, bool), Status> {
        let wait = caller_wait(req.metadata());
        let r = req.get_ref();
        let caller = self.authorize(&req, "GetToken", &r.tenant, &r.provider, &r.subject)?;
        let (key, min_ttl) = parse_request(req.into_inner())?;
        let (token, hit) = match self.vendor.cached(&key, min_ttl).map_err(status)? {
            Some(token) => (token, true),
            // A hit builds no span (it would cost more than the lookup); a miss does.
            None => {
                let span = tracing::info_span!(
                    "get_token",
                    tenant = %key.tenant,
                    provider = %key.provider,
                    outcome = tracing::field::Empty,
                );
                // Boxed: the fetch's state machine is large, and would otherwise make every
                // call's (boxed) future as large, hits included.
                let token = Box::pin(
                    self.miss(&caller, key, min_ttl, wait)
                        .instrument(span.clone()),
                )
                .await;
                span.record("outcome", if token.is_ok() { "miss" } else { "error" });
                (token?, false)
            }
        };
        Ok((Response::new(answer(&token)), hit))
    }

    async fn open_watch(&self, req: Request<GetTokenRequest>) -> Result<WatchStream, Status> {
        let r = req.get_ref();
        let caller = self.authorize(&req, "WatchToken", &r.tenant, &r.provider, &r.subject)?;
        let credential = req
            .extensions()
            .get::<Credential>()
            .cloned()
            .ok_or_else(|| {
                status(tokenvend_core::Error::Internal(
                    "no credential on the request: the auth layer is missing".into(),
                ))
            })?;
        let (tenant, provider, subject) = (r.tenant.clone(), r.provider.clone(), r.subject.clone());
        let (key, min_ttl) = parse_request(req.into_inner())?;
        // Limited like a GetToken that misses: only a stream that starts a fetch spends budget.
        if self.vendor.cached(&key, min_ttl).map_err(status)?.is_none()
            && !self.vendor.is_fetching(&key)
        {
            self.within_limit(&caller)?;
        }
        let mut watch = TokenWatch::new(&self.vendor, key, min_ttl);
        // The first token decides the call's status, as it would for GetToken.
        let first = watch.next().await.map_err(status)?;
        Ok(Watcher {
            watch,
            first: Some(first),
            caller,
            credential,
            tenant,
            provider,
            subject,
            deps: self.watch.clone(),
            auditor: self.auditor.clone(),
            metrics: self.metrics.clone(),
            answer,
        }
        .into_stream())
    }

    async fn miss(
        &self,
        caller: &Caller,
        key: TokenKey,
        min_ttl: Option<Duration>,
        wait: Option<Duration>,
    ) -> Result<Arc<tokenvend_core::cache::CachedToken>, Status> {
        // Joining a fetch that is already running costs nothing more: only a caller that
        // would start one spends its budget (so a cold stampede is not refused).
        if !self.vendor.is_fetching(&key) {
            self.within_limit(caller)?;
        }
        self.vendor
            .get_token(key, min_ttl, wait)
            .await
            .map_err(status)
    }

    /// Work the cache cannot answer (a fetch to start, an invalidation) is limited per
    /// principal.
    fn within_limit(&self, caller: &Caller) -> Result<(), Status> {
        self.limits
            .check(caller.principal.name.as_str())
            .map_err(|retry_after| {
                tracing::warn!(principal = %caller.principal.name, "rate limit reached; answering RESOURCE_EXHAUSTED");
                status(tokenvend_core::Error::RateLimited {
                    what: "this principal's rate limit for uncached token requests is spent",
                    retry_after,
                })
            })
    }
}

/// The answer for a cached token, encoded once per token; every later answer (GetToken or
/// WatchToken) shares those bytes.
fn answer(token: &CachedToken) -> GetTokenResponse {
    let wire = token.wire(|t| {
        GetTokenResponse::new(
            t.access_token.expose_secret().to_owned(),
            "Bearer".to_owned(),
            t.expires_at.map(timestamp),
            t.scopes.clone(),
        )
        .to_bytes()
    });
    GetTokenResponse::pre_encoded(wire)
}

/// The key and `min_ttl` a GetToken or WatchToken asks for.
fn parse_request(req: GetTokenRequest) -> Result<(TokenKey, Option<Duration>), Status> {
    let GetTokenRequest {
        tenant,
        provider,
        min_ttl_seconds,
        subject,
    } = req;
    let key = token_key(tenant, provider, subject)?;
    let min_ttl = match min_ttl_seconds {
        None | Some(0) => None,
        Some(n) if !(0..=MAX_MIN_TTL_SECS).contains(&n) => {
            return Err(invalid(InvalidInput::new(
                "min_ttl_seconds",
                format!("must be between 0 and {MAX_MIN_TTL_SECS}"),
            )));
        }
        Some(n) => Some(Duration::from_secs(n as u64)),
    };
    Ok((key, min_ttl))
}

fn token_key(tenant: String, provider: String, subject: String) -> Result<TokenKey, Status> {
    Ok(TokenKey {
        tenant: TenantId::parse(tenant).map_err(invalid)?,
        provider: ProviderId::parse(provider).map_err(invalid)?,
        subject: Subject::parse(subject).map_err(invalid)?,
    })
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn get_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        let started = self.metrics.is_some().then(tokio::time::Instant::now);
        let answer = self.answer_get_token(req).await;
        let outcome = match &answer {
            Ok((_, true)) => GetTokenOutcome::Hit,
            Ok((_, false)) => GetTokenOutcome::Miss,
            Err(_) => GetTokenOutcome::Error,
        };
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.get_token(outcome, started.elapsed());
        }
        answer.map(|(response, _)| response)
    }

    type WatchTokenStream = WatchStream;

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn watch_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.open_watch(req).await.map(Response::new)
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn invalidate_token(
        &self,
        req: Request<InvalidateTokenRequest>,
    ) -> Result<Response<InvalidateTokenResponse>, Status> {
        let r = req.get_ref();
        let caller = self.authorize(&req, "InvalidateToken", &r.tenant, &r.provider, &r.subject)?;
        self.within_limit(&caller)?;
        let InvalidateTokenRequest {
            tenant,
            provider,
            subject,
            access_token,
        } = req.into_inner();
        let key = token_key(tenant, provider, subject)?;
        if access_token.is_empty() {
            return Err(invalid(InvalidInput::new("access_token", "is required")));
        }
        let invalidated = self
            .vendor
            .invalidate(key, access_token.as_bytes())
            .await
            .map_err(status)?;
        Ok(Response::new(InvalidateTokenResponse { invalidated }))
    }
}
