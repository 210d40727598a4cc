//! Getting a token when memory has none fresh enough: the one place the refresh logic lives.
//!
//! 1. The shared store: another replica (or this one before a restart) may hold a fresh one.
//! 2. A brief negative cache: a definitive provider error met moments ago (by any replica)
//!    is answered again without asking the provider.
//! 3. The key's refresh lease (one holder fleet-wide, fenced by a generation, on the
//!    database's clock). Without it: wait for the holder's `LeaseEnded` (or poll), re-check.
//! 4. Under the lease: re-read the store (someone may just have finished), read the grant,
//!    call the provider, then write fenced and tell the others (in the same transaction).
//!
//! Leases are short and alive: the holder renews its lease every `lease_ttl / 3` while it
//! works (a heartbeat task), so a holder that dies — `kill -9`, a lost node — stops renewing
//! and its lease lapses within `lease_ttl`; a waiter then takes it over and is served.
//!
//! Refresh tokens need more care than client credentials: re-sending one whose outcome is
//! unknown can make the provider revoke the grant (RFC 9700 §4.14.2). So a refresh is sent
//! only by the lease holder, after recording "attempt in flight" under the lease's
//! generation with the attempt's own deadline in database time (the request timeout plus a
//! margin). Nobody can take the lease while that deadline runs, so the attempt is never
//! in flight twice. Its result is written while that attempt is still the recorded one,
//! even after a takeover — the provider has already rotated the token — and only while the
//! grant's version is the one read under the lease, so a revoked or re-authorized grant is
//! never overwritten by the old chain. A holder that finds an attempt nobody finished (its
//! replica died) after that deadline cannot know whether the refresh token was consumed:
//! it tries it once; `invalid_grant` then marks the grant for re-authorization, which is
//! never retried in a loop.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::{
    cache::{CachedToken, Epoch, TokenCache},
    clock::Clock,
    config::VendorConfig,
    connection::{
        Effective, client_credentials_request, effective_of, load_connection_of, missing,
        user_grant_request,
    },
    crypto::Envelope,
    error::{Error, Result},
    events::{Notifier, Waiters},
    ids::TokenKey,
    oauth::{Grant, ProviderError, TokenClient, TokenResponse},
    secrets::{client_secret_of, connection_aad, grant_aad, token_aad, token_record},
    store::{
        ConnectionRecord, GrantRecord, GrantStatus, GrantWrite, Lease, LeaseEnd, LeaseWrite, Store,
        TokenRecord,
    },
};

/// Everything a fetch needs: built by `vend::Vendor`, shared with the fetch tasks it spawns
/// (so a fetch can outlive the caller that started it).
pub(crate) struct Refresher {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) client: TokenClient,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: VendorConfig,
    pub(crate) notifier: Notifier,
    pub(crate) waiters: Arc<Waiters>,
}

/// Margin kept between the end of a refresh attempt's deadline and the end of its request.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

