//! The storage port: what the domain needs from a database, and nothing about SQL.
//! Implemented by `tokenvend-store` for PostgreSQL and SQLite; both pass the same test suite.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{ConnectionKey, PrincipalId, ProviderId, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    /// An optimistic-concurrency check failed: the row changed (or vanished) since it was read.
    #[error("the row was changed concurrently")]
    Conflict,
    /// The row a write refers to does not exist (e.g. the tenant was deleted meanwhile).
    #[error("the referenced row does not exist")]
    MissingParent,
    /// A stored row that cannot be read back (bad JSON, unknown enum value): a bug or
    /// tampering, not an outage. Logged, never shown to callers.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The database failed: connection refused, timeout, SQL error. Logged, never shown to
    /// callers.
    #[error("database error: {0}")]
    Database(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    /// Immutable row id; bound into the associated data of every ciphertext below the tenant.
    pub id: Uuid,
    pub slug: TenantId,
    pub display_name: String,
    pub created_at: OffsetDateTime,
}

/// A connection as stored. `settings` is the non-secret configuration as JSON (see
/// `connection::ConnectionSettings`); the secrets are ciphertexts bound to `id`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant: TenantId,
    pub provider: crate::ids::ProviderId,
    pub version: i64,
    pub settings: String,
    pub client_secret: Option<Vec<u8>>,
    pub api_key: Option<Vec<u8>>,
    pub secret_fingerprint: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl ConnectionRecord {
    pub fn key(&self) -> ConnectionKey {
        ConnectionKey {
            tenant: self.tenant.clone(),
            provider: self.provider.clone(),
        }
    }
}

impl std::fmt::Debug for ConnectionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("provider", &self.provider)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A cached access token as stored (encrypted), shared by every replica.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub connection_id: Uuid,
    pub subject: String,
    /// The connection version the token was fetched under; other versions are ignored.
    pub connection_version: i64,
    pub access_token: Vec<u8>,
    /// SHA-256 of the plaintext token, so `InvalidateToken` can compare without decrypting.
    pub token_sha256: Vec<u8>,
    pub scopes: Vec<String>,
    pub expires_at: OffsetDateTime,
    pub fetched_at: OffsetDateTime,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("connection_id", &self.connection_id)
            .field("subject", &self.subject)
            .field("connection_version", &self.connection_version)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A started authorization-code flow waiting for its callback.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    /// SHA-256 of the `state` sent to the browser (the key; the state itself is not stored).
    pub state_sha256: Vec<u8>,
    /// Immutable row id, bound into the verifier's ciphertext.
    pub id: Uuid,
    pub connection_id: Uuid,
    pub subject: String,
    /// The PKCE code verifier, encrypted.
    pub code_verifier: Vec<u8>,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub expires_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Whether a grant can still be refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    Active,
    /// The provider refused the refresh token (`invalid_grant`): only the end user
    /// authorizing again helps. Never retried in a loop.
    ReauthorizationRequired,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::ReauthorizationRequired => "reauthorization_required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(GrantStatus::Active),
            "reauthorization_required" => Some(GrantStatus::ReauthorizationRequired),
            _ => None,
        }
    }
}

/// An end user's authorization-code grant on a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Immutable row id (kept across re-authorizations), bound into the refresh token's
    /// ciphertext.
    pub id: Uuid,
    pub connection_id: Uuid,
    pub subject: String,
    pub refresh_token: Option<Vec<u8>>,
    pub scopes: Vec<String>,
    pub status: GrantStatus,
    /// Bumped by every re-authorization; a refresh writes its result only while the version
    /// it read is current, so a revoked or re-authorized grant is never overwritten by a
    /// refresh of the old chain.
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for GrantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantRecord")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("status", &self.status)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A refresh lease this replica holds for one token key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fencing token: writes under this lease succeed only while it is current.
    pub generation: i64,
    /// A refresh-token request was sent under an earlier generation and its outcome never
    /// recorded (its holder died or lost the lease mid-request). The lease is only granted
    /// once that attempt's own deadline has passed, so it can no longer be in flight.
    pub unfinished_attempt: bool,
    /// The generation of that unfinished attempt, as seen when the lease was taken. A new
    /// attempt is recorded only if it is still the recorded one: if its late result landed
    /// meanwhile, the refresh token read under the lease may already be spent.
    pub attempt_seen: Option<i64>,
}

/// A recorded refresh attempt: sent under `generation`, over by `deadline_in` from the
/// moment the database recorded it (database time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptMark {
    pub deadline_in: std::time::Duration,
}

/// The grant a refresh result belongs to.
#[derive(Clone, Copy, Debug)]
pub struct GrantWrite<'a> {
    pub id: Uuid,
    /// The version the refresh read under its lease; the write is dropped if it changed.
    pub version: i64,
    /// The rotated refresh token, encrypted (None: the provider kept the old one).
    pub refresh_token: Option<&'a [u8]>,
}

