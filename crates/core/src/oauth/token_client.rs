//! The outbound HTTP call to a token endpoint: one shared reqwest `Client` (connection
//! pooling, rustls), no redirects (a redirect would carry credentials elsewhere), a body
//! cap, and an address guard that keeps production from reaching internal addresses:
//! a DNS filter when tokenvend connects itself, a check of the target before each request
//! when an operator's proxy connects for it. The environment's `HTTP(S)_PROXY`/`ALL_PROXY`
//! are never used: a proxy resolves the target itself, past the DNS filter.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};
use tracing::Instrument;

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::{
    StatusCode,
    dns::{Addrs, Name, Resolve, Resolving},
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER},
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ProviderError, TokenResponse, parse_token_response};
use crate::{
    catalog::ClientAuth,
    endpoint::is_internal,
    observe::{NoObserver, Observer, TraceContext},
};

/// Bodies larger than this are not token responses; reading stops there.
const MAX_BODY: usize = 64 * 1024;

/// Why a request to an internal address was refused (by the resolver or `check_target`).
const INTERNAL_REFUSED: &str = "the token URL resolves to an internal address (refused; see TOKENVEND_ALLOW_INSECURE_ENDPOINTS)";

#[derive(Clone, Debug)]
pub struct TokenClientConfig {
    /// Bound on one HTTP exchange with a provider.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Development only: allow loopback/private addresses (see `EndpointPolicy`).
    pub allow_insecure: bool,
    /// The operator's forward proxy for every provider call (`TOKENVEND_PROVIDER_PROXY`).
    /// `None`: direct connections, whatever the environment's proxy variables say.
    pub proxy: Option<Url>,
    /// Attempts for requests that may be repeated safely (client credentials).
    pub max_attempts: u32,
    /// First back-off between attempts; doubles each time, with jitter.
    pub initial_backoff: Duration,
    /// Consecutive failed requests (after their retries) to one token endpoint host that
    /// open its circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails requests fast before letting one through again.
    pub breaker_open: Duration,
}

impl Default for TokenClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            allow_insecure: false,
            proxy: None,
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            breaker_threshold: 5,
            breaker_open: Duration::from_secs(5),
        }
    }
}

/// The grant being requested.
pub enum Grant<'a> {
    ClientCredentials,
    /// RFC 6749 §4.1.3 with the PKCE verifier (RFC 7636 §4.5).
    AuthorizationCode {
        code: &'a str,
        code_verifier: &'a SecretString,
        redirect_uri: &'a str,
    },
    RefreshToken(&'a SecretString),
}

impl Grant<'_> {
    fn grant_type(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken(_) => "refresh_token",
        }
    }

    /// Whether a request whose outcome is unknown (timeout, 5xx) may be sent again. A code
    /// or refresh token may already have been consumed: sending it twice can make the
    /// provider revoke the whole grant (RFC 9700 §4.14.2).
    fn idempotent(&self) -> bool {
        match self {
            Grant::ClientCredentials => true,
            Grant::AuthorizationCode { .. } | Grant::RefreshToken(_) => false,
        }
    }
}

pub struct ClientCredentials<'a> {
    pub auth: ClientAuth,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
}

pub struct TokenRequest<'a> {
    /// The connection's template name, for metrics.
    pub template: &'static str,
    pub token_url: &'a Url,
    pub credentials: ClientCredentials<'a>,
    pub grant: Grant<'a>,
    /// Sent as `scope` for client credentials when not empty.
    pub scopes: &'a [String],
    /// Sent as `audience` when `Some`.
    pub audience: Option<&'a str>,
    pub extra_params: &'a BTreeMap<String, String>,
    pub default_expires_in: Duration,
    /// Send the current trace context (`traceparent`) with the request: the connection
    /// opted in.
    pub propagate_trace_context: bool,
}

#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    config: TokenClientConfig,
    breakers: std::sync::Arc<dashmap::DashMap<String, Breaker>>,
    observer: std::sync::Arc<dyn Observer>,
    trace_context: Option<std::sync::Arc<dyn TraceContext>>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A per-host circuit breaker: a provider that is down is not hit by every key's refresh,