pub(crate) async fn fetch(
    inner: &Refresher,
    key: TokenKey,
    min_ttl: Duration,
) -> Result<Arc<CachedToken>> {
    // Read before the connection: a change after this point fences our cache insert.
    let epoch = inner.cache.epoch(&key.connection());
    let conn = load_connection_of(inner.store.as_ref(), &key.connection()).await?;

    if key.subject.is_client()
        && let Some(ct) = &conn.api_key
    {
        let api_key = inner
            .envelope
            .decrypt_string(connection_aad(conn.id, "api_key"), ct)
            .await?;
        let token = Arc::new(CachedToken::new(
            api_key,
            None,
            Vec::new(),
            None,
            false,
            None,
        ));
        inner.cache.insert_if_current(key, token.clone(), epoch);
        return Ok(token);
    }

    let effective = effective_of(&conn, inner.config.policy)?;
    tracing::Span::current().record("template", effective.template);
    if !key.subject.is_client() {
        // A cheap early answer for an unknown or dead grant (and no lease row for a subject
        // that does not exist). The grant used for the refresh is read again under the lease.
        active_grant(inner.store.as_ref(), &conn, &key).await?;
    }

    let give_up = tokio::time::Instant::now() + inner.config.max_wait;
    let wake = inner.waiters.handle(&key);
    let mut waited = LeaseWait {
        since: None,
        observer: inner.client.observer(),
    };
    loop {
        // Interest first, then the checks: a lease ending in between still wakes us.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(token) = stored_token(inner, &conn, &key, min_ttl).await? {
            inner.cache.insert_if_current(key, token.clone(), epoch);
            tracing::debug!("token loaded from the shared store");
            return Ok(token);
        }
        if let Some(failure) = inner
            .store
            .recent_failure(conn.id, key.subject.as_str())
            .await?
            && failure.connection_version == conn.version
            && let Ok(e) = serde_json::from_str::<ProviderError>(&failure.error)
        {
            tracing::debug!("answering a recent definitive provider error again");
            return Err(e.into());
        }
        let lease = inner
            .store
            .try_lease(
                conn.id,
                key.subject.as_str(),
                inner.notifier.replica(),
                inner.config.lease_ttl,
            )
            .await?;
        if let Some(lease) = lease {
            // The wait (if any) ends here, not after our own provider call.
            waited.end();
            let held = Held {
                inner,
                key: &key,
                conn: &conn,
                lease,
            };
            let span =
                tracing::info_span!("refresh_lease", lease.generation = held.lease.generation);
            match held
                .run(&effective, epoch, min_ttl)
                .instrument(span)
                .await?
            {
                Some(token) => return Ok(token),
                // The grant changed under the refresh: look again (its new token, or the
                // answer that it is gone).
                None => continue,
            }
        }
        waited.since.get_or_insert_with(tokio::time::Instant::now);
        if tokio::time::Instant::now() >= give_up {
            return Err(ProviderError::Unavailable {
                reason: "another replica holds the refresh lease and has not finished".into(),
                retry_after: Some(Duration::from_secs(1)),
                never_sent: true,
            }
            .into());
        }
        // Woken by the holder's LeaseEnded, or poll: a notification can be lost while the
        // listener reconnects, and a dead holder sends none (its lease lapses instead).
        let _ = tokio::time::timeout(inner.config.poll_interval, woken).await;
    }
}

/// Reports how long a fetch waited for another replica's lease, however the wait ended.
struct LeaseWait<'a> {
    since: Option<tokio::time::Instant>,
    observer: &'a dyn crate::observe::Observer,
}

impl LeaseWait<'_> {
    fn end(&mut self) {
        if let Some(since) = self.since.take() {
            self.observer.lease_wait(since.elapsed());
        }
    }
}

impl Drop for LeaseWait<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

async fn active_grant(
    store: &dyn Store,
    conn: &ConnectionRecord,
    key: &TokenKey,
) -> Result<GrantRecord> {
    let grant = store
        .get_grant(conn.id, key.subject.as_str())
        .await?
        .ok_or_else(|| Error::GrantNotFound {
            tenant: key.tenant.to_string(),
            provider: key.provider.to_string(),
            subject: key.subject.to_string(),
        })?;
    if grant.status == GrantStatus::ReauthorizationRequired {
        return Err(reauthorize(
            key,
            "the provider refused its refresh token earlier",
        ));
    }
    Ok(grant)
}

/// What the lease holder found.
enum Found {
    /// Another holder finished just before we took the lease.
    Stored(Arc<CachedToken>),
    Fetched(Box<Fetched>),
}

struct Fetched {
    record: TokenRecord,
    token: Arc<CachedToken>,
    /// For an end user's grant only.
    grant: Option<Refreshed>,
}

/// An end user's grant after a refresh: as read under the lease (its version fences the
/// write), and the rotated refresh token (encrypted) if the provider sent one.
struct Refreshed {
    grant: GrantRecord,
    rotated_refresh_token: Option<Vec<u8>>,
}

/// How a failed provider call is remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Classified {
    /// A definitive answer every replica may repeat for a while (negative cache).
    remember: bool,
    /// Whether we know what the request did at the provider. Unknown (a timeout, a 5xx, an
    /// unreadable 2xx after a refresh) leaves the refresh attempt recorded as unfinished.
    outcome_known: bool,
}