/// How a lease ends.
pub enum LeaseEnd<'a> {
    /// A new token (and, for an end user's grant, the rotated refresh token if any).
    Token {
        token: &'a TokenRecord,
        grant: Option<GrantWrite<'a>>,
    },
    /// The provider failed. Definitive errors are remembered for `remember_for` from now on
    /// the database's clock (a brief negative cache for every replica); `outcome_known` is
    /// false when a refresh request may have reached the provider (timeout, 5xx), so the
    /// attempt stays marked unfinished.
    Failed {
        error: &'a str,
        /// `Error::class` of the failure, for the connection's refresh state.
        class: &'a str,
        connection_version: i64,
        remember_for: Option<std::time::Duration>,
        outcome_known: bool,
    },
    /// Nothing to write (e.g. another replica had stored a fresh token meanwhile).
    Released,
}

/// Whether a lease's result was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseWrite {
    Written,
    /// The lease was taken over (and no refresh attempt of ours is pending): nothing written.
    Fenced,
    /// The grant was revoked or re-authorized while the refresh ran: nothing written (the
    /// token belongs to a chain that no longer exists).
    GrantChanged,
}

/// A definitive provider error another replica (or this one) met recently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentFailure {
    pub error: String,
    pub connection_version: i64,
    pub until: OffsetDateTime,
}

/// A connection's refresh history over all its subjects (every replica's refreshes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshHistory {
    /// The last token fetched from the provider.
    pub refreshed_at: Option<OffsetDateTime>,
    /// Failed refreshes since the last success, of the subject with the most.
    pub failures: i64,
    /// The most recent failure: its `Error::class` and when.
    pub last_failure: Option<(String, OffsetDateTime)>,
}

/// Changes other replicas must hear about (PostgreSQL NOTIFY; in-process for SQLite).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreEvent {
    /// A token key's lease ended (new token, failure, release): waiters re-check.
    LeaseEnded {
        tenant: String,
        provider: String,
        subject: String,
    },
    /// A token was invalidated: drop it from memory.
    TokenInvalidated {
        tenant: String,
        provider: String,
        subject: String,
    },
    /// A connection (or its tenant) changed or was deleted: drop its tokens from memory.
    ConnectionChanged { tenant: String, provider: String },
    /// A principal, API key or permission changed: reload the authorization decision.
    AccessChanged,
    /// The event stream was interrupted (listener reconnected): anything may have been
    /// missed, so memory must be re-validated.
    Resync,
}

/// An event with the replica that sent it, so a replica can skip its own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub origin: String,
    pub event: StoreEvent,
}

/// A data key as stored: encrypted ("wrapped") by one master key.
#[derive(Clone)]
pub struct WrappedDek {
    pub id: Uuid,
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedDek")
            .field("id", &self.id)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// How many stored data keys one master key wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyUse {
    pub master_key_id: String,
    pub data_keys: u64,
}

/// Wrapped data keys (see `crypto`). Separate so the envelope depends on this alone.
#[async_trait]
pub trait DataKeyStore: Send + Sync + 'static {
    async fn insert_data_key(&self, dek: &WrappedDek) -> Result<(), StoreError>;
    async fn get_data_key(&self, id: Uuid) -> Result<Option<WrappedDek>, StoreError>;
    /// Data keys per master key, for the start-up check and re-wrap progress.
    async fn master_key_uses(&self) -> Result<Vec<MasterKeyUse>, StoreError>;
    /// Data keys not wrapped by `master_key_id`, ordered by id, strictly after `after`.
    async fn data_keys_not_wrapped_by(
        &self,
        master_key_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WrappedDek>, StoreError>;
    /// Replaces a data key's wrapping if it is still wrapped by `from_master_key_id` (a
    /// concurrent re-wrap may have done it already). True if it did.
    async fn rewrap_data_key(
        &self,
        from_master_key_id: &str,
        rewrapped: &WrappedDek,
    ) -> Result<bool, StoreError>;
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: administration and tokens of every tenant.
    Admin,
    /// `TokenService` only, for the (tenant, provider) pairs it was granted.
    Caller,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Caller => "caller",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "caller" => Some(Role::Caller),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub id: Uuid,
    pub name: PrincipalId,
    pub role: Role,
    pub description: String,
    /// A verified client certificate naming this (subject CN or SAN) authenticates as the
    /// principal.
    pub certificate_identity: Option<String>,
    pub created_at: OffsetDateTime,
}

