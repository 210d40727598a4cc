//! Tenant and connection administration: validation, encryption of write-only secrets,
//! optimistic-concurrency upserts, and retiring cached tokens when a connection changes.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Deps,
    cache::TokenCache,
    clock::Clock,
    connection::{
        ConnectionSettings, Effective, client_credentials_request, effective_of,
        load_connection_of, missing, stored_settings,
    },
    crypto::Envelope,
    endpoint::EndpointPolicy,
    error::{Error, Result},
    events::Notifier,
    grants::{Grants, Revoked},
    ids::{ConnectionKey, Subject, TenantId, TokenKey},
    input::InvalidInput,
    oauth::{ProviderError, TokenClient},
    paging::{MAX_PAGE, Page, PageRequest},
    secrets::connection_aad,
    store::{ConnectionRecord, RefreshHistory, Store, StoreError, TenantRecord},
};

/// What `PutConnection` asks for. Empty secrets keep the stored ones.
pub struct PutConnection {
    pub key: ConnectionKey,
    pub settings: ConnectionSettings,
    pub client_secret: Option<SecretString>,
    pub api_key: Option<SecretString>,
}

/// A connection as administrators see it: never a secret, only which kind is stored and a
/// fingerprint to tell two secrets apart.
#[derive(Clone, Debug)]
pub struct ConnectionView {
    pub record: ConnectionRecord,
    pub settings: ConnectionSettings,
    pub effective: Effective,
    pub credential_kind: &'static str,
    /// Only from `get_connection` (a lookup per connection would make lists slow).
    pub refresh: Option<RefreshState>,
}

/// How refreshing a connection's tokens is going, for operators (GetConnection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// Every replica's refreshes, from the store.
    pub history: RefreshHistory,
    /// When this replica's refresh-ahead renews the client-credentials token: set only when
    /// the token is cached here and was used since it was fetched (idle tokens are left to
    /// expire).
    pub next_refresh_at: Option<OffsetDateTime>,
}

pub struct Admin {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    cache: Arc<TokenCache>,
    clock: Arc<dyn Clock>,
    policy: EndpointPolicy,
    client: TokenClient,
    grants: Arc<Grants>,
    notifier: Notifier,
}

impl Admin {
    pub fn new(deps: Deps, policy: EndpointPolicy, grants: Arc<Grants>) -> Self {
        Self {
            store: deps.store,
            envelope: deps.envelope,
            cache: deps.cache,
            clock: deps.clock,
            policy,
            client: deps.client,
            grants,
            notifier: deps.notifier,
        }
    }

    /// Drops the connection's tokens from memory here. Other replicas hear of the change
    /// from the store, which publishes it in the same transaction as the change.
    fn retire(&self, key: &ConnectionKey) {
        self.cache.retire_connection(key);
    }