fn classify(e: &Error, refresh_grant: bool) -> Classified {
    match e {
        Error::Provider(p) => match p {
            ProviderError::OAuth { .. }
            | ProviderError::Rejected { .. }
            | ProviderError::Refused { .. } => Classified {
                remember: true,
                outcome_known: true,
            },
            // A 2xx we could not read may still have rotated the refresh token.
            ProviderError::BadResponse { .. } => Classified {
                remember: true,
                outcome_known: !refresh_grant,
            },
            // A timeout or 5xx may have consumed a refresh token: outcome unknown.
            ProviderError::Unavailable { never_sent, .. } => Classified {
                remember: false,
                outcome_known: !refresh_grant || *never_sent,
            },
        },
        _ => Classified {
            remember: false,
            outcome_known: true,
        },
    }
}

/// Renews a lease until dropped. A task of its own, so the lease stays alive while the
/// holder awaits the provider, and dies with the holder: dropping the guard (the fetch
/// finished, failed, panicked or was cancelled) aborts it, and a dead process renews
/// nothing, so its lease lapses within `lease_ttl`.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(inner: &Refresher, conn: uuid::Uuid, subject: &str, generation: i64) -> Self {
        let store = inner.store.clone();
        let ttl = inner.config.lease_ttl;
        let every = inner.config.heartbeat_interval();
        let subject = subject.to_owned();
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the lease was just taken
            loop {
                tick.tick().await;
                match store.renew_lease(conn, &subject, generation, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            "lost the refresh lease while working (another replica took it over); our result will only be written if it is still wanted"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the refresh lease; retrying")
                    }
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lease this replica holds, and what it is for.
struct Held<'a> {
    inner: &'a Refresher,
    key: &'a TokenKey,
    conn: &'a ConnectionRecord,
    lease: Lease,
}

