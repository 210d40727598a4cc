//! The store, written once for both databases: every query of the core's `Store` port.
//! The SQL is portable (PostgreSQL placeholders and the tokens of `dialect.rs`); what the
//! two databases do differently is the dialect's job. The shared test suite
//! (`tests/it`) runs every query here against a real PostgreSQL server and SQLite.

use async_trait::async_trait;
use time::OffsetDateTime;
use tokenvend_core::{
    events::Notifier,
    ids::{ConnectionKey, ProviderId, TenantId},
    store::{
        AttemptMark, ConnectionRecord, DataKeyStore, GrantRecord, GrantStatus, Lease, LeaseEnd,
        LeaseWrite, MasterKeyUse, PendingAuthorization, Published, RecentFailure, RefreshHistory,
        Store, StoreError, TenantRecord, TokenRecord, WrappedDek,
    },
};
use uuid::Uuid;

use crate::{
    corrupt,
    dialect::{Db, Row, Tx, args},
};

/// A `Store` over one database, through its dialect.
pub struct SqlStore {
    pub(crate) db: Box<dyn Db>,
}

impl SqlStore {
    pub(crate) fn new(db: impl Db) -> Self {
        Self { db: Box::new(db) }
    }
}

fn json(v: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("scopes", e))
}

fn unjson(s: String) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&s).map_err(|e| corrupt("scopes", e))
}

fn tenant(r: &dyn Row) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: r.uuid("id")?,
        slug: TenantId::parse(r.text("slug")?).map_err(|e| corrupt("tenant slug", e))?,
        display_name: r.text("display_name")?,
        created_at: r.time("created_at")?,
    })
}