/// and callers get UNAVAILABLE at once instead of after the whole retry budget.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<tokio::time::Instant>,
}

/// The metric label of a provider request's result.
fn outcome_class(result: &Result<TokenResponse, ProviderError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.class(),
    }
}

/// `Authorization: Basic` per RFC 6749 §2.3.1: id and secret are form-urlencoded first,
/// so a `:` or `&` in either survives (`id` + `s&ecret` → `Basic aWQ6cyUyNmVjcmV0`).
pub fn basic_auth(client_id: &str, client_secret: &str) -> SecretString {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = zeroize::Zeroizing::new(format!("{}:{}", enc(client_id), enc(client_secret)));
    SecretString::from(format!("Basic {}", STANDARD.encode(raw.as_bytes())))
}

impl TokenClient {
    pub fn new(config: TokenClientConfig) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenvend/", env!("CARGO_PKG_VERSION")));
        // Only an explicitly configured proxy is used. Through it the proxy host is the only
        // name we resolve, and the operator chose it (it may well be internal), so the DNS
        // filter stays off and `check_target` guards the target instead.
        builder = match &config.proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.as_str())?),
            None if config.allow_insecure => builder.no_proxy(),
            None => builder.no_proxy().dns_resolver(PublicOnlyResolver),
        };
        Ok(Self {
            http: builder.build()?,
            config,
            breakers: Default::default(),
            observer: std::sync::Arc::new(NoObserver),
            trace_context: None,
        })
    }

    /// Reports every provider request (and what the domain built on this client reports)
    /// to `observer`.
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Where the trace context sent to opted-in providers comes from (none: never sent).
    pub fn with_trace_context(mut self, trace_context: std::sync::Arc<dyn TraceContext>) -> Self {
        self.trace_context = Some(trace_context);
        self
    }

    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Fails fast while the host's breaker is open.
    fn check_breaker(&self, host: &str) -> Result<(), ProviderError> {
        let now = tokio::time::Instant::now();
        match self
            .breakers
            .get(host)
            .and_then(|b| b.open_until.map(|u| (u, b.failures)))
        {
            Some((until, failures)) if until > now => Err(ProviderError::Unavailable {
                reason: format!(
                    "{failures} consecutive requests to this provider failed; not trying again for {}s",
                    (until - now).as_secs() + 1
                ),
                retry_after: Some(until - now),
                never_sent: true,
            }),
            _ => Ok(()),
        }
    }

    fn record(&self, host: &str, result: &Result<TokenResponse, ProviderError>) {
        let transient = matches!(result, Err(e) if e.is_transient());
        let mut b = self.breakers.entry(host.to_owned()).or_default();
        if transient {
            b.failures += 1;
            if b.failures >= self.config.breaker_threshold {
                b.open_until = Some(tokio::time::Instant::now() + self.config.breaker_open);
                tracing::warn!(failures = b.failures, "provider circuit breaker open");
            }
        } else {
            b.failures = 0;
            b.open_until = None;
        }
    }

    /// Requests a token, retrying transient failures of idempotent grants within the
    /// retry budget (`max_attempts`, exponential back-off with jitter, `Retry-After`).
    pub async fn fetch(&self, req: &TokenRequest<'_>) -> Result<TokenResponse, ProviderError> {
        let host = req.token_url.origin().ascii_serialization();
        self.check_breaker(&host)?;
        let result = self.fetch_with_retries(req).await;
        self.record(&host, &result);
        result
    }

    async fn fetch_with_retries(
        &self,
        req: &TokenRequest<'_>,
    ) -> Result<TokenResponse, ProviderError> {
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.fetch_once(req).await {
                Err(e)
                    if e.is_transient()
                        && req.grant.idempotent()
                        && attempt < self.config.max_attempts =>
                {
                    let wait = match &e {
                        ProviderError::Unavailable {
                            retry_after: Some(ra),
                            ..
                        } => *ra,
                        _ => jitter(backoff),
                    };
                    // A Retry-After beyond the budget is not worth waiting for here.
                    if wait > Duration::from_secs(5) {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, ?wait, "token request failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(&self, req: &TokenRequest<'_>) -> Result<TokenResponse, ProviderError> {
        let started = tokio::time::Instant::now();
        // The URL's host only: its path or query could hold a tenant's identifiers.
        let span = tracing::info_span!(
            "provider.request",
            otel.kind = "client",
            template = req.template,
            grant_type = req.grant.grant_type(),
            server.address = req.token_url.host_str().unwrap_or_default(),
            outcome = tracing::field::Empty,
        );
        let result = self.exchange(req).instrument(span.clone()).await;
        let outcome = outcome_class(&result);
        span.record("outcome", outcome);
        self.observer.provider_request(
            req.template,
            req.grant.grant_type(),
            outcome,
            started.elapsed(),
        );
        result
    }

    async fn exchange(&self, req: &TokenRequest<'_>) -> Result<TokenResponse, ProviderError> {
        self.check_target(req.token_url).await?;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", req.grant.grant_type())];
        let scope = req.scopes.join(" ");
        match &req.grant {
            Grant::ClientCredentials => {
                if !scope.is_empty() {
                    form.push(("scope", &scope));
                }
            }
            Grant::AuthorizationCode {
                code,
                code_verifier,
                redirect_uri,
            } => {
                form.push(("code", code));
                form.push(("redirect_uri", redirect_uri));
                form.push(("code_verifier", code_verifier.expose_secret()));
            }
            Grant::RefreshToken(rt) => form.push(("refresh_token", rt.expose_secret())),
        }
        if let Some(audience) = req.audience {
            form.push(("audience", audience));
        }
        for (k, v) in req.extra_params {
            form.push((k, v));
        }
        let mut builder = self.authenticated_post(req.token_url, &req.credentials, &mut form)?;
        if req.propagate_trace_context
            && let Some(trace_context) = &self.trace_context
        {
            for (name, value) in trace_context.headers() {
                builder = builder.header(name, value);
            }
        }
        let resp = builder
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(&e, &self.config))?;
        let (status, content_type, retry_after, body) = self.read(resp).await?;

        let mut secrets = vec![req.credentials.client_secret.expose_secret()];
        if let Grant::RefreshToken(rt) = &req.grant {
            secrets.push(rt.expose_secret());
        }
        match parse_token_response(
            status.as_u16(),
            content_type.as_deref(),
            &body,
            req.default_expires_in,
            req.scopes,
            &secrets,
        ) {
            Err(ProviderError::Unavailable { reason, .. }) => Err(ProviderError::Unavailable {
                reason,
                retry_after,
                never_sent: false,
            }),
            other => other,
        }
    }

    /// RFC 7009 revocation of `token`. Any 2xx is success (the RFC answers 200 even for
    /// unknown tokens). Sent again only when it provably never left (connect failure).
    pub async fn revoke(
        &self,
        revocation_url: &Url,
        credentials: &ClientCredentials<'_>,
        token: &SecretString,
    ) -> Result<(), ProviderError> {
        let mut attempt = 1;
        loop {
            self.check_target(revocation_url).await?;
            let mut form: Vec<(&str, &str)> = vec![("token", token.expose_secret())];
            let builder = self.authenticated_post(revocation_url, credentials, &mut form)?;
            let resp = match builder.form(&form).send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = unavailable(&e, &self.config);
                    if err.never_sent() && attempt < self.config.max_attempts {
                        attempt += 1;
                        tokio::time::sleep(jitter(self.config.initial_backoff)).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let (status, content_type, retry_after, body) = self.read(resp).await?;
            if status.is_success() {
                return Ok(());
            }
            let secrets = [
                credentials.client_secret.expose_secret(),
                token.expose_secret(),
            ];
            // The token endpoint's error classification applies; 2xx was handled above.
            return match parse_token_response(
                status.as_u16(),
                content_type.as_deref(),
                &body,
                Duration::from_secs(1),
                &[],
                &secrets,
            ) {
                Err(ProviderError::Unavailable { reason, .. }) => Err(ProviderError::Unavailable {
                    reason,
                    retry_after,
                    never_sent: false,
                }),
                Err(e) => Err(e),
                Ok(_) => Err(ProviderError::BadResponse {
                    reason: format!("revocation answered HTTP {status}"),
                }),
            };
        }
    }

    /// The address guard when an operator's proxy connects for us: the proxy resolves the
    /// provider's host, so `PublicOnlyResolver` never sees it. The target is resolved here
    /// before the request leaves (an IP literal is checked as is) and refused if *any* of
    /// its addresses is internal — which one the proxy picks is not ours to choose. A proxy
    /// with its own view of DNS (split horizon, a rebinding answer between this lookup and
    /// its own) can still differ: an operator's proxy should refuse internal targets too.
    async fn check_target(&self, url: &Url) -> Result<(), ProviderError> {
        if self.config.allow_insecure || self.config.proxy.is_none() {
            return Ok(());
        }
        let internal = match url.host() {
            Some(url::Host::Ipv4(ip)) => is_internal(ip.into()),
            Some(url::Host::Ipv6(ip)) => is_internal(ip.into()),
            Some(url::Host::Domain(name)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                    .await
                    .map(Iterator::collect)
                    .unwrap_or_default();
                if addrs.is_empty() {
                    return Err(ProviderError::Unavailable {
                        reason: "could not resolve the provider's host name".to_owned(),
                        retry_after: None,
                        never_sent: true,
                    });
                }
                addrs.iter().any(|a| is_internal(a.ip()))
            }
            None => true,
        };
        if internal {
            return Err(ProviderError::Unavailable {
                reason: INTERNAL_REFUSED.to_owned(),
                retry_after: None,
                never_sent: true,
            });
        }
        Ok(())
    }

    /// A POST with `Accept: application/json`, the client authenticated as `credentials`
    /// says: a Basic header, or the id and secret appended to the form.
    fn authenticated_post<'f>(
        &self,
        url: &Url,
        credentials: &ClientCredentials<'f>,
        form: &mut Vec<(&'f str, &'f str)>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let builder = self
            .http
            .post(url.clone())
            .header(ACCEPT, "application/json");
        let secret = credentials.client_secret.expose_secret();
        Ok(match credentials.auth {
            ClientAuth::Post => {
                form.push(("client_id", credentials.client_id));
                form.push(("client_secret", secret));
                builder
            }
            ClientAuth::Basic | ClientAuth::Unspecified => {
                let header = basic_auth(credentials.client_id, secret);
                let mut value = reqwest::header::HeaderValue::from_str(header.expose_secret())
                    .map_err(|_| ProviderError::BadResponse {
                        reason: "client credentials cannot be sent in a header".into(),
                    })?;
                value.set_sensitive(true);
                builder.header(AUTHORIZATION, value)
            }
        })
    }

    /// Status, content type, Retry-After and the body, read up to the cap.
    async fn read(
        &self,
        mut resp: reqwest::Response,
    ) -> Result<(StatusCode, Option<String>, Option<Duration>, Vec<u8>), ProviderError> {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(&e, &self.config))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(if status.is_success() {
                    ProviderError::BadResponse {
                        reason: format!("response body larger than {MAX_BODY} bytes"),
                    }
                } else {
                    ProviderError::Unavailable {
                        reason: format!("HTTP {} with an oversized body", status.as_u16()),
                        retry_after,
                        never_sent: false,
                    }
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, content_type, retry_after, body))
    }
}

