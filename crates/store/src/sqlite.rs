//! SQLite: the embedded default, for one process. Timestamps are stored as Unix
//! microseconds so SQL compares them numerically. Write transactions start with
//! `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail with
//! SQLITE_BUSY when another connection wrote in between, and busy_timeout does not help. A lock file next to the database keeps a
//! second process out (two writers would each keep their own cache and refresh on their own).

use std::{fs::File, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};
use time::OffsetDateTime;
use tokenvend_core::{
    ids::{ConnectionKey, ProviderId, TenantId},
    store::{
        AttemptMark, ConnectionRecord, DataKeyStore, GrantRecord, GrantStatus, Lease, LeaseEnd,
        LeaseWrite, PendingAuthorization, Published, RecentFailure, Store, StoreError, StoreEvent,
        TenantRecord, TokenRecord, WrappedDek,
    },
};
use uuid::Uuid;

use crate::{OpenError, corrupt, db_err};

/// The database's clock in Unix microseconds (leases use it, as on PostgreSQL).
macro_rules! now_us {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
    };
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One process: events go straight back to this process's subscribers.
    events: tokio::sync::broadcast::Sender<Published>,
    /// Held (and locked) for the life of the store.
    _lock: Option<Arc<File>>,
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn from_micros(v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1000)
        .map_err(|e| corrupt("timestamp", e))
}