    pub async fn create_tenant(
        &self,
        slug: TenantId,
        display_name: String,
    ) -> Result<TenantRecord> {
        if display_name.chars().count() > 200 || display_name.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "display_name",
                "must be at most 200 characters without control characters",
            )
            .into());
        }
        let record = TenantRecord {
            id: Uuid::now_v7(),
            slug,
            display_name,
            created_at: self.clock.now(),
        };
        match self.store.create_tenant(&record).await {
            Ok(()) => Ok(record),
            Err(StoreError::AlreadyExists) => Err(Error::TenantExists(record.slug.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_tenant(&self, slug: &TenantId) -> Result<TenantRecord> {
        self.store
            .get_tenant(slug)
            .await?
            .ok_or_else(|| Error::TenantNotFound(slug.to_string()))
    }

    pub async fn list_tenants(&self, page: &PageRequest) -> Result<Page<TenantRecord>> {
        let q = page.parse()?;
        let rows = self
            .store
            .list_tenants(q.after.as_deref(), q.fetch())
            .await?;
        Ok(Page::from_rows(rows, &q, |t| t.slug.as_str()))
    }

    /// Revokes every end user's grant at its provider (as `delete_connection` does; a
    /// failed revocation stops here unless `force`), then deletes the tenant with all it
    /// holds. Without the revocations, refresh tokens would stay valid at the providers
    /// with nobody left to revoke them.
    pub async fn delete_tenant(&self, slug: &TenantId, force: bool) -> Result<Revoked> {
        let connections = self.all_connections(slug).await?;
        let mut revoked = Revoked::default();
        for c in &connections {
            let r = self.grants.revoke_all(c, force).await?;
            revoked.at_provider += r.at_provider;
            revoked.locally += r.locally;
            if !r.warning.is_empty() {
                revoked.warning = r.warning;
            }
        }
        if !self
            .store
            .delete_tenant(slug, self.notifier.replica())
            .await?
        {
            return Err(Error::TenantNotFound(slug.to_string()));
        }
        for c in connections {
            self.retire(&c.key());
        }
        Ok(revoked)
    }

    async fn all_connections(&self, tenant: &TenantId) -> Result<Vec<ConnectionRecord>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_connections(tenant, after.as_deref(), MAX_PAGE)
                .await?;
            let full = page.len() == MAX_PAGE as usize;
            after = page.last().map(|c| c.provider.to_string());
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    pub async fn put_connection(&self, put: PutConnection) -> Result<ConnectionView> {
        let effective = put.settings.resolve(self.policy)?;
        let new_secret = put.client_secret.filter(|s| !s.expose_secret().is_empty());
        let new_api_key = put.api_key.filter(|s| !s.expose_secret().is_empty());
        if new_secret.is_some() && new_api_key.is_some() {
            return Err(InvalidInput::new(
                "api_key",
                "set either client_secret or api_key, not both",
            )
            .into());
        }
        for (field, value) in [("client_secret", &new_secret), ("api_key", &new_api_key)] {
            if let Some(v) = value
                && v.expose_secret().len() > 4096
            {
                return Err(InvalidInput::new(field, "must be at most 4096 bytes").into());
            }
        }

        // Optimistic concurrency: re-read and retry when another writer got in between.
        for _ in 0..5 {
            let tenant = self
                .store
                .get_tenant(&put.key.tenant)
                .await?
                .ok_or_else(|| Error::TenantNotFound(put.key.tenant.to_string()))?;
            let existing = self.store.get_connection(&put.key).await?;
            if new_secret.is_none()
                && new_api_key.is_none()
                && let Some(old) = &existing
            {
                check_destination_kept(old, &put.settings)?;
            }
            let id = existing.as_ref().map(|c| c.id).unwrap_or_else(Uuid::now_v7);
            let now = self.clock.now();

            // One credential kind at a time: a new API key replaces a client secret and
            // vice versa; an empty value keeps what is stored.
            let (client_secret, api_key, fingerprint) = match (&new_secret, &new_api_key) {
                (Some(s), None) => (
                    Some(self.encrypt_secret(id, "client_secret", s).await?),
                    None,
                    fingerprint(id, s),
                ),
                (None, Some(k)) => (
                    None,
                    Some(self.encrypt_secret(id, "api_key", k).await?),
                    fingerprint(id, k),
                ),
                _ => match &existing {
                    Some(c) => (
                        c.client_secret.clone(),
                        c.api_key.clone(),
                        c.secret_fingerprint.clone(),
                    ),
                    None => (None, None, String::new()),
                },
            };
            if api_key.is_none() {
                if effective.token_url.is_none() {
                    return Err(InvalidInput::new(
                        "token_url",
                        format!(
                            "is required for template {:?} (or set api_key for a static key)",
                            crate::catalog::find(&put.settings.template)?.name
                        ),
                    )
                    .into());
                }
                if effective.client_id.is_empty() {
                    return Err(InvalidInput::new("client_id", "is required").into());
                }
            }

            let record = ConnectionRecord {
                id,
                tenant_id: tenant.id,
                tenant: put.key.tenant.clone(),
                provider: put.key.provider.clone(),
                version: existing.as_ref().map(|c| c.version + 1).unwrap_or(1),
                settings: serde_json::to_string(&put.settings).map_err(|e| {
                    Error::Internal(format!("serializing connection settings: {e}"))
                })?,
                client_secret,
                api_key,
                secret_fingerprint: fingerprint,
                created_at: existing.as_ref().map(|c| c.created_at).unwrap_or(now),
                updated_at: now,
            };
            match self
                .store
                .put_connection(
                    &record,
                    existing.as_ref().map(|c| c.version),
                    &self.notifier.connection_changed(&put.key),
                )
                .await
            {
                Ok(()) => {
                    self.retire(&put.key);
                    return Ok(view(record, put.settings, effective));
                }
                Err(StoreError::Conflict | StoreError::AlreadyExists) => continue,
                Err(StoreError::MissingParent) => {
                    return Err(Error::TenantNotFound(put.key.tenant.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the connection kept changing concurrently (5 attempts)",
        ))
    }

    async fn encrypt_secret(
        &self,
        id: Uuid,
        column: &'static str,
        s: &SecretString,
    ) -> Result<Vec<u8>> {
        Ok(self
            .envelope
            .encrypt(connection_aad(id, column), s.expose_secret().as_bytes())
            .await?)
    }

    pub async fn get_connection(&self, key: &ConnectionKey) -> Result<ConnectionView> {
        let record = load_connection_of(self.store.as_ref(), key).await?;
        let history = self.store.refresh_history(record.id).await?;
        let client = TokenKey {
            tenant: key.tenant.clone(),
            provider: key.provider.clone(),
            subject: Subject::client(),
        };
        let next_refresh_at = self.cache.get(&client).and_then(|t| {
            let (refresh_at, expires_at) = (t.refresh_at?, t.expires_at?);
            let fetched_at = expires_at - t.issued_lifetime.unwrap_or_default();
            t.used_since(fetched_at).then_some(refresh_at)
        });
        let mut view = self.to_view(record)?;
        view.refresh = Some(RefreshState {
            history,
            next_refresh_at,
        });
        Ok(view)
    }

    pub async fn list_connections(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<ConnectionView>> {
        let q = page.parse()?;
        if self.store.get_tenant(tenant).await?.is_none() {
            return Err(Error::TenantNotFound(tenant.to_string()));
        }
        let rows = self
            .store
            .list_connections(tenant, q.after.as_deref(), q.fetch())
            .await?;
        let page = Page::from_rows(rows, &q, |c| c.provider.as_str());
        let items = page
            .items
            .into_iter()
            .map(|r| self.to_view(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page {
            items,
            next_page_token: page.next_page_token,
        })
    }

    /// Revokes the connection's end-user grants at the provider, then deletes it. A
    /// revocation failure keeps the connection (and the grants not yet revoked) unless
    /// `force`, which deletes locally and reports what it skipped.
    pub async fn delete_connection(&self, key: &ConnectionKey, force: bool) -> Result<Revoked> {
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        let revoked = self.grants.revoke_all(&conn, force).await?;
        if !self
            .store
            .delete_connection(key, &self.notifier.connection_changed(key))
            .await?
        {
            return Err(self.not_found(key).await);
        }
        self.retire(key);
        Ok(revoked)
    }

    /// Replaces the client secret once a token request with it succeeds; otherwise the old
    /// one stays and the error says why. The old secret is not needed (Enode invalidates it
    /// the moment a new one is generated).
    pub async fn rotate_client_secret(
        &self,
        key: &ConnectionKey,
        secret: SecretString,
    ) -> Result<ConnectionView> {
        if secret.expose_secret().is_empty() || secret.expose_secret().len() > 4096 {
            return Err(
                InvalidInput::new("client_secret", "is required (at most 4096 bytes)").into(),
            );
        }
        let conn = load_connection_of(self.store.as_ref(), key).await?;
        if conn.api_key.is_some() {
            return Err(InvalidInput::new(
                "client_secret",
                "this connection holds a static api_key; put a client secret with PutConnection instead",
            )
            .into());
        }
        let effective = effective_of(&conn, self.policy)?;
        let token_url = effective
            .token_url
            .as_ref()
            .ok_or_else(|| missing(&conn, "token_url"))?;
        let verified = self
            .client
            .fetch(&client_credentials_request(&effective, token_url, &secret))
            .await;
        match verified {
            Ok(_) => {}
            // The client authenticated, it just may not use this grant (an authorization-
            // code-only client): the secret is right.
            Err(ProviderError::OAuth { code, .. })
                if code == "unauthorized_client" || code == "unsupported_grant_type" => {}
            Err(e) => return Err(Error::SecretRejected(e)),
        }
        let record = ConnectionRecord {
            client_secret: Some(
                self.encrypt_secret(conn.id, "client_secret", &secret)
                    .await?,
            ),
            secret_fingerprint: fingerprint(conn.id, &secret),
            version: conn.version + 1,
            updated_at: self.clock.now(),
            ..conn.clone()
        };
        match self
            .store
            .put_connection(
                &record,
                Some(conn.version),
                &self.notifier.connection_changed(key),
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(Error::Aborted(
                    "the connection changed during the rotation; the new secret was not stored, rotate again",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.retire(key);
        tracing::info!(tenant = %key.tenant, provider = %key.provider, version = record.version, "client secret rotated");
        self.to_view(record)
    }

    async fn not_found(&self, key: &ConnectionKey) -> Error {
        match self.store.get_tenant(&key.tenant).await {
            Ok(None) => Error::TenantNotFound(key.tenant.to_string()),
            Ok(Some(_)) => Error::ConnectionNotFound {
                tenant: key.tenant.to_string(),
                provider: key.provider.to_string(),
            },
            Err(e) => e.into(),
        }
    }

    fn to_view(&self, record: ConnectionRecord) -> Result<ConnectionView> {
        let settings = stored_settings(&record)?;
        // Stored settings were valid when written; show them even if the policy changed since.
        let effective = settings
            .resolve(EndpointPolicy {
                allow_insecure: true,
            })
            .map_err(|e| StoreError::Corrupt(format!("connection {} settings: {e}", record.id)))?;
        Ok(view(record, settings, effective))
    }
}

fn view(
    record: ConnectionRecord,
    settings: ConnectionSettings,
    effective: Effective,
) -> ConnectionView {
    let credential_kind = if record.api_key.is_some() {
        "api_key"
    } else if record.client_secret.is_some() {
        "client_secret"
    } else {
        "none"
    };
    ConnectionView {
        record,
        settings,
        effective,
        credential_kind,
        refresh: None,
    }
}

/// 64 bits of SHA-256 over (row id, secret): tells an operator whether the secret changed,
/// without offering a hash of the bare secret to guess against.
/// A stored secret (or API key) is kept only while its destination is: see
/// `ConnectionSettings::destination_change`.
fn check_destination_kept(old: &ConnectionRecord, new: &ConnectionSettings) -> Result<()> {
    let kind = match (&old.client_secret, &old.api_key) {
        (Some(_), _) => "client_secret",
        (None, Some(_)) => "api_key",
        (None, None) => return Ok(()),
    };
    match stored_settings(old)?.destination_change(new) {
        None => Ok(()),
        Some(field) => Err(InvalidInput::new(
            field,
            format!(
                "changes where or how the stored {kind} is sent; give {kind} again in the same request (it is write-only and stays with its destination)"
            ),
        )
        .into()),
    }
}

fn fingerprint(id: Uuid, secret: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(secret.expose_secret().as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