/// An API key as stored: its id (the public part of the key) and the SHA-256 of the whole
/// key, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub principal: PrincipalId,
    pub key_sha256: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("key_id", &self.key_id)
            .field("principal", &self.principal)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Which providers of a tenant a permission covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProviderScope {
    /// `*`: every provider of the tenant, present and future.
    Any,
    One(ProviderId),
}

impl ProviderScope {
    pub fn parse(value: impl Into<String>) -> Result<Self, crate::input::InvalidInput> {
        let value = value.into();
        if value == "*" {
            Ok(ProviderScope::Any)
        } else {
            ProviderId::parse(value).map(ProviderScope::One)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ProviderScope::Any => "*",
            ProviderScope::One(p) => p.as_str(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PermissionRecord {
    pub principal: PrincipalId,
    pub tenant: TenantId,
    pub provider: ProviderScope,
}

/// Everything the in-memory authorization decision is built from.
#[derive(Clone, Debug, Default)]
pub struct AccessRecords {
    pub principals: Vec<PrincipalRecord>,
    pub api_keys: Vec<ApiKeyRecord>,
    pub permissions: Vec<PermissionRecord>,
}

/// One audit log entry. Never holds a secret: names, the RPC, the outcome and the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Time-ordered (UUID v7): the listing's order and page key.
    pub id: Uuid,
    pub time: OffsetDateTime,
    pub principal: String,
    pub action: String,
    pub tenant: String,
    pub provider: String,
    pub subject: String,
    pub outcome: String,
    pub peer: String,
}

/// Callers, their keys and permissions, and the audit log. Every change publishes its
/// event in the same transaction, so every replica reloads its decision.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// `AlreadyExists` when the name (or the certificate identity) is taken.
    async fn create_principal(
        &self,
        principal: &PrincipalRecord,
        notify: &Published,
    ) -> Result<(), StoreError>;
    async fn get_principal(
        &self,
        name: &PrincipalId,
    ) -> Result<Option<PrincipalRecord>, StoreError>;
    /// Principals ordered by name, strictly after `after`.
    async fn list_principals(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PrincipalRecord>, StoreError>;
    /// Deletes the principal with its keys and permissions. None if absent, else how many
    /// API keys went with it.
    async fn delete_principal(
        &self,
        name: &PrincipalId,
        notify: &Published,
    ) -> Result<Option<u64>, StoreError>;
    /// `MissingParent` when the principal is gone, `AlreadyExists` on a key id collision.
    async fn insert_api_key(
        &self,
        key: &ApiKeyRecord,
        notify: &Published,
    ) -> Result<(), StoreError>;
    /// A principal's keys ordered by key id, strictly after `after`.
    async fn list_api_keys(
        &self,
        principal: &PrincipalId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// False if absent.
    async fn delete_api_key(&self, key_id: &str, notify: &Published) -> Result<bool, StoreError>;
    /// Records when keys were last used (only moving forward): a batch, not a write per call.
    async fn touch_api_keys(&self, used: &[(String, OffsetDateTime)]) -> Result<(), StoreError>;
    /// Idempotent. `MissingParent` when the principal or the tenant does not exist.
    async fn put_permission(
        &self,
        permission: &PermissionRecord,
        notify: &Published,
    ) -> Result<(), StoreError>;
    /// False if absent.
    async fn delete_permission(
        &self,
        permission: &PermissionRecord,
        notify: &Published,
    ) -> Result<bool, StoreError>;
    /// Permissions ordered by (principal, tenant, provider), strictly after `after`, with
    /// optional filters.
    async fn list_permissions(
        &self,
        principal: Option<&PrincipalId>,
        tenant: Option<&TenantId>,
        after: Option<&PermissionRecord>,
        limit: u32,
    ) -> Result<Vec<PermissionRecord>, StoreError>;
    /// Every principal, key and permission (a few thousand rows at most).
    async fn load_access(&self) -> Result<AccessRecords, StoreError>;

    async fn insert_audit_events(&self, events: &[AuditRecord]) -> Result<(), StoreError>;
    /// Newest first, strictly older than `before`, with optional filters.
    async fn list_audit_events(
        &self,
        tenant: Option<&str>,
        principal: Option<&str>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Deletes at most `limit` events older than `before`. Returns how many.
    async fn purge_audit_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait Store: DataKeyStore + AccessStore {
    /// Cheap round trip for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// `AlreadyExists` when the slug is taken.
    async fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    async fn get_tenant(&self, slug: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
    /// Tenants ordered by slug, strictly after `after`.
    async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError>;
    /// Deletes the tenant and, by cascade, its connections and tokens, and tells every
    /// replica (a `ConnectionChanged` per connection, from `origin`) in the same
    /// transaction. False if absent.
    async fn delete_tenant(&self, slug: &TenantId, origin: &str) -> Result<bool, StoreError>;

    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRecord>, StoreError>;
    async fn get_connection_by_id(&self, id: Uuid) -> Result<Option<ConnectionRecord>, StoreError>;
    async fn list_connections(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;
    /// Inserts (`expected_version` = None: `AlreadyExists` if the key is taken) or replaces the
    /// row with the same `id` whose version is `expected_version` (else `Conflict`). The record
    /// carries its new version. `MissingParent` when the tenant row is gone. `notify` is
    /// published in the same transaction: a committed change is never missed by a replica
    /// that is listening (and one that is not resyncs when it listens again).
    async fn put_connection(
        &self,
        record: &ConnectionRecord,
        expected_version: Option<i64>,
        notify: &Published,
    ) -> Result<(), StoreError>;
    /// Deletes the connection and its tokens, publishing `notify` in the same transaction.
    /// False if absent.
    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        notify: &Published,
    ) -> Result<bool, StoreError>;

    async fn load_token(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Deletes the token of (connection, subject) only if its SHA-256 is `sha256`: a report
    /// about a token that was already replaced changes nothing. True if it deleted; then
    /// `notify` is published in the same transaction.
    async fn invalidate_token(
        &self,
        connection_id: Uuid,
        subject: &str,
        sha256: &[u8],
        notify: &Published,
    ) -> Result<bool, StoreError>;

    async fn insert_pending_authorization(
        &self,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError>;
    /// Deletes and returns the pending authorization with this state hash: a state can be
    /// used once, however many callbacks race for it.
    async fn take_pending_authorization(
        &self,
        state_sha256: &[u8],
    ) -> Result<Option<PendingAuthorization>, StoreError>;
    /// Housekeeping: drops flows that expired before `before`. Returns how many.
    async fn delete_expired_authorizations(
        &self,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError>;

    async fn get_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<GrantRecord>, StoreError>;
    /// Grants of a connection ordered by subject, strictly after `after`.
    async fn list_grants(
        &self,
        connection_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Inserts the grant (`AlreadyExists` if the subject has one) or replaces the one with the
    /// same id whose version is `grant.version - 1` (else `Conflict`), together with its
    /// first access token and `notify`, in one transaction.
    async fn put_grant(
        &self,
        grant: &GrantRecord,
        replace: bool,
        token: Option<&TokenRecord>,
        notify: &Published,
    ) -> Result<(), StoreError>;
    /// Sets the status of the grant if it is still at `version` (a refusal of the old
    /// chain's refresh token must not mark a re-authorized grant). True if it did.
    async fn set_grant_status(
        &self,
        grant_id: Uuid,
        version: i64,
        status: GrantStatus,
        updated_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Deletes the grant and its cached token, publishing `notify` in the same
    /// transaction. False if absent.
    async fn delete_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
        notify: &Published,
    ) -> Result<bool, StoreError>;

    /// Takes the refresh lease of (connection, subject) for `ttl` if nobody holds it (or
    /// the holder's lease expired) and no refresh attempt is within its deadline, on the
    /// database's clock. None: someone else holds it.
    async fn try_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// The holder's heartbeat: extends the lease to `ttl` from now (database time) while
    /// `generation` is current. False: the lease was taken over.
    async fn renew_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Records that a refresh-token request is about to be sent under `lease`'s generation,
    /// with its own deadline `ttl` from now (database time), if the lease is still ours and
    /// the recorded attempt is still the one seen when it was taken. None: do not send.
    async fn mark_refresh_attempt(
        &self,
        connection_id: Uuid,
        subject: &str,
        lease: Lease,
        ttl: std::time::Duration,
    ) -> Result<Option<AttemptMark>, StoreError>;
    /// Ends the lease with its result, fenced by `generation` (see `LeaseEnd`), and
    /// publishes `notify` in the same transaction. A token is written if the lease is still
    /// ours, or if our refresh attempt is still the recorded one (its rotated refresh token
    /// must not be lost even after a takeover) — and, for a grant, only while the grant's
    /// version is the one the refresh read.
    async fn finish_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        end: LeaseEnd<'_>,
        notify: &Published,
    ) -> Result<LeaseWrite, StoreError>;
    /// Releases every lease `holder` holds (shutdown), so other replicas need not wait for
    /// them to lapse. Unfinished refresh attempts stay recorded. Returns how many.
    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError>;
    /// The last definitive error of (connection, subject), while it is remembered.
    async fn recent_failure(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<RecentFailure>, StoreError>;

    /// The connection's refresh history (GetConnection).
    async fn refresh_history(&self, connection_id: Uuid) -> Result<RefreshHistory, StoreError>;

    /// Tells every replica (including this one) about a change.
    async fn publish(&self, event: &Published) -> Result<(), StoreError>;
    /// Changes published by any replica. A `Resync` is delivered when some may be lost.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published>;
}