/// Describes a transport failure without the URL or any body (reqwest's Display includes
/// the URL; ours carry no credentials, but the message should say what to do, not dump).
fn unavailable(e: &reqwest::Error, config: &TokenClientConfig) -> ProviderError {
    let reason = if e.is_timeout() {
        format!("no answer within {:?}", config.request_timeout)
    } else if e.is_connect() {
        // Connecting failed: the request provably never left, so even a refresh token may
        // be sent again.
        let refused = std::error::Error::source(e)
            .map(|s| {
                format!("{s:?}").contains("ConnectionRefused") || s.to_string().contains("refused")
            })
            .unwrap_or(false);
        if refused {
            "connection refused".to_owned()
        } else if format!("{e:?}").contains("internal address") {
            INTERNAL_REFUSED.to_owned()
        } else {
            "could not connect (DNS, TCP or TLS failure)".to_owned()
        }
    } else {
        "the connection failed while exchanging the request".to_owned()
    };
    ProviderError::Unavailable {
        reason,
        retry_after: None,
        never_sent: e.is_connect(),
    }
}

/// ±25 % so retries of many replicas do not line up.
fn jitter(d: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(factor)
}

/// Resolves names and drops loopback/private/link-local addresses, so a public host name
/// pointed at an internal address (DNS rebinding) cannot reach internal services.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use tokenvend_testkit::proxy::{CountingProxy, PROXY_TOKEN};

    use super::*;

    /// A client whose configured proxy is `proxy`, known by an internal name (`localhost`),
    /// as an operator's proxy may well be.
    fn client(proxy: &CountingProxy, allow_insecure: bool) -> TokenClient {
        TokenClient::new(TokenClientConfig {
            proxy: Some(Url::parse(&proxy.url("localhost")).unwrap()),
            allow_insecure,
            max_attempts: 1,
            ..Default::default()
        })
        .unwrap()
    }

    async fn fetch(client: &TokenClient, token_url: &str) -> Result<TokenResponse, ProviderError> {
        let secret = SecretString::from("secret");
        client
            .fetch(&TokenRequest {
                template: "generic",
                token_url: &Url::parse(token_url).unwrap(),
                credentials: ClientCredentials {
                    auth: ClientAuth::Basic,
                    client_id: "id",
                    client_secret: &secret,
                },
                grant: Grant::ClientCredentials,
                scopes: &[],
                audience: None,
                extra_params: &BTreeMap::new(),
                default_expires_in: Duration::from_secs(3600),
                propagate_trace_context: false,
            })
            .await
    }

    /// With a configured proxy the proxy resolves the target, so the client checks it
    /// first: internal targets never reach the proxy, a public one does (through a proxy
    /// whose own name is internal).
    #[tokio::test]
    async fn configured_proxy_is_used_but_internal_targets_are_refused_before_it() {
        let proxy = CountingProxy::start().await.unwrap();
        let client = client(&proxy, false);
        for target in [
            "https://127.0.0.1:1/token",
            "https://[::1]/token",
            "https://[::ffff:169.254.169.254]/token",
            "https://[64:ff9b::a00:1]/token",
            "https://localhost:1/token",
        ] {
            let err = fetch(&client, target).await.unwrap_err();
            assert_eq!(
                err,
                ProviderError::Unavailable {
                    reason: INTERNAL_REFUSED.to_owned(),
                    retry_after: None,
                    never_sent: true
                },
                "{target}"
            );
        }
        let secret = SecretString::from("secret");
        let creds = ClientCredentials {
            auth: ClientAuth::Post,
            client_id: "id",
            client_secret: &secret,
        };
        let err = client
            .revoke(
                &Url::parse("https://10.0.0.1/revoke").unwrap(),
                &creds,
                &SecretString::from("rt"),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the provider is unavailable: {INTERNAL_REFUSED}")
        );
        assert_eq!(proxy.accepted(), 0, "an internal target reached the proxy");

        // A public target goes to the proxy (which refuses to tunnel): the proxy's own
        // internal address was not refused. Nothing leaves this machine.
        assert!(fetch(&client, "https://8.8.8.8/token").await.is_err());
        assert_eq!(proxy.accepted(), 1);
    }

    /// Every request goes through the configured proxy, none directly to the target.
    #[tokio::test]
    async fn configured_proxy_carries_the_request() {
        let proxy = CountingProxy::start().await.unwrap();
        // Nothing listens on port 9 (discard): only the proxy can answer.
        let token = fetch(&client(&proxy, true), "http://127.0.0.1:9/token")
            .await
            .unwrap();
        assert_eq!(token.access_token.expose_secret(), PROXY_TOKEN);
        assert_eq!(proxy.accepted(), 1);
    }

    #[test]
    fn basic_auth_encodes_per_rfc6749() {
        assert_eq!(
            basic_auth("id", "s&ecret").expose_secret(),
            "Basic aWQ6cyUyNmVjcmV0"
        );
        // ':' in the id must not split it; spaces become '+'
        let h = basic_auth("a:b", "c d");
        let raw = STANDARD
            .decode(h.expose_secret().trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(raw, b"a%3Ab:c+d");
    }
}
