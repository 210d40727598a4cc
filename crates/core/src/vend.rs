//! `GetToken` from the cache down to the provider call. Read top to bottom:
//! [`Vendor::get_token`] (hot path) → [`Vendor::join_fetch`] (single-flight) →
//! [`fetch`] (store, then provider) → `TokenClient::fetch`.

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::{
    cache::{CachedToken, TokenCache},
    clock::Clock,
    connection::{ConnectionSettings, EndpointPolicy},
    crypto::{Aad, Envelope},
    error::{Error, Result},
    flight::{SingleFlight, Waited},
    ids::TokenKey,
    oauth::{ClientCredentials, Grant, ProviderError, TokenClient, TokenRequest},
    store::{ConnectionRecord, GrantStatus, Store, StoreError, TokenRecord},
};

pub(crate) const CONNECTIONS: &str = "connections";
pub(crate) const TOKENS: &str = "tokens";

#[derive(Clone, Debug)]
pub struct VendorConfig {
    /// Used when a caller sets no `min_ttl_seconds` (or 0).
    pub default_min_ttl: Duration,
    /// Upper bound on any caller's wait, whatever its deadline.
    pub max_wait: Duration,
    /// At most one invalidation-triggered refresh per key in this interval (eDRV asks not
    /// to request tokens excessively; a caller misreporting a good token must not make us).
    pub invalidate_min_interval: Duration,
    pub policy: EndpointPolicy,
}

impl Default for VendorConfig {
    fn default() -> Self {
        Self {
            default_min_ttl: Duration::from_secs(60),
            max_wait: Duration::from_secs(30),
            invalidate_min_interval: Duration::from_secs(10),
            policy: EndpointPolicy::default(),
        }
    }
}

/// Everything a fetch task needs; shared so the task can outlive the caller that started it.
struct Inner {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    cache: Arc<TokenCache>,
    client: TokenClient,
    clock: Arc<dyn Clock>,
    config: VendorConfig,
}

pub struct Vendor {
    inner: Arc<Inner>,
    flights: SingleFlight<TokenKey, Arc<CachedToken>, Error>,
    /// When each key was last invalidated, for `invalidate_min_interval`.
    invalidated_at: dashmap::DashMap<TokenKey, time::OffsetDateTime>,
}

impl Vendor {
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        cache: Arc<TokenCache>,
        client: TokenClient,
        clock: Arc<dyn Clock>,
        config: VendorConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                envelope,
                cache,
                client,
                clock,
                config,
            }),
            flights: SingleFlight::new(),
            invalidated_at: dashmap::DashMap::new(),
        }
    }

    pub fn config(&self) -> &VendorConfig {
        &self.inner.config
    }

    /// A token for `key` valid for at least `min_ttl` (None: the server default), waiting at
    /// most `wait` (capped by `max_wait`).
    pub async fn get_token(
        &self,
        key: TokenKey,
        min_ttl: Option<Duration>,
        wait: Option<Duration>,
    ) -> Result<Arc<CachedToken>> {
        let min_ttl = min_ttl
            .filter(|d| !d.is_zero())
            .unwrap_or(self.inner.config.default_min_ttl);
        // Hot path: one map read, one Arc clone, no await before the answer.
        if let Some(token) = self.inner.cache.get(&key) {
            if token.valid_for(self.inner.clock.now(), min_ttl) {
                return Ok(token);
            }
            if let Some(lifetime) = token.issued_lifetime.filter(|l| *l < min_ttl) {
                return Err(unsatisfiable(min_ttl, lifetime));
            }
        }
        let wait = wait
            .unwrap_or(self.inner.config.max_wait)
            .min(self.inner.config.max_wait);
        let deadline = tokio::time::Instant::now() + wait;
        // A shared fetch started for a laxer caller may return a token too short for this
        // one; then one more fetch, and if even a token straight from the provider is too
        // short, the request cannot be met.
        for attempt in 0..2 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let token = self.join_fetch(&key, min_ttl, left, wait).await?;
            if token.valid_for(self.inner.clock.now(), min_ttl) {
                return Ok(token);
            }
            if token.fresh_from_provider || attempt == 1 {
                let lifetime = token.issued_lifetime.unwrap_or_default();
                return Err(unsatisfiable(min_ttl, lifetime));
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn join_fetch(
        &self,
        key: &TokenKey,
        min_ttl: Duration,
        left: Duration,
        wait: Duration,
    ) -> Result<Arc<CachedToken>> {
        let inner = self.inner.clone();
        let task_key = key.clone();
        let span =
            tracing::info_span!("fetch_token", tenant = %key.tenant, provider = %key.provider);
        let result = self
            .flights
            .run(key.clone(), left, move || {
                async move { fetch(&inner, task_key, min_ttl).await }.instrument(span)
            })
            .await;
        match result {
            Ok(token) => Ok(token),
            Err(Waited::Failed(e)) => Err(Error::Shared(e)),
            Err(Waited::TimedOut) => Err(Error::DeadlineExceeded(wait)),
        }
    }

    /// A caller reports that the provider rejected `reported`. It is dropped — in the shared
    /// store and in memory — only if it is still the current token, so a thousand reports of
    /// one dead token cause one refresh, and a report about an older token changes nothing.
    pub async fn invalidate(&self, key: TokenKey, reported: &[u8]) -> Result<bool> {
        let digest = Sha256::digest(reported);
        let conn = load_connection(&self.inner, &key).await?;
        let now = self.inner.clock.now();
        if let Some(last) = self.invalidated_at.get(&key).map(|t| *t) {
            let since = now - last;
            let interval = self.inner.config.invalidate_min_interval;
            if since < interval {
                // Only a report about the current token would cause a refresh.
                let current = self
                    .inner
                    .store
                    .load_token(conn.id, key.subject.as_str())
                    .await?
                    .is_some_and(|t| t.token_sha256 == digest.as_slice());
                if current {
                    return Err(Error::RateLimited {
                        what: "this token was already invalidated moments ago and its replacement is reported dead too; check the caller",
                        retry_after: (interval - since).try_into().unwrap_or(interval),
                    });
                }
                return Ok(false);
            }
        }
        let in_store = self
            .inner
            .store
            .invalidate_token(conn.id, key.subject.as_str(), &digest)
            .await?;
        let in_memory = self.inner.cache.remove_if(&key, |t| {
            t.expires_at.is_some()
                && Sha256::digest(t.access_token.expose_secret().as_bytes()) == digest
        });
        if in_store || in_memory {
            tracing::info!(tenant = %key.tenant, provider = %key.provider, "token invalidated by a caller");
            self.invalidated_at.insert(key, now);
        }
        Ok(in_store || in_memory)
    }

    /// Connections changed: drop their cached tokens (see `TokenCache::retire_connection`).
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.inner.cache
    }
}

