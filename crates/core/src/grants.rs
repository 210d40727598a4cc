//! End users' authorization-code grants: starting a flow (PKCE S256 + state), completing it
//! (the code exchange), listing, and revoking at the provider (RFC 7009).
//!
//! Pending flows live in the store, encrypted, because the browser's callback may reach
//! another replica than the one that started the flow. A state is used once: the store
//! hands a pending flow out exactly once (`take_pending_authorization`).

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

use crate::{
    Deps,
    cache::TokenCache,
    clock::Clock,
    connection::{
        Effective, check_scopes, effective_of, load_connection_of, missing, user_grant_credentials,
        user_grant_request,
    },
    crypto::{Aad, Envelope},
    endpoint::EndpointPolicy,
    error::{Error, Result},
    events::Notifier,
    ids::{ConnectionKey, ProviderId, Subject, TenantId, TokenKey},
    input::InvalidInput,
    oauth::{Grant, TokenClient, pkce},
    paging::{Page, PageRequest},
    secrets::{client_secret_of, grant_aad, token_record},
    store::{ConnectionRecord, GrantRecord, GrantStatus, PendingAuthorization, Store, StoreError},
};

/// The callback path on the HTTP port, appended to `TOKENVEND_PUBLIC_URL`.
pub const CALLBACK_PATH: &str = "/oauth/callback";

#[derive(Clone, Debug)]
pub struct GrantsConfig {
    /// Where browsers reach tokenvend's HTTP port.
    pub public_url: Option<Url>,
    /// How long a started flow may take (login at the provider included).
    pub authorization_ttl: Duration,
    pub policy: EndpointPolicy,
}

/// What `StartAuthorization` answers.
pub struct Started {
    pub authorization_url: Url,
    pub state: SecretString,
    pub expires_at: OffsetDateTime,
    pub redirect_uri: String,
}

/// A grant as administrators see it: never a token.
#[derive(Clone, Debug)]
pub struct GrantView {
    pub tenant: TenantId,
    pub provider: ProviderId,
    pub record: GrantRecord,
}

/// What a revocation did.
#[derive(Clone, Debug, Default)]
pub struct Revoked {
    pub at_provider: usize,
    pub locally: usize,
    pub warning: String,
}

pub struct Grants {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    cache: Arc<TokenCache>,
    client: TokenClient,
    clock: Arc<dyn Clock>,
    config: GrantsConfig,
    notifier: Notifier,
}

fn pending_aad(id: Uuid) -> Aad<'static> {
    Aad {
        table: "pending_authorizations",
        column: "code_verifier",
        row: id,
        qualifier: "",
    }
}

impl Grants {
    pub fn new(deps: Deps, config: GrantsConfig) -> Self {
        Self {
            store: deps.store,
            envelope: deps.envelope,
            cache: deps.cache,
            client: deps.client,
            clock: deps.clock,
            config,
            notifier: deps.notifier,
        }
    }

    fn effective(&self, conn: &ConnectionRecord) -> Result<Effective> {
        effective_of(conn, self.config.policy)
    }