fn connection(r: &dyn Row) -> Result<ConnectionRecord, StoreError> {
    Ok(ConnectionRecord {
        id: r.uuid("id")?,
        tenant_id: r.uuid("tenant_id")?,
        tenant: TenantId::parse(r.text("slug")?).map_err(|e| corrupt("tenant slug", e))?,
        provider: ProviderId::parse(r.text("provider")?)
            .map_err(|e| corrupt("provider slug", e))?,
        version: r.int("version")?,
        settings: r.text("settings")?,
        client_secret: r.opt_bytes("client_secret")?,
        api_key: r.opt_bytes("api_key")?,
        secret_fingerprint: r.text("secret_fingerprint")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// Connections are always read with their tenant's slug.
macro_rules! select_connections {
    ($where:literal) => {
        concat!(
            "SELECT c.id, c.tenant_id, t.slug, c.provider, c.version, c.settings, \
             c.client_secret, c.api_key, c.secret_fingerprint, c.created_at, c.updated_at \
             FROM connections c JOIN tenants t ON t.id = c.tenant_id WHERE ",
            $where
        )
    };
}

fn grant(r: &dyn Row) -> Result<GrantRecord, StoreError> {
    let status = r.text("status")?;
    Ok(GrantRecord {
        id: r.uuid("id")?,
        connection_id: r.uuid("connection_id")?,
        subject: r.text("subject")?,
        refresh_token: r.opt_bytes("refresh_token")?,
        scopes: unjson(r.text("scopes")?)?,
        status: GrantStatus::parse(&status).ok_or_else(|| corrupt("grant status", status))?,
        version: r.int("version")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

macro_rules! select_grants {
    ($where:literal) => {
        concat!(
            "SELECT id, connection_id, subject, refresh_token, scopes, status, version, \
             created_at, updated_at FROM grants WHERE ",
            $where
        )
    };
}

fn token(r: &dyn Row) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        connection_id: r.uuid("connection_id")?,
        subject: r.text("subject")?,
        connection_version: r.int("connection_version")?,
        access_token: r.bytes("access_token")?,
        token_sha256: r.bytes("token_sha256")?,
        scopes: unjson(r.text("scopes")?)?,
        expires_at: r.time("expires_at")?,
        fetched_at: r.time("fetched_at")?,
    })
}

/// Stores a token unless the stored one is fresher (same connection version, later expiry)
/// or from a newer connection version: a slow writer never replaces a better token.
async fn upsert_token(tx: &mut dyn Tx, t: &TokenRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tokens (connection_id, subject, connection_version, access_token, \
         token_sha256, scopes, expires_at, fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (connection_id, subject) DO UPDATE SET \
           connection_version = excluded.connection_version, access_token = excluded.access_token, \
           token_sha256 = excluded.token_sha256, scopes = excluded.scopes, \
           expires_at = excluded.expires_at, fetched_at = excluded.fetched_at \
         WHERE tokens.connection_version < excluded.connection_version \
            OR (tokens.connection_version = excluded.connection_version \
                AND tokens.expires_at <= excluded.expires_at)",
        args![
            t.connection_id,
            t.subject.as_str(),
            t.connection_version,
            t.access_token.as_slice(),
            t.token_sha256.as_slice(),
            json(&t.scopes)?,
            t.expires_at,
            t.fetched_at
        ],
    )
    .await?;
    Ok(())
}

/// Commits with `event` when the statement touched a row; otherwise rolls back (by drop) and
/// announces nothing. True if it committed.
async fn commit_if_any(
    mut tx: Box<dyn Tx>,
    rows: u64,
    event: &Published,
) -> Result<bool, StoreError> {
    if rows == 0 {
        return Ok(false);
    }
    tx.notify(event).await?;
    tx.commit().await?;
    Ok(true)
}

#[async_trait]
impl DataKeyStore for SqlStore {
    async fn insert_data_key(&self, dek: &WrappedDek) -> Result<(), StoreError> {
        // created_at is bookkeeping (which keys are old): the database's clock is fine.
        self.db
            .pool()
            .execute(
                "INSERT INTO data_keys (id, master_key_id, wrapped, created_at) \
                 VALUES ($1, $2, $3, {now})",
                args![dek.id, dek.master_key_id.as_str(), dek.wrapped.as_slice()],
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(name = "store.get_data_key", skip_all, fields(db.system = self.db.system()))]
    async fn get_data_key(&self, id: Uuid) -> Result<Option<WrappedDek>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "SELECT id, master_key_id, wrapped FROM data_keys WHERE id = $1",
                args![id],
            )
            .await?;
        row.as_deref().map(wrapped_dek).transpose()
    }

    async fn master_key_uses(&self) -> Result<Vec<MasterKeyUse>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                "SELECT master_key_id, COUNT(*) AS data_keys FROM data_keys \
                 GROUP BY master_key_id ORDER BY master_key_id",
                vec![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(MasterKeyUse {
                    master_key_id: r.text("master_key_id")?,
                    data_keys: u64::try_from(r.int("data_keys")?).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn data_keys_not_wrapped_by(
        &self,
        master_key_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WrappedDek>, StoreError> {
        // The nil UUID sorts first: "after nothing".
        let rows = self
            .db
            .pool()
            .fetch_all(
                "SELECT id, master_key_id, wrapped FROM data_keys \
                 WHERE master_key_id <> $1 AND id > $2 ORDER BY id LIMIT $3",
                args![
                    master_key_id,
                    after.unwrap_or(Uuid::nil()),
                    i64::from(limit)
                ],
            )
            .await?;
        rows.iter().map(|r| wrapped_dek(r.as_ref())).collect()
    }

    async fn rewrap_data_key(
        &self,
        from_master_key_id: &str,
        dek: &WrappedDek,
    ) -> Result<bool, StoreError> {
        let done = self
            .db
            .pool()
            .execute(
                "UPDATE data_keys SET master_key_id = $3, wrapped = $4 \
                 WHERE id = $1 AND master_key_id = $2",
                args![
                    dek.id,
                    from_master_key_id,
                    dek.master_key_id.as_str(),
                    dek.wrapped.as_slice()
                ],
            )
            .await?;
        Ok(done == 1)
    }
}

fn wrapped_dek(r: &dyn Row) -> Result<WrappedDek, StoreError> {
    Ok(WrappedDek {
        id: r.uuid("id")?,
        master_key_id: r.text("master_key_id")?,
        wrapped: r.bytes("wrapped")?,
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.db.pool().execute("SELECT 1", vec![]).await.map(|_| ())
    }

    async fn create_tenant(&self, t: &TenantRecord) -> Result<(), StoreError> {
        self.db
            .pool()
            .execute(
                "INSERT INTO tenants (id, slug, display_name, created_at) VALUES ($1, $2, $3, $4)",
                args![t.id, t.slug.as_str(), t.display_name.as_str(), t.created_at],
            )
            .await?;
        Ok(())
    }

    async fn get_tenant(&self, slug: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "SELECT id, slug, display_name, created_at FROM tenants WHERE slug = $1",
                args![slug.as_str()],
            )
            .await?;
        row.as_deref().map(tenant).transpose()
    }

    async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                "SELECT id, slug, display_name, created_at FROM tenants \
                 WHERE CAST($1 AS TEXT) IS NULL OR slug > $1 ORDER BY slug LIMIT $2",
                args![after, i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| tenant(r.as_ref())).collect()
    }

    async fn delete_tenant(&self, slug: &TenantId, origin: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // Locking the tenant row first (PostgreSQL) makes a concurrent PutConnection wait
        // (and then fail on the foreign key), so every connection that goes is one we
        // announce. SQLite's write transaction excludes other writers anyway.
        let Some(locked) = tx
            .fetch_optional(
                "SELECT id FROM tenants WHERE slug = $1 {for_update}",
                args![slug.as_str()],
            )
            .await?
        else {
            return Ok(false);
        };
        let id = locked.uuid("id")?;
        let gone = tx
            .fetch_all(
                "DELETE FROM connections WHERE tenant_id = $1 RETURNING provider",
                args![id],
            )
            .await?;
        // Its permissions go by cascade: callers must hear about that too.
        let permissions = tx
            .execute("DELETE FROM permissions WHERE tenant_id = $1", args![id])
            .await?;
        tx.execute("DELETE FROM tenants WHERE id = $1", args![id])
            .await?;
        // Announced as the domain announces any connection change (`Notifier`).
        let notifier = Notifier::new(origin);
        if permissions > 0 {
            tx.notify(&notifier.access_changed()).await?;
        }
        for row in gone {
            let provider = ProviderId::parse(row.text("provider")?)
                .map_err(|e| corrupt("provider slug", e))?;
            let key = ConnectionKey {
                tenant: slug.clone(),
                provider,
            };
            tx.notify(&notifier.connection_changed(&key)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(name = "store.get_connection", skip_all, fields(db.system = self.db.system()))]
    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                select_connections!("t.slug = $1 AND c.provider = $2"),
                args![key.tenant.as_str(), key.provider.as_str()],
            )
            .await?;
        row.as_deref().map(connection).transpose()
    }

    async fn get_connection_by_id(&self, id: Uuid) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(select_connections!("c.id = $1"), args![id])
            .await?;
        row.as_deref().map(connection).transpose()
    }

    async fn list_connections(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                select_connections!(
                    "t.slug = $1 AND (CAST($2 AS TEXT) IS NULL OR c.provider > $2) \
                     ORDER BY c.provider LIMIT $3"
                ),
                args![tenant.as_str(), after, i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| connection(r.as_ref())).collect()
    }

    async fn put_connection(
        &self,
        c: &ConnectionRecord,
        expected_version: Option<i64>,
        event: &Published,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let done = match expected_version {
            None => {
                tx.execute(
                    "INSERT INTO connections (id, tenant_id, provider, version, settings, \
                     client_secret, api_key, secret_fingerprint, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    args![
                        c.id,
                        c.tenant_id,
                        c.provider.as_str(),
                        c.version,
                        c.settings.as_str(),
                        &c.client_secret,
                        &c.api_key,
                        c.secret_fingerprint.as_str(),
                        c.created_at,
                        c.updated_at
                    ],
                )
                .await?
            }
            Some(v) => {
                tx.execute(
                    "UPDATE connections SET version = $2, settings = $3, client_secret = $4, \
                     api_key = $5, secret_fingerprint = $6, updated_at = $7 \
                     WHERE id = $1 AND version = $8",
                    args![
                        c.id,
                        c.version,
                        c.settings.as_str(),
                        &c.client_secret,
                        &c.api_key,
                        c.secret_fingerprint.as_str(),
                        c.updated_at,
                        v
                    ],
                )
                .await?
            }
        };
        if done != 1 {
            return Err(StoreError::Conflict);
        }
        tx.notify(event).await?;
        tx.commit().await
    }

    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        event: &Published,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done = tx
            .execute(
                "DELETE FROM connections WHERE provider = $2 \
                 AND tenant_id = (SELECT id FROM tenants WHERE slug = $1)",
                args![key.tenant.as_str(), key.provider.as_str()],
            )
            .await?;
        commit_if_any(tx, done, event).await
    }

    #[tracing::instrument(name = "store.load_token", skip_all, fields(db.system = self.db.system()))]
    async fn load_token(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "SELECT connection_id, subject, connection_version, access_token, token_sha256, \
                 scopes, expires_at, fetched_at FROM tokens \
                 WHERE connection_id = $1 AND subject = $2",
                args![connection_id, subject],
            )
            .await?;
        row.as_deref().map(token).transpose()
    }

    async fn invalidate_token(
        &self,
        connection_id: Uuid,
        subject: &str,
        sha256: &[u8],
        event: &Published,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done = tx
            .execute(
                "DELETE FROM tokens WHERE connection_id = $1 AND subject = $2 AND token_sha256 = $3",
                args![connection_id, subject, sha256],
            )
            .await?;
        commit_if_any(tx, done, event).await
    }

    async fn insert_pending_authorization(
        &self,
        p: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        self.db
            .pool()
            .execute(
                "INSERT INTO pending_authorizations (state_sha256, id, connection_id, subject, \
                 code_verifier, redirect_uri, scopes, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                args![
                    p.state_sha256.as_slice(),
                    p.id,
                    p.connection_id,
                    p.subject.as_str(),
                    p.code_verifier.as_slice(),
                    p.redirect_uri.as_str(),
                    json(&p.scopes)?,
                    p.expires_at,
                    p.created_at
                ],
            )
            .await?;
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state_sha256: &[u8],
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "DELETE FROM pending_authorizations WHERE state_sha256 = $1 \
                 RETURNING state_sha256, id, connection_id, subject, code_verifier, redirect_uri, \
                 scopes, expires_at, created_at",
                args![state_sha256],
            )
            .await?;
        row.map(|r| {
            Ok(PendingAuthorization {
                state_sha256: r.bytes("state_sha256")?,
                id: r.uuid("id")?,
                connection_id: r.uuid("connection_id")?,
                subject: r.text("subject")?,
                code_verifier: r.bytes("code_verifier")?,
                redirect_uri: r.text("redirect_uri")?,
                scopes: unjson(r.text("scopes")?)?,
                expires_at: r.time("expires_at")?,
                created_at: r.time("created_at")?,
            })
        })
        .transpose()
    }

    async fn delete_expired_authorizations(
        &self,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.db
            .pool()
            .execute(
                "DELETE FROM pending_authorizations WHERE expires_at < $1",
                args![before],
            )
            .await
    }

    #[tracing::instrument(name = "store.get_grant", skip_all, fields(db.system = self.db.system()))]
    async fn get_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<GrantRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                select_grants!("connection_id = $1 AND subject = $2"),
                args![connection_id, subject],
            )
            .await?;
        row.as_deref().map(grant).transpose()
    }

    async fn list_grants(
        &self,
        connection_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                select_grants!(
                    "connection_id = $1 AND (CAST($2 AS TEXT) IS NULL OR subject > $2) \
                     ORDER BY subject LIMIT $3"
                ),
                args![connection_id, after, i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| grant(r.as_ref())).collect()
    }

    async fn put_grant(
        &self,
        g: &GrantRecord,
        replace: bool,
        token: Option<&TokenRecord>,
        event: &Published,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let done = if replace {
            tx.execute(
                "UPDATE grants SET refresh_token = $2, scopes = $3, status = $4, updated_at = $5, \
                 version = $6 WHERE id = $1 AND version = $6 - 1",
                args![
                    g.id,
                    &g.refresh_token,
                    json(&g.scopes)?,
                    g.status.as_str(),
                    g.updated_at,
                    g.version
                ],
            )
            .await?
        } else {
            tx.execute(
                "INSERT INTO grants (id, connection_id, subject, refresh_token, scopes, status, \
                 version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                args![
                    g.id,
                    g.connection_id,
                    g.subject.as_str(),
                    &g.refresh_token,
                    json(&g.scopes)?,
                    g.status.as_str(),
                    g.version,
                    g.created_at,
                    g.updated_at
                ],
            )
            .await?
        };
        if done != 1 {
            return Err(StoreError::Conflict);
        }
        // A new authorization replaces whatever token the subject had.
        tx.execute(
            "DELETE FROM tokens WHERE connection_id = $1 AND subject = $2",
            args![g.connection_id, g.subject.as_str()],
        )
        .await?;
        if let Some(t) = token {
            upsert_token(tx.as_mut(), t).await?;
        }
        tx.notify(event).await?;
        tx.commit().await
    }

    async fn set_grant_status(
        &self,
        grant_id: Uuid,
        version: i64,
        status: GrantStatus,
        updated_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = self
            .db
            .pool()
            .execute(
                "UPDATE grants SET status = $2, updated_at = $3 WHERE id = $1 AND version = $4",
                args![grant_id, status.as_str(), updated_at, version],
            )
            .await?;
        Ok(done == 1)
    }

    async fn delete_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
        event: &Published,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        tx.execute(
            "DELETE FROM tokens WHERE connection_id = $1 AND subject = $2",
            args![connection_id, subject],
        )
        .await?;
        let done = tx
            .execute(
                "DELETE FROM grants WHERE connection_id = $1 AND subject = $2",
                args![connection_id, subject],
            )
            .await?;
        commit_if_any(tx, done, event).await
    }

    #[tracing::instrument(name = "store.try_lease", skip_all, fields(db.system = self.db.system()))]
    async fn try_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // One statement for a key with or without a row; the database's clock decides.
        let row = self
            .db
            .pool()
            .fetch_optional(
                "INSERT INTO refresh_leases (connection_id, subject, generation, lease_holder, lease_until) \
                 VALUES ($1, $2, 1, $3, {now} + {micros:$4}) \
                 ON CONFLICT (connection_id, subject) DO UPDATE SET \
                   generation = refresh_leases.generation + 1, \
                   lease_holder = excluded.lease_holder, lease_until = excluded.lease_until \
                 WHERE (refresh_leases.lease_until IS NULL OR refresh_leases.lease_until < {now}) \
                   AND (refresh_leases.refresh_attempt_gen IS NULL \
                        OR refresh_leases.attempt_until IS NULL \
                        OR refresh_leases.attempt_until < {now}) \
                 RETURNING generation, refresh_attempt_gen",
                args![connection_id, subject, holder, micros(ttl)],
            )
            .await?;
        row.map(|r| {
            let attempt_seen = r.opt_int("refresh_attempt_gen")?;
            Ok(Lease {
                generation: r.int("generation")?,
                unfinished_attempt: attempt_seen.is_some(),
                attempt_seen,
            })
        })
        .transpose()
    }

    #[tracing::instrument(name = "store.renew_lease", skip_all, fields(db.system = self.db.system()))]
    async fn renew_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let done = self
            .db
            .pool()
            .execute(
                "UPDATE refresh_leases SET lease_until = {now} + {micros:$4} \
                 WHERE connection_id = $1 AND subject = $2 AND generation = $3 \
                   AND lease_until IS NOT NULL",
                args![connection_id, subject, generation, micros(ttl)],
            )
            .await?;
        Ok(done == 1)
    }

    #[tracing::instrument(name = "store.mark_refresh_attempt", skip_all, fields(db.system = self.db.system()))]
    async fn mark_refresh_attempt(
        &self,
        connection_id: Uuid,
        subject: &str,
        lease: Lease,
        ttl: std::time::Duration,
    ) -> Result<Option<AttemptMark>, StoreError> {
        // Generations start at 1, so 0 stands for "no attempt recorded".
        let done = self
            .db
            .pool()
            .execute(
                "UPDATE refresh_leases SET refresh_attempt_gen = $3, \
                   attempt_until = {now} + {micros:$4} \
                 WHERE connection_id = $1 AND subject = $2 AND generation = $3 \
                   AND lease_until > {now} AND COALESCE(refresh_attempt_gen, 0) = $5",
                args![
                    connection_id,
                    subject,
                    lease.generation,
                    micros(ttl),
                    lease.attempt_seen.unwrap_or(0)
                ],
            )
            .await?;
        Ok((done == 1).then_some(AttemptMark { deadline_in: ttl }))
    }

    #[tracing::instrument(name = "store.finish_lease", skip_all, fields(db.system = self.db.system()))]
    async fn finish_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        end: LeaseEnd<'_>,
        event: &Published,
    ) -> Result<LeaseWrite, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some(row) = tx
            .fetch_optional(
                "SELECT generation, refresh_attempt_gen FROM refresh_leases \
                 WHERE connection_id = $1 AND subject = $2 {for_update}",
                args![connection_id, subject],
            )
            .await?
        else {
            return Ok(LeaseWrite::Fenced);
        };
        let ours = row.int("generation")? == generation;
        let attempt = row.opt_int("refresh_attempt_gen")?;
        let mut written = LeaseWrite::Written;
        match end {
            LeaseEnd::Token { token, grant } => {
                if !ours && attempt != Some(generation) {
                    return Ok(LeaseWrite::Fenced);
                }
                // Revoked or re-authorized meanwhile: release the lease and resolve the
                // attempt all the same, but write no token of the old chain.
                let grant_changed = match grant {
                    Some(g) => {
                        tx.execute(
                            "UPDATE grants SET refresh_token = COALESCE($2, refresh_token), \
                             updated_at = $3 WHERE id = $1 AND version = $4",
                            args![g.id, g.refresh_token, token.fetched_at, g.version],
                        )
                        .await?
                            != 1
                    }
                    None => false,
                };
                if grant_changed {
                    written = LeaseWrite::GrantChanged;
                } else {
                    upsert_token(tx.as_mut(), token).await?;
                }
                tx.execute(
                    "UPDATE refresh_leases SET \
                       lease_holder = CASE WHEN generation = $3 THEN NULL ELSE lease_holder END, \
                       lease_until = CASE WHEN generation = $3 THEN NULL ELSE lease_until END, \
                       refresh_attempt_gen = CASE WHEN refresh_attempt_gen = $3 THEN NULL \
                         ELSE refresh_attempt_gen END, \
                       last_error = NULL, error_version = NULL, error_until = NULL, \
                       refreshed_at = $4, failures = 0 \
                     WHERE connection_id = $1 AND subject = $2",
                    args![connection_id, subject, generation, token.fetched_at],
                )
                .await?;
            }
            LeaseEnd::Failed {
                error,
                class,
                connection_version,
                remember_for,
                outcome_known,
            } => {
                if !ours {
                    return Ok(LeaseWrite::Fenced);
                }
                // An unknown outcome keeps the attempt recorded (and its deadline): the
                // provider may still be working on that request.
                tx.execute(
                    "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL, \
                       last_error = CASE WHEN $5 IS NULL THEN last_error ELSE $4 END, \
                       error_version = CASE WHEN $5 IS NULL THEN error_version ELSE $6 END, \
                       error_until = COALESCE({now} + {micros:$5}, error_until), \
                       refresh_attempt_gen = CASE WHEN $7 AND refresh_attempt_gen = $3 THEN NULL \
                         ELSE refresh_attempt_gen END, \
                       failures = failures + 1, failure_class = $8, failed_at = {now} \
                     WHERE connection_id = $1 AND subject = $2",
                    args![
                        connection_id,
                        subject,
                        generation,
                        error,
                        remember_for.map(micros),
                        connection_version,
                        outcome_known,
                        class
                    ],
                )
                .await?;
            }
            LeaseEnd::Released => {
                if !ours {
                    return Ok(LeaseWrite::Fenced);
                }
                tx.execute(
                    "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL \
                     WHERE connection_id = $1 AND subject = $2",
                    args![connection_id, subject],
                )
                .await?;
            }
        }
        tx.notify(event).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError> {
        self.db
            .pool()
            .execute(
                "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL \
                 WHERE lease_holder = $1",
                args![holder],
            )
            .await
    }

    #[tracing::instrument(name = "store.recent_failure", skip_all, fields(db.system = self.db.system()))]
    async fn recent_failure(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<RecentFailure>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "SELECT last_error, error_version, error_until FROM refresh_leases \
                 WHERE connection_id = $1 AND subject = $2 AND error_until > {now}",
                args![connection_id, subject],
            )
            .await?;
        row.map(|r| {
            Ok(RecentFailure {
                error: r.opt_text("last_error")?.unwrap_or_default(),
                connection_version: r.opt_int("error_version")?.unwrap_or_default(),
                until: r.time("error_until")?,
            })
        })
        .transpose()
    }

    async fn refresh_history(&self, connection_id: Uuid) -> Result<RefreshHistory, StoreError> {
        let totals = self
            .db
            .pool()
            .fetch_optional(
                "SELECT MAX(refreshed_at) AS refreshed_at, MAX(failures) AS failures \
                 FROM refresh_leases WHERE connection_id = $1",
                args![connection_id],
            )
            .await?;
        let last = self
            .db
            .pool()
            .fetch_optional(
                "SELECT failure_class, failed_at FROM refresh_leases \
                 WHERE connection_id = $1 AND failed_at IS NOT NULL \
                 ORDER BY failed_at DESC LIMIT 1",
                args![connection_id],
            )
            .await?;
        let (refreshed_at, failures) = match totals.as_deref() {
            Some(r) => (r.opt_time("refreshed_at")?, r.opt_int("failures")?),
            None => (None, None),
        };
        let last_failure = last
            .as_deref()
            .map(|r| {
                Ok::<_, StoreError>((
                    r.opt_text("failure_class")?.unwrap_or_default(),
                    r.time("failed_at")?,
                ))
            })
            .transpose()?;
        Ok(RefreshHistory {
            refreshed_at,
            failures: failures.unwrap_or(0),
            last_failure,
        })
    }

    async fn publish(&self, event: &Published) -> Result<(), StoreError> {
        self.db.publish(event).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published> {
        self.db.subscribe()
    }
}

/// A duration as the `{micros:$N}` parameter takes it.
fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