fn unsatisfiable(min_ttl: Duration, lifetime: Duration) -> Error {
    Error::MinTtlUnsatisfiable {
        requested_secs: min_ttl.as_secs() as i64,
        lifetime_secs: lifetime.as_secs() as i64,
    }
}

/// The one fetch for a key: the shared store first (another replica, or this one before a
/// restart, may hold a fresh token), then the provider — client credentials for the
/// connection itself, the refresh token for an end user's grant.
async fn fetch(inner: &Inner, key: TokenKey, min_ttl: Duration) -> Result<Arc<CachedToken>> {
    // Read before the connection: a change after this point fences our insert.
    let epoch = inner.cache.epoch(&key.connection());
    let conn = load_connection(inner, &key).await?;

    if key.subject.is_client()
        && let Some(ct) = &conn.api_key
    {
        let api_key = inner
            .envelope
            .decrypt_string(connection_aad(conn.id, "api_key"), ct)
            .await?;
        let token = Arc::new(CachedToken {
            access_token: api_key,
            expires_at: None,
            scopes: Vec::new(),
            issued_lifetime: None,
            fresh_from_provider: false,
        });
        inner.cache.insert_if_current(key, token.clone(), epoch);
        return Ok(token);
    }

    let settings: ConnectionSettings = serde_json::from_str(&conn.settings)
        .map_err(|e| StoreError::Database(format!("connection {} settings: {e}", conn.id)))?;
    let effective =
        settings
            .resolve(inner.config.policy)
            .map_err(|e| Error::ConnectionInvalid {
                tenant: key.tenant.to_string(),
                provider: key.provider.to_string(),
                reason: e.to_string(),
            })?;

    let grant = if key.subject.is_client() {
        None
    } else {
        let grant = inner
            .store
            .get_grant(conn.id, key.subject.as_str())
            .await?
            .ok_or_else(|| Error::GrantNotFound {
                tenant: key.tenant.to_string(),
                provider: key.provider.to_string(),
                subject: key.subject.to_string(),
            })?;
        if grant.status == GrantStatus::ReauthorizationRequired {
            return Err(reauthorize(
                &key,
                "the provider refused its refresh token earlier",
            ));
        }
        Some(grant)
    };

    if let Some(token) = stored_token(inner, &conn, &key, min_ttl).await? {
        inner.cache.insert_if_current(key, token.clone(), epoch);
        tracing::debug!("token loaded from the shared store");
        return Ok(token);
    }

    let missing = |what| Error::MissingCredential {
        tenant: key.tenant.to_string(),
        provider: key.provider.to_string(),
        missing: what,
    };
    let token_url = effective
        .token_url
        .as_ref()
        .ok_or_else(|| missing("token_url"))?;
    let secret_ct = conn
        .client_secret
        .as_ref()
        .ok_or_else(|| missing("client_secret"))?;
    let client_secret: SecretString = inner
        .envelope
        .decrypt_string(connection_aad(conn.id, "client_secret"), secret_ct)
        .await?;

    let Some(grant) = grant else {
        let response = inner
            .client
            .fetch(&TokenRequest {
                token_url,
                credentials: ClientCredentials {
                    auth: effective.client_auth,
                    client_id: &effective.client_id,
                    client_secret: &client_secret,
                },
                grant: Grant::ClientCredentials,
                scopes: &effective.scopes,
                audience: (effective.always_send_audience || !effective.audience.is_empty())
                    .then_some(effective.audience.as_str()),
                extra_params: &effective.extra_params,
                default_expires_in: effective.default_expires_in,
            })
            .await?;
        let (record, token) =
            record_token(&inner.envelope, inner.clock.as_ref(), &conn, &key, response).await?;
        // The token is good whether or not it could be shared: serve it either way.
        if let Err(e) = inner.store.save_token(&record).await {
            tracing::warn!(error = %e, "could not store the fetched token; serving it from memory only");
        }
        inner.cache.insert_if_current(key, token.clone(), epoch);
        tracing::info!("fetched a token from the provider");
        return Ok(token);
    };

    // An end user's grant: refresh. Never retried after an unknown outcome (the token
    // client knows), never looped on invalid_grant.
    let Some(rt_ct) = &grant.refresh_token else {
        return Err(reauthorize(
            &key,
            "the provider issued no refresh token and the access token expired",
        ));
    };
    let refresh_token = inner
        .envelope
        .decrypt_string(grant_aad(grant.id), rt_ct)
        .await?;
    let response = inner
        .client
        .fetch(&TokenRequest {
            token_url,
            credentials: ClientCredentials {
                auth: effective.user_grant_client_auth,
                client_id: &effective.client_id,
                client_secret: &client_secret,
            },
            grant: Grant::RefreshToken(&refresh_token),
            scopes: &grant.scopes,
            audience: None,
            extra_params: &effective.extra_params,
            default_expires_in: effective.default_expires_in,
        })
        .await;
    let response = match response {
        Err(ProviderError::OAuth { code, .. }) if code == "invalid_grant" => {
            inner
                .store
                .set_grant_status(
                    grant.id,
                    GrantStatus::ReauthorizationRequired,
                    inner.clock.now(),
                )
                .await?;
            inner.cache.remove(&key);
            tracing::warn!(subject = %key.subject, "refresh token rejected (invalid_grant): the end user must authorize again");
            return Err(reauthorize(
                &key,
                "the provider rejected the refresh token (invalid_grant)",
            ));
        }
        other => other?,
    };
    let rotated = match &response.refresh_token {
        Some(rt) => Some(
            inner
                .envelope
                .encrypt(grant_aad(grant.id), rt.expose_secret().as_bytes())
                .await?,
        ),
        None => None,
    };
    let (record, token) =
        record_token(&inner.envelope, inner.clock.as_ref(), &conn, &key, response).await?;
    // The provider may have rotated the refresh token: it is committed together with the
    // access token before anyone sees the access token, or the grant would be lost.
    inner
        .store
        .save_refreshed(grant.id, rotated.as_deref(), &record)
        .await?;
    inner.cache.insert_if_current(key, token.clone(), epoch);
    tracing::info!(rotated = rotated.is_some(), "refreshed an end-user token");
    Ok(token)
}

