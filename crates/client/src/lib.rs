//! `tokenvend-client`: tokens for a calling service, from its own memory.
//!
//! A [`TokenSource`] opens one `WatchToken` stream per (tenant, provider, subject) on first
//! use and keeps the token it pushes, so [`TokenHandle::token`] is a read of memory — no
//! network round trip on the caller's path, and tokenvend's load grows with refreshes, not
//! with calls. While a stream (re)connects, or if the token in memory would live less than
//! `min_ttl`, `token()` asks `GetToken` instead; it never hands out a token below
//! `min_ttl`. Streams reconnect with jittered exponential backoff, trying the configured
//! endpoints in turn, so a replica that goes away (a crash, a rolling update) costs the
//! caller nothing while its token is valid.
//!
//! ```no_run
//! # async fn example() -> Result<(), tokenvend_client::Error> {
//! use std::time::Duration;
//! use tokenvend_client::{Config, TokenSource};
//!
//! let source = TokenSource::new(Config {
//!     endpoints: vec!["http://tokenvend:50051".into()],
//!     api_key: Some("tvk_…".into()),
//!     min_ttl: Duration::from_secs(60),
//! })?;
//! let enode = source.handle("acme", "enode", "");
//! let token = enode.token().await?;
//! // call the provider with `Authorization: Bearer {token.access_token()}`; on its 401:
//! enode.invalidate(token.access_token()).await?;
//! # Ok(()) }
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, InvalidateTokenRequest,
    token_service_client::TokenServiceClient,
};
use tonic::{
    Code, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Where and how to reach tokenvend.
#[derive(Clone)]
pub struct Config {
    /// gRPC endpoints (`http://host:50051`, `https://…`); usually one load-balanced name.
    /// With several, a failed call or stream moves on to the next.
    pub endpoints: Vec<String>,
    /// The caller's API key (`tvk_…`), sent as `authorization: Bearer`.
    pub api_key: Option<String>,
    /// No token with less life left than this is handed out.
    pub min_ttl: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("min_ttl", &self.min_ttl)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tokenvend answered with an error (the status carries its code and message).
    #[error("tokenvend: {code:?}: {message}")]
    Status { code: Code, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            Error::Config(_) => None,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// An access token as tokenvend handed it out.
pub struct Token {
    access_token: SecretString,
    expires_at: Option<SystemTime>,
    scopes: Vec<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Token {
    /// For the provider's `Authorization: Bearer` header.
    pub fn access_token(&self) -> &str {
        self.access_token.expose_secret()
    }

    /// `None` for a static API key, which does not expire.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    fn lives(&self, now: SystemTime, min_ttl: Duration) -> bool {
        self.expires_at
            .is_none_or(|at| at.duration_since(now).is_ok_and(|left| left >= min_ttl))
    }

    fn from_response(r: GetTokenResponse) -> Self {
        let expires_at = r.expires_at.map(|ts| {
            let since = Duration::new(ts.seconds.max(0) as u64, ts.nanos.max(0) as u32);
            SystemTime::UNIX_EPOCH + since
        });
        Token {
            access_token: SecretString::from(r.access_token),
            expires_at,
            scopes: r.scopes,
        }
    }
}

/// This host's clock. The workspace reads time through `tokenvend_core::clock`; this crate
/// is for calling services and does not depend on the server's domain crate.
#[allow(clippy::disallowed_methods)]
fn now() -> SystemTime {
    SystemTime::now()
}

/// What the streams and the fallback calls share.
struct Shared {
    clients: Vec<TokenServiceClient<Channel>>,
    /// The endpoint tried first (the last one that worked).
    preferred: AtomicUsize,
    auth: Option<AsciiMetadataValue>,
    min_ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    provider: String,
    subject: String,
}

/// One key's token in memory and the stream that keeps it current.
struct Entry {
    key: Key,
    current: ArcSwapOption<Token>,
    /// Bumped on every new token, for [`TokenHandle::changed`].
    updates: tokio::sync::watch::Sender<u64>,
    /// The last token reported dead: a stream message still in flight with it (sent before
    /// the report) must not bring it back.
    rejected: std::sync::Mutex<Option<SecretString>>,
}

impl Entry {
    fn store(&self, token: Arc<Token>) {
        let rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if rejected
            .as_ref()
            .is_some_and(|r| r.expose_secret() == token.access_token())
        {
            return;
        }
        self.current.store(Some(token));
        drop(rejected);
        self.updates.send_modify(|n| *n += 1);
    }

    fn reject(&self, token: &str) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *rejected = Some(SecretString::from(token.to_owned()));
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|t| t.access_token() == token)
        {
            self.current.store(None);
        }
    }
}

/// Tokens for many keys over one set of connections. Cheap to clone; the streams stop when
/// the last clone (and every handle) is dropped.
#[derive(Clone)]
pub struct TokenSource {
    shared: Arc<Shared>,
    entries: Arc<DashMap<Key, TokenHandle>>,
}

impl TokenSource {
    /// Connects lazily: nothing is dialled before the first token is asked for.
    pub fn new(config: Config) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint is needed".into()));
        }
        let clients = config
            .endpoints
            .iter()
            .map(|e| {
                let endpoint = Endpoint::from_shared(e.clone())
                    .map_err(|err| Error::Config(format!("endpoint {e:?}: {err}")))?
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true);
                Ok(TokenServiceClient::new(endpoint.connect_lazy()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let auth = match &config.api_key {
            Some(k) => {
                let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {k}"))
                    .map_err(|_| Error::Config("the API key is not valid metadata".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                clients,
                preferred: AtomicUsize::new(0),
                auth,
                min_ttl: config.min_ttl,
            }),
            entries: Arc::new(DashMap::new()),
        })
    }

    /// The handle of one key, its stream opened on first use. Keep it: its `token()` is the
    /// fast path (no lookup by name).
    pub fn handle(&self, tenant: &str, provider: &str, subject: &str) -> TokenHandle {
        let key = Key {
            tenant: tenant.to_owned(),
            provider: provider.to_owned(),
            subject: subject.to_owned(),
        };
        self.entries
            .entry(key.clone())
            .or_insert_with(|| TokenHandle::start(self.shared.clone(), key))
            .clone()
    }

    /// `handle(tenant, provider, subject).token()`.
    pub async fn token(
        &self,
        tenant: &str,
        provider: &str,
        subject: &str,
    ) -> Result<Arc<Token>, Error> {
        self.handle(tenant, provider, subject).token().await
    }
}

/// One key's token. Cheap to clone.
#[derive(Clone)]
pub struct TokenHandle {
    entry: Arc<Entry>,
    shared: Arc<Shared>,
    _stream: Arc<StreamTask>,
}

/// Stops the key's stream when the last handle goes.
struct StreamTask(tokio::task::AbortHandle);

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TokenHandle {
    fn start(shared: Arc<Shared>, key: Key) -> Self {
        let entry = Arc::new(Entry {
            key,
            current: ArcSwapOption::empty(),
            updates: tokio::sync::watch::channel(0).0,
            rejected: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(follow(shared.clone(), entry.clone()));
        Self {
            entry,
            shared,
            _stream: Arc::new(StreamTask(task.abort_handle())),
        }
    }

    /// A token with at least `min_ttl` left: from memory when the stream has one, else from
    /// `GetToken`.
    pub async fn token(&self) -> Result<Arc<Token>, Error> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let token = Arc::new(self.shared.get_token(&self.entry.key).await?);
        if !token.lives(now(), self.shared.min_ttl) {
            // tokenvend guarantees min_ttl by its clock; this one is behind.
            return Err(Error::Status {
                code: Code::FailedPrecondition,
                message: "the token tokenvend answered expires within min_ttl by this host's clock; check the clocks".into(),
            });
        }
        self.entry.store(token.clone());
        Ok(token)
    }

    /// The token in memory, if it lives at least `min_ttl` longer (never a network call).
    pub fn cached(&self) -> Option<Arc<Token>> {
        let guard = self.entry.current.load();
        let token = guard.as_ref()?;
        token
            .lives(now(), self.shared.min_ttl)
            .then(|| token.clone())
    }

    /// The provider rejected `rejected` (a 401, eDRV's `jwt expired`): it is dropped here at
    /// once and reported to tokenvend, which replaces it for every caller if it is still
    /// the current one. The next `token()` gets the replacement.
    pub async fn invalidate(&self, rejected: &str) -> Result<bool, Error> {
        self.entry.reject(rejected);
        self.shared.invalidate(&self.entry.key, rejected).await
    }

    /// Waits until the token in memory is another one than `seen` (pushed by tokenvend).
    pub async fn changed(&self, seen: &Token) -> Arc<Token> {
        let mut updates = self.entry.updates.subscribe();
        loop {
            if let Some(t) = self.entry.current.load_full()
                && t.access_token() != seen.access_token()
            {
                return t;
            }
            if updates.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Shared {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }

    fn token_request(&self, key: &Key) -> GetTokenRequest {
        GetTokenRequest {
            tenant: key.tenant.clone(),
            provider: key.provider.clone(),
            min_ttl_seconds: Some(self.min_ttl.as_secs().max(1) as i64),
            subject: key.subject.clone(),
        }
    }

    /// Calls `f` on the preferred endpoint, then on the others while the failure says the
    /// endpoint is unreachable or going away.
    async fn each_endpoint<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(TokenServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match f(self.clients[at].clone()).await {
                Ok(v) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(s) if s.code() == Code::Unavailable => last = Some(s),
                Err(s) => return Err(s),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no endpoint")))
    }

    async fn get_token(&self, key: &Key) -> Result<Token, Error> {
        let r = self
            .each_endpoint(|mut c| {
                let req = self.request(self.token_request(key));
                async move { c.get_token(req).await }
            })
            .await?;
        Ok(Token::from_response(r.into_inner()))
    }

    async fn invalidate(&self, key: &Key, rejected: &str) -> Result<bool, Error> {
        let r = self
            .each_endpoint(|mut c| {
                let req = self.request(InvalidateTokenRequest {
                    tenant: key.tenant.clone(),
                    provider: key.provider.clone(),
                    subject: key.subject.clone(),
                    access_token: rejected.to_owned(),
                });
                async move { c.invalidate_token(req).await }
            })
            .await?;
        Ok(r.into_inner().invalidated)
    }
}

/// The first reconnection waits up to this long (full jitter), doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Keeps one key's stream open for as long as its handles live.
async fn follow(shared: Arc<Shared>, entry: Arc<Entry>) {
    let mut failures: u32 = 0;
    loop {
        let opened = shared
            .each_endpoint(|mut c| {
                let req = shared.request(shared.token_request(&entry.key));
                async move { c.watch_token(req).await }
            })
            .await;
        let status = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            failures = 0;
                            entry.store(Arc::new(Token::from_response(message)));
                        }
                        Ok(None) => break Status::unavailable("the stream ended"),
                        Err(s) => break s,
                    }
                }
            }
            Err(s) => s,
        };
        failures = failures.saturating_add(1);
        // Reconnect elsewhere first: this endpoint just failed.
        if status.code() == Code::Unavailable {
            shared.preferred.fetch_add(1, Ordering::Relaxed);
        }
        let cap = FIRST_BACKOFF
            .saturating_mul(1 << failures.min(10))
            .min(MAX_BACKOFF);
        let wait = cap.mul_f64(rand::random::<f64>());
        tracing::debug!(
            tenant = %entry.key.tenant,
            provider = %entry.key.provider,
            code = ?status.code(),
            message = status.message(),
            ?wait,
            "token stream interrupted; token() answers from memory or GetToken meanwhile"
        );
        tokio::time::sleep(wait).await;
    }
}