impl Held<'_> {
    /// Fetches under the lease and ends it. `None`: the grant was revoked or re-authorized
    /// while we refreshed it; nothing was written.
    async fn run(
        &self,
        effective: &Effective,
        epoch: Epoch,
        min_ttl: Duration,
    ) -> Result<Option<Arc<CachedToken>>> {
        let (inner, key, conn) = (self.inner, self.key, self.conn);
        let subject = key.subject.as_str();
        let generation = self.lease.generation;
        let heartbeat = Heartbeat::start(inner, conn.id, subject, generation);
        let result = async {
            // Someone may have finished just before we took the lease.
            if let Some(token) = stored_token(inner, conn, key, min_ttl).await? {
                return Ok(Found::Stored(token));
            }
            // Read under the lease: another replica may have rotated the refresh token
            // since we first looked, and the consumed one must never be sent.
            let grant = match key.subject.is_client() {
                true => None,
                false => Some(active_grant(inner.store.as_ref(), conn, key).await?),
            };
            self.call_provider(effective, grant)
                .await
                .map(|f| Found::Fetched(Box::new(f)))
        }
        .await;
        drop(heartbeat);
        let ended = inner.notifier.lease_ended(key);

        let token = match result {
            Ok(Found::Stored(token)) => {
                inner
                    .store
                    .finish_lease(conn.id, subject, generation, LeaseEnd::Released, &ended)
                    .await?;
                token
            }
            Ok(Found::Fetched(fetched)) => {
                let grant = fetched.grant.as_ref().map(|r| GrantWrite {
                    id: r.grant.id,
                    version: r.grant.version,
                    refresh_token: r.rotated_refresh_token.as_deref(),
                });
                let end = LeaseEnd::Token {
                    token: &fetched.record,
                    grant,
                };
                match inner
                    .store
                    .finish_lease(conn.id, subject, generation, end, &ended)
                    .await
                {
                    Ok(LeaseWrite::Written) => {}
                    Ok(LeaseWrite::Fenced) if grant.is_some_and(|g| g.refresh_token.is_some()) => {
                        tracing::error!(
                            "a rotated refresh token arrived after its attempt deadline and another replica already resolved the attempt; it is lost, and the end user may have to authorize again"
                        );
                    }
                    Ok(LeaseWrite::Fenced) => tracing::warn!(
                        "the refresh lease was taken over while we fetched; the newer holder's token stays stored"
                    ),
                    Ok(LeaseWrite::GrantChanged) => {
                        tracing::info!(
                            "the grant was revoked or re-authorized during its refresh; the refreshed token is discarded"
                        );
                        return Ok(None);
                    }
                    // A rotated refresh token that could not be stored would be lost with the
                    // grant: do not hand out its access token as if all were well.
                    Err(e) if grant.is_some() => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store the fetched token; serving it from memory only")
                    }
                }
                fetched.token
            }
            Err(e) => {
                let class = classify(&e, !key.subject.is_client());
                let error = match &e {
                    Error::Provider(p) => serde_json::to_string(p).unwrap_or_default(),
                    _ => String::new(),
                };
                let failed = LeaseEnd::Failed {
                    error: &error,
                    class: e.class(),
                    connection_version: conn.version,
                    remember_for: (class.remember && !error.is_empty())
                        .then_some(inner.config.negative_ttl),
                    outcome_known: class.outcome_known,
                };
                if let Err(store_err) = inner
                    .store
                    .finish_lease(conn.id, subject, generation, failed, &ended)
                    .await
                {
                    tracing::warn!(error = %store_err, "could not record the failed refresh");
                }
                return Err(e);
            }
        };
        inner
            .cache
            .insert_if_current(key.clone(), token.clone(), epoch);
        Ok(Some(token))
    }

    async fn call_provider(
        &self,
        effective: &Effective,
        grant: Option<GrantRecord>,
    ) -> Result<Fetched> {
        let (inner, key, conn) = (self.inner, self.key, self.conn);
        let token_url = effective
            .token_url
            .as_ref()
            .ok_or_else(|| missing(conn, "token_url"))?;
        let client_secret = client_secret_of(&inner.envelope, conn).await?;

        let Some(grant) = grant else {
            // The provider's clock starts when it receives the request: count from before.
            let sent_at = inner.clock.now();
            let response = inner
                .client
                .fetch(&client_credentials_request(
                    effective,
                    token_url,
                    &client_secret,
                ))
                .await?;
            let (record, token) = record_token(inner, conn, key, sent_at, response).await?;
            tracing::info!("fetched a token from the provider");
            return Ok(Fetched {
                record,
                token,
                grant: None,
            });
        };

        let Some(rt_ct) = &grant.refresh_token else {
            return Err(reauthorize(
                key,
                "the provider issued no refresh token and the access token expired",
            ));
        };
        if self.lease.unfinished_attempt {
            tracing::warn!(subject = %key.subject, "an earlier refresh of this grant never finished; trying the stored refresh token once");
        }
        // Everything that can be slow happens before the attempt is recorded, so the
        // attempt's deadline covers only the request.
        let refresh_token = inner
            .envelope
            .decrypt_string(grant_aad(grant.id), rt_ct)
            .await?;
        // Record the attempt with its own deadline, then send only if the deadline still
        // covers the whole request: the time the mark itself took is subtracted.
        let marking = tokio::time::Instant::now();
        let Some(mark) = inner
            .store
            .mark_refresh_attempt(
                conn.id,
                key.subject.as_str(),
                self.lease,
                inner.config.attempt_ttl(),
            )
            .await?
        else {
            return Err(ProviderError::Unavailable {
                reason: "the refresh lease was lost, or an earlier attempt finished, before the request could be sent".into(),
                retry_after: Some(Duration::from_secs(1)),
                never_sent: true,
            }
            .into());
        };
        let left = mark.deadline_in.saturating_sub(marking.elapsed());
        if left < inner.config.request_timeout + LEASE_MARGIN {
            return Err(ProviderError::Unavailable {
                reason: "the database answered too slowly to send the refresh within its deadline"
                    .into(),
                retry_after: Some(Duration::from_secs(1)),
                never_sent: true,
            }
            .into());
        }
        let sent_at = inner.clock.now();
        let request = user_grant_request(
            effective,
            token_url,
            &client_secret,
            Grant::RefreshToken(&refresh_token),
            &grant.scopes,
        );
        // Bounded by the attempt's deadline (less a margin) as well as by the request
        // timeout: whatever the client does before sending (a proxy's target check
        // resolves DNS), the request must be over before another replica may resolve it.
        let response = match tokio::time::timeout(
            left.saturating_sub(LEASE_MARGIN),
            inner.client.fetch(&request),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Unavailable {
                reason: "the refresh request did not finish within its attempt's deadline".into(),
                retry_after: Some(Duration::from_secs(1)),
                never_sent: false,
            }),
        };
        let response = match response {
            Err(ProviderError::OAuth { code, .. }) if code == "invalid_grant" => {
                let marked = inner
                    .store
                    .set_grant_status(
                        grant.id,
                        grant.version,
                        GrantStatus::ReauthorizationRequired,
                        inner.clock.now(),
                    )
                    .await?;
                if !marked {
                    // The end user authorized again meanwhile: the refused token was the old
                    // chain's, and the new grant is fine.
                    return Err(Error::Aborted(
                        "the grant was re-authorized while its old refresh token was refused",
                    ));
                }
                inner.cache.remove(key);
                tracing::warn!(subject = %key.subject, "refresh token rejected (invalid_grant): the end user must authorize again");
                return Err(reauthorize(
                    key,
                    "the provider rejected the refresh token (invalid_grant)",
                ));
            }
            other => other?,
        };
        let rotated_refresh_token = match &response.refresh_token {
            Some(rt) => Some(
                inner
                    .envelope
                    .encrypt(grant_aad(grant.id), rt.expose_secret().as_bytes())
                    .await?,
            ),
            None => None,
        };
        let (record, token) = record_token(inner, conn, key, sent_at, response).await?;
        tracing::info!(
            rotated = rotated_refresh_token.is_some(),
            "refreshed an end-user token"
        );
        Ok(Fetched {
            record,
            token,
            grant: Some(Refreshed {
                grant,
                rotated_refresh_token,
            }),
        })
    }
}