fn reauthorize(key: &TokenKey, detail: &'static str) -> Error {
    Error::ReauthorizationRequired {
        tenant: key.tenant.to_string(),
        provider: key.provider.to_string(),
        subject: key.subject.to_string(),
        detail,
    }
}

/// The shared store's token, if it belongs to the current connection version and lives
/// at least `min_ttl` longer.
async fn stored_token(
    inner: &Inner,
    conn: &ConnectionRecord,
    key: &TokenKey,
    min_ttl: Duration,
) -> Result<Option<Arc<CachedToken>>> {
    let Some(stored) = inner
        .store
        .load_token(conn.id, key.subject.as_str())
        .await?
    else {
        return Ok(None);
    };
    if stored.connection_version != conn.version || stored.expires_at - inner.clock.now() < min_ttl
    {
        return Ok(None);
    }
    let access_token = inner
        .envelope
        .decrypt_string(token_aad(conn, key), &stored.access_token)
        .await?;
    Ok(Some(Arc::new(CachedToken {
        access_token,
        expires_at: Some(stored.expires_at),
        scopes: stored.scopes,
        issued_lifetime: (stored.expires_at - stored.fetched_at).try_into().ok(),
        fresh_from_provider: false,
    })))
}

/// A provider's answer as a storable record (encrypted) and a cacheable token. Shared with
/// the authorization-code exchange (`grants`).
pub(crate) async fn record_token(
    envelope: &Envelope,
    clock: &dyn Clock,
    conn: &ConnectionRecord,
    key: &TokenKey,
    response: crate::oauth::TokenResponse,
) -> Result<(TokenRecord, Arc<CachedToken>)> {
    // Microsecond precision, as both databases store it: memory and store then agree.
    let now = clock.now();
    let fetched_at = now
        .replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let expires_at = fetched_at + response.expires_in;
    let plaintext = response.access_token.expose_secret().as_bytes();
    let record = TokenRecord {
        connection_id: conn.id,
        subject: key.subject.as_str().to_owned(),
        connection_version: conn.version,
        access_token: envelope.encrypt(token_aad(conn, key), plaintext).await?,
        token_sha256: Sha256::digest(plaintext).to_vec(),
        scopes: response.scopes.clone(),
        expires_at,
        fetched_at,
    };
    let token = Arc::new(CachedToken {
        access_token: response.access_token,
        expires_at: Some(expires_at),
        scopes: response.scopes,
        issued_lifetime: Some(response.expires_in),
        fresh_from_provider: true,
    });
    Ok((record, token))
}