impl SqliteStore {
    pub async fn open(url: &str, migrate: bool) -> Result<Self, OpenError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| OpenError::Connect(e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let path = opts.get_filename().to_owned();
        let in_memory = path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:");
        let lock = if in_memory {
            None
        } else {
            Some(Arc::new(take_lock(&path)?))
        };
        let pool = SqlitePoolOptions::new()
            // In-memory databases exist per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        if migrate {
            sqlx::migrate!("../../migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| OpenError::Migrate(e.to_string()))?;
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(Self {
            pool,
            events,
            _lock: lock,
        })
    }
}

fn take_lock(db: &std::path::Path) -> Result<File, OpenError> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            OpenError::Connect(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let mut lock_path = PathBuf::from(db);
    lock_path.as_mut_os_string().push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::Connect(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(db.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Connect(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

fn tenant(row: &SqliteRow) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: row.try_get("id").map_err(db_err)?,
        slug: TenantId::parse(row.try_get::<String, _>("slug").map_err(db_err)?)
            .map_err(|e| corrupt("tenant slug", e))?,
        display_name: row.try_get("display_name").map_err(db_err)?,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?)?,
    })
}

fn connection(row: &SqliteRow) -> Result<ConnectionRecord, StoreError> {
    Ok(ConnectionRecord {
        id: row.try_get("id").map_err(db_err)?,
        tenant_id: row.try_get("tenant_id").map_err(db_err)?,
        tenant: TenantId::parse(row.try_get::<String, _>("slug").map_err(db_err)?)
            .map_err(|e| corrupt("tenant slug", e))?,
        provider: ProviderId::parse(row.try_get::<String, _>("provider").map_err(db_err)?)
            .map_err(|e| corrupt("provider slug", e))?,
        version: row.try_get("version").map_err(db_err)?,
        settings: row.try_get("settings").map_err(db_err)?,
        client_secret: row.try_get("client_secret").map_err(db_err)?,
        api_key: row.try_get("api_key").map_err(db_err)?,
        secret_fingerprint: row.try_get("secret_fingerprint").map_err(db_err)?,
        created_at: from_micros(row.try_get("created_at").map_err(db_err)?)?,
        updated_at: from_micros(row.try_get("updated_at").map_err(db_err)?)?,
    })
}

const CONNECTION_COLUMNS: &str = "c.id, c.tenant_id, t.slug, c.provider, c.version, c.settings, \
     c.client_secret, c.api_key, c.secret_fingerprint, c.created_at, c.updated_at";

#[async_trait]
impl DataKeyStore for SqliteStore {
    async fn insert_data_key(&self, dek: &WrappedDek) -> Result<(), StoreError> {
        sqlx::query(
            // created_at is bookkeeping (which keys are old), not a freshness decision: the
            // database's clock is fine.
            "INSERT INTO data_keys (id, master_key_id, wrapped, created_at) \
             VALUES (?, ?, ?, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))",
        )
        .bind(dek.id)
        .bind(&dek.master_key_id)
        .bind(&dek.wrapped)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_data_key(&self, id: Uuid) -> Result<Option<WrappedDek>, StoreError> {
        let row = sqlx::query("SELECT id, master_key_id, wrapped FROM data_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            Ok(WrappedDek {
                id: r.try_get("id").map_err(db_err)?,
                master_key_id: r.try_get("master_key_id").map_err(db_err)?,
                wrapped: r.try_get("wrapped").map_err(db_err)?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_tenant(&self, t: &TenantRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tenants (id, slug, display_name, created_at) VALUES (?, ?, ?, ?)")
            .bind(t.id)
            .bind(t.slug.as_str())
            .bind(&t.display_name)
            .bind(micros(t.created_at))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_tenant(&self, slug: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        sqlx::query("SELECT id, slug, display_name, created_at FROM tenants WHERE slug = ?")
            .bind(slug.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .as_ref()
            .map(tenant)
            .transpose()
    }

    async fn list_tenants(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        sqlx::query(
            "SELECT id, slug, display_name, created_at FROM tenants \
             WHERE ?1 IS NULL OR slug > ?1 ORDER BY slug LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(tenant)
        .collect()
    }

    async fn delete_tenant(&self, slug: &TenantId, origin: &str) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let providers: Vec<String> = sqlx::query_scalar(
            "DELETE FROM connections WHERE tenant_id = (SELECT id FROM tenants WHERE slug = ?1) \
             RETURNING provider",
        )
        .bind(slug.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let done = sqlx::query("DELETE FROM tenants WHERE slug = ?1")
            .bind(slug.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        for provider in providers {
            self.notify(&Published {
                origin: origin.to_owned(),
                event: StoreEvent::ConnectionChanged {
                    tenant: slug.to_string(),
                    provider,
                },
            });
        }
        Ok(done.rows_affected() > 0)
    }

    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections c JOIN tenants t ON t.id = c.tenant_id \
             WHERE t.slug = ? AND c.provider = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.tenant.as_str())
            .bind(key.provider.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .as_ref()
            .map(connection)
            .transpose()
    }

    async fn get_connection_by_id(&self, id: Uuid) -> Result<Option<ConnectionRecord>, StoreError> {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections c JOIN tenants t ON t.id = c.tenant_id \
             WHERE c.id = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .as_ref()
            .map(connection)
            .transpose()
    }

    async fn list_connections(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections c JOIN tenants t ON t.id = c.tenant_id \
             WHERE t.slug = ?1 AND (?2 IS NULL OR c.provider > ?2) ORDER BY c.provider LIMIT ?3"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(connection)
            .collect()
    }

    async fn put_connection(
        &self,
        c: &ConnectionRecord,
        expected_version: Option<i64>,
        event: &Published,
    ) -> Result<(), StoreError> {
        let done = match expected_version {
            None => sqlx::query(
                "INSERT INTO connections (id, tenant_id, provider, version, settings, client_secret, \
                 api_key, secret_fingerprint, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(c.id)
            .bind(c.tenant_id)
            .bind(c.provider.as_str())
            .bind(c.version)
            .bind(&c.settings)
            .bind(&c.client_secret)
            .bind(&c.api_key)
            .bind(&c.secret_fingerprint)
            .bind(micros(c.created_at))
            .bind(micros(c.updated_at))
            .execute(&self.pool)
            .await
            .map_err(db_err)?,
            Some(v) => sqlx::query(
                "UPDATE connections SET version = ?2, settings = ?3, client_secret = ?4, \
                 api_key = ?5, secret_fingerprint = ?6, updated_at = ?7 \
                 WHERE id = ?1 AND version = ?8",
            )
            .bind(c.id)
            .bind(c.version)
            .bind(&c.settings)
            .bind(&c.client_secret)
            .bind(&c.api_key)
            .bind(&c.secret_fingerprint)
            .bind(micros(c.updated_at))
            .bind(v)
            .execute(&self.pool)
            .await
            .map_err(db_err)?,
        };
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        self.notify(event);
        Ok(())
    }

    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        event: &Published,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM connections WHERE provider = ?2 \
             AND tenant_id = (SELECT id FROM tenants WHERE slug = ?1)",
        )
        .bind(key.tenant.as_str())
        .bind(key.provider.as_str())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.notify(event);
        Ok(true)
    }

    async fn load_token(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT connection_id, subject, connection_version, access_token, token_sha256, \
             scopes, expires_at, fetched_at FROM tokens WHERE connection_id = ? AND subject = ?",
        )
        .bind(connection_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(TokenRecord {
                connection_id: r.try_get("connection_id").map_err(db_err)?,
                subject: r.try_get("subject").map_err(db_err)?,
                connection_version: r.try_get("connection_version").map_err(db_err)?,
                access_token: r.try_get("access_token").map_err(db_err)?,
                token_sha256: r.try_get("token_sha256").map_err(db_err)?,
                scopes: serde_json::from_str(&r.try_get::<String, _>("scopes").map_err(db_err)?)
                    .map_err(|e| corrupt("token scopes", e))?,
                expires_at: from_micros(r.try_get("expires_at").map_err(db_err)?)?,
                fetched_at: from_micros(r.try_get("fetched_at").map_err(db_err)?)?,
            })
        })
        .transpose()
    }

    async fn save_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        upsert_token(t)?.execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn invalidate_token(
        &self,
        connection_id: Uuid,
        subject: &str,
        sha256: &[u8],
        event: &Published,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM tokens WHERE connection_id = ? AND subject = ? AND token_sha256 = ?",
        )
        .bind(connection_id)
        .bind(subject)
        .bind(sha256)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.notify(event);
        Ok(true)
    }
    async fn insert_pending_authorization(
        &self,
        p: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pending_authorizations (state_sha256, id, connection_id, subject, \
             code_verifier, redirect_uri, scopes, expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&p.state_sha256)
        .bind(p.id)
        .bind(p.connection_id)
        .bind(&p.subject)
        .bind(&p.code_verifier)
        .bind(&p.redirect_uri)
        .bind(json(&p.scopes)?)
        .bind(micros(p.expires_at))
        .bind(micros(p.created_at))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn take_pending_authorization(
        &self,
        state_sha256: &[u8],
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM pending_authorizations WHERE state_sha256 = ?1 \
             RETURNING state_sha256, id, connection_id, subject, code_verifier, redirect_uri, \
             scopes, expires_at, created_at",
        )
        .bind(state_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(PendingAuthorization {
                state_sha256: r.try_get("state_sha256").map_err(db_err)?,
                id: r.try_get("id").map_err(db_err)?,
                connection_id: r.try_get("connection_id").map_err(db_err)?,
                subject: r.try_get("subject").map_err(db_err)?,
                code_verifier: r.try_get("code_verifier").map_err(db_err)?,
                redirect_uri: r.try_get("redirect_uri").map_err(db_err)?,
                scopes: unjson(r.try_get("scopes").map_err(db_err)?)?,
                expires_at: from_micros(r.try_get("expires_at").map_err(db_err)?)?,
                created_at: from_micros(r.try_get("created_at").map_err(db_err)?)?,
            })
        })
        .transpose()
    }

    async fn delete_expired_authorizations(
        &self,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM pending_authorizations WHERE expires_at < ?1")
            .bind(micros(before))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn get_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<GrantRecord>, StoreError> {
        sqlx::query(
            "SELECT id, connection_id, subject, refresh_token, scopes, status, version, created_at, updated_at \
             FROM grants WHERE connection_id = ?1 AND subject = ?2",
        )
        .bind(connection_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(grant)
        .transpose()
    }

    async fn list_grants(
        &self,
        connection_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        sqlx::query(
            "SELECT id, connection_id, subject, refresh_token, scopes, status, version, created_at, updated_at \
             FROM grants WHERE connection_id = ?1 AND (?2 IS NULL OR subject > ?2) \
             ORDER BY subject LIMIT ?3",
        )
        .bind(connection_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?
        .iter()
        .map(grant)
        .collect()
    }

    async fn put_grant(
        &self,
        g: &GrantRecord,
        replace: bool,
        token: Option<&TokenRecord>,
        event: &Published,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let done = if replace {
            sqlx::query(
                "UPDATE grants SET refresh_token = ?2, scopes = ?3, status = ?4, updated_at = ?5, \
                 version = ?6 WHERE id = ?1 AND version = ?6 - 1",
            )
            .bind(g.id)
            .bind(&g.refresh_token)
            .bind(json(&g.scopes)?)
            .bind(g.status.as_str())
            .bind(micros(g.updated_at))
            .bind(g.version)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
        } else {
            sqlx::query(
                "INSERT INTO grants (id, connection_id, subject, refresh_token, scopes, status, \
                 created_at, updated_at, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(g.id)
            .bind(g.connection_id)
            .bind(&g.subject)
            .bind(&g.refresh_token)
            .bind(json(&g.scopes)?)
            .bind(g.status.as_str())
            .bind(micros(g.created_at))
            .bind(micros(g.updated_at))
            .bind(g.version)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
        };
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        // A new authorization replaces whatever token the subject had.
        sqlx::query("DELETE FROM tokens WHERE connection_id = ?1 AND subject = ?2")
            .bind(g.connection_id)
            .bind(&g.subject)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if let Some(t) = token {
            upsert_token(t)?.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        self.notify(event);
        Ok(())
    }

    async fn save_refreshed(
        &self,
        grant_id: Uuid,
        refresh_token: Option<&[u8]>,
        token: &TokenRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let done = sqlx::query(
            "UPDATE grants SET refresh_token = COALESCE(?2, refresh_token), updated_at = ?3 WHERE id = ?1",
        )
        .bind(grant_id)
        .bind(refresh_token)
        .bind(micros(token.fetched_at))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        upsert_token(token)?
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn set_grant_status(
        &self,
        grant_id: Uuid,
        version: i64,
        status: GrantStatus,
        updated_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE grants SET status = ?2, updated_at = ?3 WHERE id = ?1 AND version = ?4",
        )
        .bind(grant_id)
        .bind(status.as_str())
        .bind(micros(updated_at))
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_grant(
        &self,
        connection_id: Uuid,
        subject: &str,
        event: &Published,
    ) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM tokens WHERE connection_id = ?1 AND subject = ?2")
            .bind(connection_id)
            .bind(subject)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let done = sqlx::query("DELETE FROM grants WHERE connection_id = ?1 AND subject = ?2")
            .bind(connection_id)
            .bind(subject)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.notify(event);
        Ok(true)
    }

    async fn try_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO refresh_leases (connection_id, subject, generation, lease_holder, lease_until) \
             VALUES (?1, ?2, 1, ?3, ", now_us!(), " + ?4) \
             ON CONFLICT (connection_id, subject) DO UPDATE SET \
               generation = refresh_leases.generation + 1, \
               lease_holder = excluded.lease_holder, lease_until = excluded.lease_until \
             WHERE (refresh_leases.lease_until IS NULL OR refresh_leases.lease_until < ", now_us!(), ") \
               AND (refresh_leases.refresh_attempt_gen IS NULL \
                    OR refresh_leases.attempt_until IS NULL OR refresh_leases.attempt_until < ", now_us!(), ") \
             RETURNING generation, refresh_attempt_gen"
        ))
        .bind(connection_id)
        .bind(subject)
        .bind(holder)
        .bind(ttl.as_micros() as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            let generation: i64 = r.try_get("generation").map_err(db_err)?;
            let attempt: Option<i64> = r.try_get("refresh_attempt_gen").map_err(db_err)?;
            Ok(Lease {
                generation,
                unfinished_attempt: attempt.is_some(),
            })
        })
        .transpose()
    }

    async fn renew_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE refresh_leases SET lease_until = ",
            now_us!(),
            " + ?4 WHERE connection_id = ?1 AND subject = ?2 AND generation = ?3 \
               AND lease_until IS NOT NULL"
        ))
        .bind(connection_id)
        .bind(subject)
        .bind(generation)
        .bind(ttl.as_micros() as i64)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_refresh_attempt(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        ttl: std::time::Duration,
    ) -> Result<Option<AttemptMark>, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE refresh_leases SET refresh_attempt_gen = ?3, attempt_until = ",
            now_us!(),
            " + ?4 WHERE connection_id = ?1 AND subject = ?2 AND generation = ?3 AND lease_until > ",
            now_us!()
        ))
        .bind(connection_id)
        .bind(subject)
        .bind(generation)
        .bind(ttl.as_micros() as i64)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok((done.rows_affected() == 1).then_some(AttemptMark { deadline_in: ttl }))
    }

    async fn finish_lease(
        &self,
        connection_id: Uuid,
        subject: &str,
        generation: i64,
        end: LeaseEnd<'_>,
        event: &Published,
    ) -> Result<LeaseWrite, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)?;
        let Some(row) = sqlx::query(
            "SELECT generation, refresh_attempt_gen FROM refresh_leases \
             WHERE connection_id = ?1 AND subject = ?2",
        )
        .bind(connection_id)
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        else {
            return Ok(LeaseWrite::Fenced);
        };
        let current: i64 = row.try_get("generation").map_err(db_err)?;
        let attempt: Option<i64> = row.try_get("refresh_attempt_gen").map_err(db_err)?;
        let ours = current == generation;
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
                        let done = sqlx::query(
                            "UPDATE grants SET refresh_token = COALESCE(?2, refresh_token), updated_at = ?3 \
                             WHERE id = ?1 AND version = ?4",
                        )
                        .bind(g.id)
                        .bind(g.refresh_token)
                        .bind(micros(token.fetched_at))
                        .bind(g.version)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                        done.rows_affected() != 1
                    }
                    None => false,
                };
                if grant_changed {
                    written = LeaseWrite::GrantChanged;
                } else {
                    upsert_token(token)?
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                sqlx::query(
                    "UPDATE refresh_leases SET \
                       lease_holder = CASE WHEN generation = ?3 THEN NULL ELSE lease_holder END, \
                       lease_until = CASE WHEN generation = ?3 THEN NULL ELSE lease_until END, \
                       refresh_attempt_gen = CASE WHEN refresh_attempt_gen = ?3 THEN NULL ELSE refresh_attempt_gen END, \
                       last_error = NULL, error_version = NULL, error_until = NULL \
                     WHERE connection_id = ?1 AND subject = ?2",
                )
                .bind(connection_id)
                .bind(subject)
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            LeaseEnd::Failed {
                error,
                connection_version,
                until,
                outcome_known,
            } => {
                if !ours {
                    return Ok(LeaseWrite::Fenced);
                }
                sqlx::query(
                    "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL, \
                       last_error = CASE WHEN ?5 IS NULL THEN last_error ELSE ?4 END, \
                       error_version = CASE WHEN ?5 IS NULL THEN error_version ELSE ?6 END, \
                       error_until = COALESCE(?5, error_until), \
                       refresh_attempt_gen = CASE WHEN ?7 AND refresh_attempt_gen = ?3 THEN NULL ELSE refresh_attempt_gen END \
                     WHERE connection_id = ?1 AND subject = ?2",
                )
                .bind(connection_id)
                .bind(subject)
                .bind(generation)
                .bind(error)
                .bind(until.map(micros))
                .bind(connection_version)
                .bind(outcome_known)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            LeaseEnd::Released => {
                if !ours {
                    return Ok(LeaseWrite::Fenced);
                }
                sqlx::query(
                    "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL \
                     WHERE connection_id = ?1 AND subject = ?2",
                )
                .bind(connection_id)
                .bind(subject)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        self.notify(event);
        Ok(written)
    }

    async fn release_leases(&self, holder: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_leases SET lease_holder = NULL, lease_until = NULL \
             WHERE lease_holder = ?1",
        )
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn recent_failure(
        &self,
        connection_id: Uuid,
        subject: &str,
    ) -> Result<Option<RecentFailure>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT last_error, error_version, error_until FROM refresh_leases \
             WHERE connection_id = ?1 AND subject = ?2 AND error_until > ",
            now_us!()
        ))
        .bind(connection_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(RecentFailure {
                error: r
                    .try_get::<Option<String>, _>("last_error")
                    .map_err(db_err)?
                    .unwrap_or_default(),
                connection_version: r
                    .try_get::<Option<i64>, _>("error_version")
                    .map_err(db_err)?
                    .unwrap_or_default(),
                until: from_micros(r.try_get("error_until").map_err(db_err)?)?,
            })
        })
        .transpose()
    }

    async fn publish(&self, event: &Published) -> Result<(), StoreError> {
        self.notify(event);
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published> {
        self.events.subscribe()
    }
}