    pub async fn start(
        &self,
        key: &ConnectionKey,
        subject: Subject,
        scopes: Vec<String>,
    ) -> Result<Started> {
        if subject.is_client() {
            return Err(InvalidInput::new(
                "subject",
                "is required: the end user the grant is for (as GetToken will name it)",
            )
            .into());
        }
        check_scopes(&scopes)?;
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        let effective = self.effective(&conn)?;
        let authorize_url = effective
            .authorize_url
            .clone()
            .ok_or_else(|| missing(&conn, "authorize_url"))?;
        effective
            .token_url
            .as_ref()
            .ok_or_else(|| missing(&conn, "token_url"))?;
        client_secret_of(&self.envelope, &conn).await?;
        let redirect_uri = match (&effective.redirect_uri, &self.config.public_url) {
            (Some(u), _) => u.to_string(),
            (None, Some(public)) => public
                .join(CALLBACK_PATH)
                .map_err(|e| {
                    Error::Internal(format!(
                        "TOKENVEND_PUBLIC_URL cannot be joined with the callback path: {e}"
                    ))
                })?
                .to_string(),
            (None, None) => {
                return Err(missing(
                    &conn,
                    "redirect_uri (set TOKENVEND_PUBLIC_URL or the connection's redirect_uri)",
                ));
            }
        };
        let scopes = if scopes.is_empty() {
            effective.scopes.clone()
        } else {
            scopes
        };

        let state = pkce::random_token();
        let verifier = pkce::random_token();
        let now = self.clock.now();
        let id = Uuid::now_v7();
        let expires_at = now + self.config.authorization_ttl;
        let pending = PendingAuthorization {
            state_sha256: Sha256::digest(state.expose_secret().as_bytes()).to_vec(),
            id,
            connection_id: conn.id,
            subject: subject.to_string(),
            code_verifier: self
                .envelope
                .encrypt(pending_aad(id), verifier.expose_secret().as_bytes())
                .await?,
            redirect_uri: redirect_uri.clone(),
            scopes: scopes.clone(),
            expires_at,
            created_at: now,
        };
        self.store.insert_pending_authorization(&pending).await?;
        // Housekeeping on the way: flows abandoned in the browser.
        if let Err(e) = self.store.delete_expired_authorizations(now).await {
            tracing::warn!(error = %e, "could not delete expired authorizations");
        }

        let mut url = authorize_url;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &effective.client_id)
                .append_pair("redirect_uri", &redirect_uri);
            if !scopes.is_empty() {
                q.append_pair("scope", &scopes.join(" "));
            }
            q.append_pair("state", state.expose_secret())
                .append_pair("code_challenge", &pkce::challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
        }
        tracing::info!(tenant = %key.tenant, provider = %key.provider, subject = %subject, "authorization started");
        Ok(Started {
            authorization_url: url,
            state,
            expires_at,
            redirect_uri,
        })
    }

    /// Takes the flow for `state` (once) — for a callback that reports an error.
    pub async fn abandon(&self, state: &str) -> Result<()> {
        self.take(state).await.map(|_| ())
    }

    async fn take(&self, state: &str) -> Result<PendingAuthorization> {
        if state.is_empty() || state.len() > 512 {
            return Err(InvalidInput::new("state", "is required (at most 512 characters)").into());
        }
        let pending = self
            .store
            .take_pending_authorization(&Sha256::digest(state.as_bytes()))
            .await?
            .ok_or_else(|| {
                InvalidInput::new(
                    "state",
                    "is unknown or was already used; start the authorization again",
                )
            })?;
        if pending.expires_at < self.clock.now() {
            return Err(
                InvalidInput::new("state", "has expired; start the authorization again").into(),
            );
        }
        Ok(pending)
    }

    /// Exchanges the code for tokens and stores the grant. Nothing is stored if the
    /// exchange fails; the state is used up either way.
    pub async fn complete(&self, state: &str, code: &str) -> Result<GrantView> {
        if code.is_empty() || code.len() > 4096 {
            return Err(InvalidInput::new("code", "is required (at most 4096 bytes)").into());
        }
        let pending = self.take(state).await?;
        let conn = self
            .store
            .get_connection_by_id(pending.connection_id)
            .await?
            .ok_or_else(|| {
                InvalidInput::new("state", "belongs to a connection that was deleted")
            })?;
        let effective = self.effective(&conn)?;
        let token_url = effective
            .token_url
            .as_ref()
            .ok_or_else(|| missing(&conn, "token_url"))?;
        let client_secret = client_secret_of(&self.envelope, &conn).await?;
        let verifier = self
            .envelope
            .decrypt_string(pending_aad(pending.id), &pending.code_verifier)
            .await?;
        // The provider's clock for `expires_in` starts when it receives the request.
        let sent_at = self.clock.now();
        let response = self
            .client
            .fetch(&user_grant_request(
                &effective,
                token_url,
                &client_secret,
                Grant::AuthorizationCode {
                    code,
                    code_verifier: &verifier,
                    redirect_uri: &pending.redirect_uri,
                },
                &pending.scopes,
            ))
            .await?;

        let subject = Subject::parse(pending.subject.clone())?;
        let key = TokenKey {
            tenant: conn.tenant.clone(),
            provider: conn.provider.clone(),
            subject,
        };
        let existing = self.store.get_grant(conn.id, &pending.subject).await?;
        let now = self.clock.now();
        let id = existing.as_ref().map(|g| g.id).unwrap_or_else(Uuid::now_v7);
        let refresh_token = match &response.refresh_token {
            Some(rt) => Some(
                self.envelope
                    .encrypt(grant_aad(id), rt.expose_secret().as_bytes())
                    .await?,
            ),
            None => None,
        };
        let scopes = response.scopes.clone();
        let (token, _, _) = token_record(&self.envelope, sent_at, &conn, &key, response).await?;
        let grant = GrantRecord {
            id,
            connection_id: conn.id,
            subject: pending.subject.clone(),
            refresh_token,
            scopes,
            status: GrantStatus::Active,
            // A new version fences any refresh of the old chain still in flight.
            version: existing.as_ref().map(|g| g.version + 1).unwrap_or(1),
            created_at: existing.as_ref().map(|g| g.created_at).unwrap_or(now),
            updated_at: now,
        };
        // Every replica drops the connection's tokens from memory (the whole connection, so
        // a refresh of the old chain that finished just before cannot re-insert its token
        // afterwards: the connection's epoch fences it).
        self.store
            .put_grant(
                &grant,
                existing.is_some(),
                Some(&token),
                &self.notifier.connection_changed(&conn.key()),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict => Error::Aborted(
                    "another authorization of this subject completed at the same time",
                ),
                other => other.into(),
            })?;
        self.cache.retire_connection(&conn.key());
        tracing::info!(tenant = %conn.tenant, provider = %conn.provider, subject = %pending.subject, "authorization completed");
        Ok(GrantView {
            tenant: conn.tenant,
            provider: conn.provider,
            record: grant,
        })
    }

    async fn grant(&self, conn: &ConnectionRecord, subject: &Subject) -> Result<GrantRecord> {
        self.store
            .get_grant(conn.id, subject.as_str())
            .await?
            .ok_or_else(|| Error::GrantNotFound {
                tenant: conn.tenant.to_string(),
                provider: conn.provider.to_string(),
                subject: subject.to_string(),
            })
    }

    pub async fn get(&self, key: &ConnectionKey, subject: &Subject) -> Result<GrantView> {
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        let record = self.grant(&conn, subject).await?;
        Ok(GrantView {
            tenant: conn.tenant,
            provider: conn.provider,
            record,
        })
    }

    pub async fn list(&self, key: &ConnectionKey, page: &PageRequest) -> Result<Page<GrantView>> {
        let q = page.parse()?;
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        let rows = self
            .store
            .list_grants(conn.id, q.after.as_deref(), q.fetch())
            .await?;
        Ok(
            Page::from_rows(rows, &q, |g| g.subject.as_str()).map(|record| GrantView {
                tenant: conn.tenant.clone(),
                provider: conn.provider.clone(),
                record,
            }),
        )
    }

    /// Revokes one grant at the provider (when it has a revocation URL) and deletes it.
    pub async fn revoke(
        &self,
        key: &ConnectionKey,
        subject: &Subject,
        force: bool,
    ) -> Result<Revoked> {
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        let grant = self.grant(&conn, subject).await?;
        let mut done = Revoked::default();
        self.revoke_one(&conn, &grant, force, &mut done).await?;
        Ok(done)
    }

    /// Revokes every grant of a connection (before it is deleted). Stops at the first
    /// provider failure unless `force`: what was revoked so far is deleted, the rest kept,
    /// and the error says how far it got.
    pub async fn revoke_all(&self, conn: &ConnectionRecord, force: bool) -> Result<Revoked> {
        let mut done = Revoked::default();
        loop {
            // Revoked grants are deleted, so the first page is always the next one.
            let page = self.store.list_grants(conn.id, None, 100).await?;
            if page.is_empty() {
                return Ok(done);
            }
            for grant in &page {
                self.revoke_one(conn, grant, force, &mut done).await?;
            }
        }
    }

    async fn revoke_one(
        &self,
        conn: &ConnectionRecord,
        grant: &GrantRecord,
        force: bool,
        done: &mut Revoked,
    ) -> Result<()> {
        let effective = self.effective(conn)?;
        let outcome = match (&effective.revocation_url, &grant.refresh_token) {
            (Some(url), Some(rt_ct)) => {
                let rt = self
                    .envelope
                    .decrypt_string(grant_aad(grant.id), rt_ct)
                    .await?;
                let secret = client_secret_of(&self.envelope, conn).await?;
                let credentials = user_grant_credentials(&effective, &secret);
                Some(self.client.revoke(url, &credentials, &rt).await)
            }
            _ => None,
        };
        match outcome {
            Some(Ok(())) => done.at_provider += 1,
            Some(Err(e)) if force => {
                done.locally += 1;
                done.warning =
                    format!("revocation at the provider failed, deleted locally only: {e}");
                tracing::warn!(subject = %grant.subject, error = %e, "revocation failed; grant deleted locally (force)");
            }
            Some(Err(e)) => {
                return Err(Error::RevocationFailed {
                    revoked: done.at_provider,
                    source: e,
                });
            }
            None => {
                done.locally += 1;
                done.warning = "the provider has no revocation URL (or no refresh token was issued): deleted locally only".into();
            }
        }
        // Deleting the grant fences a refresh in flight (its write checks the grant's
        // version); dropping the connection's tokens from memory everywhere fences one that
        // wrote just before.
        self.store
            .delete_grant(
                conn.id,
                &grant.subject,
                &self.notifier.connection_changed(&conn.key()),
            )
            .await?;
        self.cache.retire_connection(&conn.key());
        tracing::info!(tenant = %conn.tenant, provider = %conn.provider, subject = %grant.subject, "grant revoked");
        Ok(())
    }
}