/// The connection, or which of tenant and connection is missing.
pub(crate) async fn load_connection_of(
    store: &dyn Store,
    key: &crate::ids::ConnectionKey,
) -> Result<ConnectionRecord> {
    match store.get_connection(key).await? {
        Some(c) => Ok(c),
        None => Err(if store.get_tenant(&key.tenant).await?.is_none() {
            Error::TenantNotFound(key.tenant.to_string())
        } else {
            Error::ConnectionNotFound {
                tenant: key.tenant.to_string(),
                provider: key.provider.to_string(),
            }
        }),
    }
}

async fn load_connection(inner: &Inner, key: &TokenKey) -> Result<ConnectionRecord> {
    load_connection_of(inner.store.as_ref(), &key.connection()).await
}

/// Connection secrets are bound to the connection's immutable row id and their column.
pub(crate) fn connection_aad(id: uuid::Uuid, column: &'static str) -> Aad<'static> {
    Aad {
        table: CONNECTIONS,
        column,
        row: id,
        qualifier: "",
    }
}

/// Token rows are keyed by (connection id, subject); both are immutable, so both are bound.
/// A grant's refresh token is bound to the grant's immutable row id.
pub(crate) fn grant_aad(id: uuid::Uuid) -> Aad<'static> {
    Aad {
        table: "grants",
        column: "refresh_token",
        row: id,
        qualifier: "",
    }
}

pub(crate) fn token_aad<'a>(conn: &ConnectionRecord, key: &'a TokenKey) -> Aad<'a> {
    Aad {
        table: TOKENS,
        column: "access_token",
        row: conn.id,
        qualifier: key.subject.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;
    use secrecy::{ExposeSecret, SecretString};
    use time::macros::datetime;

    use crate::{
        cache::CachedToken,
        clock::{Clock, ManualClock},
        error::Error,
        ids::{ProviderId, Subject, TenantId, TokenKey},
        testing::warm_vendor,
    };

    #[test]
    fn a_hit_answers_without_awaiting_or_touching_the_store() {
        let key = TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse("p").unwrap(),
            subject: Subject::client(),
        };
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let token = Arc::new(CachedToken {
            access_token: SecretString::from("t"),
            expires_at: Some(clock.now() + time::Duration::seconds(100)),
            scopes: vec![],
            issued_lifetime: Some(std::time::Duration::from_secs(100)),
            fresh_from_provider: true,
        });
        let vendor = warm_vendor(&key, token, Arc::new(clock.clone()));
        // Polled once: Ready. The store behind it panics on any use.
        let got = vendor
            .get_token(key.clone(), None, None)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(got.access_token.expose_secret(), "t");
        // A min_ttl beyond the provider's whole token lifetime: refused without a fetch.
        let err = vendor
            .get_token(key.clone(), Some(std::time::Duration::from_secs(200)), None)
            .now_or_never()
            .unwrap()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::MinTtlUnsatisfiable {
                requested_secs: 200,
                lifetime_secs: 100
            }
        ));
    }
}