impl SqliteStore {
    /// One process: a committed change goes straight to this process's subscribers (sent
    /// after the commit, so a change that rolled back is never announced).
    fn notify(&self, event: &Published) {
        let _ = self.events.send(event.clone());
    }
}

fn json(v: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("scopes", e))
}

fn unjson(s: String) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&s).map_err(|e| corrupt("scopes", e))
}

fn grant(r: &SqliteRow) -> Result<GrantRecord, StoreError> {
    let status: String = r.try_get("status").map_err(db_err)?;
    Ok(GrantRecord {
        id: r.try_get("id").map_err(db_err)?,
        connection_id: r.try_get("connection_id").map_err(db_err)?,
        subject: r.try_get("subject").map_err(db_err)?,
        refresh_token: r.try_get("refresh_token").map_err(db_err)?,
        scopes: unjson(r.try_get("scopes").map_err(db_err)?)?,
        status: GrantStatus::parse(&status).ok_or_else(|| corrupt("grant status", status))?,
        version: r.try_get("version").map_err(db_err)?,
        created_at: from_micros(r.try_get("created_at").map_err(db_err)?)?,
        updated_at: from_micros(r.try_get("updated_at").map_err(db_err)?)?,
    })
}

/// Stores a token unless the stored one is fresher (same connection version, later expiry)
/// or from a newer connection version: a slow writer never replaces a better token.
fn upsert_token(
    t: &TokenRecord,
) -> Result<sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO tokens (connection_id, subject, connection_version, access_token, \
         token_sha256, scopes, expires_at, fetched_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (connection_id, subject) DO UPDATE SET \
           connection_version = excluded.connection_version, access_token = excluded.access_token, \
           token_sha256 = excluded.token_sha256, scopes = excluded.scopes, \
           expires_at = excluded.expires_at, fetched_at = excluded.fetched_at \
         WHERE tokens.connection_version < excluded.connection_version \
            OR (tokens.connection_version = excluded.connection_version \
                AND tokens.expires_at <= excluded.expires_at)",
    )
    .bind(t.connection_id)
    .bind(t.subject.clone())
    .bind(t.connection_version)
    .bind(t.access_token.clone())
    .bind(t.token_sha256.clone())
    .bind(json(&t.scopes)?)
    .bind(micros(t.expires_at))
    .bind(micros(t.fetched_at)))
}