fn reauthorize(key: &TokenKey, detail: &'static str) -> Error {
    Error::ReauthorizationRequired {
        tenant: key.tenant.to_string(),
        provider: key.provider.to_string(),
        subject: key.subject.to_string(),
        detail,
    }
}

/// After another replica renewed `key`: its new token from the store into the cache (so
/// this replica's watchers get it), if it outlives the cached one. Failures are only
/// logged: the watchers then renew it themselves before their `min_ttl`.
pub(crate) async fn reload_stored(inner: &Refresher, key: TokenKey) {
    let epoch = inner.cache.epoch(&key.connection());
    let loaded = async {
        let conn = load_connection_of(inner.store.as_ref(), &key.connection()).await?;
        stored_token(inner, &conn, &key, Duration::ZERO).await
    }
    .await;
    match loaded {
        Ok(Some(token)) => {
            let newer = inner
                .cache
                .get(&key)
                .is_none_or(|cached| cached.expires_at < token.expires_at);
            if newer {
                inner.cache.insert_if_current(key, token, epoch);
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(tenant = %key.tenant, provider = %key.provider, error = %e, "could not load the token another replica renewed; watchers here renew it themselves");
        }
    }
}

/// The shared store's token, if it belongs to the current connection version and lives
/// at least `min_ttl` longer.
async fn stored_token(
    inner: &Refresher,
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
    let lifetime: Option<Duration> = (stored.expires_at - stored.fetched_at).try_into().ok();
    Ok(Some(Arc::new(CachedToken::new(
        access_token,
        Some(stored.expires_at),
        stored.scopes,
        lifetime,
        false,
        lifetime.map(|l| inner.config.refresh_point(stored.fetched_at, l)),
    ))))
}

async fn record_token(
    inner: &Refresher,
    conn: &ConnectionRecord,
    key: &TokenKey,
    sent_at: OffsetDateTime,
    response: TokenResponse,
) -> Result<(TokenRecord, Arc<CachedToken>)> {
    let (record, expires_in, response) =
        token_record(&inner.envelope, sent_at, conn, key, response).await?;
    let token = Arc::new(CachedToken::new(
        response.access_token,
        Some(record.expires_at),
        response.scopes,
        Some(expires_in),
        true,
        Some(inner.config.refresh_point(record.fetched_at, expires_in)),
    ));
    Ok((record, token))
}
