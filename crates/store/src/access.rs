//! Callers, API keys, permissions and the audit log: the `AccessStore` port in SQL written
//! once for both databases (see `sql.rs` for the conventions).

use async_trait::async_trait;
use time::OffsetDateTime;
use tokenvend_core::{
    ids::{PrincipalId, TenantId},
    store::{
        AccessRecords, AccessStore, ApiKeyRecord, AuditRecord, PermissionRecord, PrincipalRecord,
        ProviderScope, Published, Role, StoreError,
    },
};
use uuid::Uuid;

use crate::{
    corrupt,
    dialect::{Row, args},
    sql::SqlStore,
};

fn principal(r: &dyn Row) -> Result<PrincipalRecord, StoreError> {
    let role = r.text("role")?;
    Ok(PrincipalRecord {
        id: r.uuid("id")?,
        name: PrincipalId::parse(r.text("name")?).map_err(|e| corrupt("principal name", e))?,
        role: Role::parse(&role).ok_or_else(|| corrupt("principal role", role))?,
        description: r.text("description")?,
        certificate_identity: r.opt_text("certificate_identity")?,
        created_at: r.time("created_at")?,
    })
}

fn api_key(r: &dyn Row) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        key_id: r.text("key_id")?,
        principal: PrincipalId::parse(r.text("name")?).map_err(|e| corrupt("principal name", e))?,
        key_sha256: r.bytes("key_sha256")?,
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
    })
}

fn permission(r: &dyn Row) -> Result<PermissionRecord, StoreError> {
    Ok(PermissionRecord {
        principal: PrincipalId::parse(r.text("name")?).map_err(|e| corrupt("principal name", e))?,
        tenant: TenantId::parse(r.text("slug")?).map_err(|e| corrupt("tenant slug", e))?,
        provider: ProviderScope::parse(r.text("provider")?)
            .map_err(|e| corrupt("permission provider", e))?,
    })
}

fn audit(r: &dyn Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: r.uuid("id")?,
        time: r.time("time")?,
        principal: r.text("principal")?,
        action: r.text("action")?,
        tenant: r.text("tenant")?,
        provider: r.text("provider")?,
        subject: r.text("subject")?,
        outcome: r.text("outcome")?,
        peer: r.text("peer")?,
    })
}

const SELECT_PRINCIPALS: &str =
    "SELECT id, name, role, description, certificate_identity, created_at FROM principals";

macro_rules! select_api_keys {
    ($where:literal) => {
        concat!(
            "SELECT k.key_id, p.name, k.key_sha256, k.created_at, k.expires_at, k.last_used_at \
             FROM api_keys k JOIN principals p ON p.id = k.principal_id ",
            $where
        )
    };
}

macro_rules! select_permissions {
    ($where:literal) => {
        concat!(
            "SELECT p.name, t.slug, m.provider FROM permissions m \
             JOIN principals p ON p.id = m.principal_id JOIN tenants t ON t.id = m.tenant_id ",
            $where
        )
    };
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn create_principal(
        &self,
        p: &PrincipalRecord,
        notify: &Published,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.execute(
            "INSERT INTO principals (id, name, role, description, certificate_identity, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            args![
                p.id,
                p.name.as_str(),
                p.role.as_str(),
                p.description.as_str(),
                p.certificate_identity.as_deref(),
                p.created_at
            ],
        )
        .await?;
        tx.notify(notify).await?;
        tx.commit().await
    }

    async fn get_principal(
        &self,
        name: &PrincipalId,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        let row = self
            .db
            .pool()
            .fetch_optional(
                "SELECT id, name, role, description, certificate_identity, created_at \
                 FROM principals WHERE name = $1",
                args![name.as_str()],
            )
            .await?;
        row.as_deref().map(principal).transpose()
    }

    async fn list_principals(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PrincipalRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                "SELECT id, name, role, description, certificate_identity, created_at \
                 FROM principals WHERE CAST($1 AS TEXT) IS NULL OR name > $1 \
                 ORDER BY name LIMIT $2",
                args![after, i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| principal(r.as_ref())).collect()
    }

    async fn delete_principal(
        &self,
        name: &PrincipalId,
        notify: &Published,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some(row) = tx
            .fetch_optional(
                "SELECT id FROM principals WHERE name = $1 {for_update}",
                args![name.as_str()],
            )
            .await?
        else {
            return Ok(None);
        };
        let id = row.uuid("id")?;
        let keys = tx
            .execute("DELETE FROM api_keys WHERE principal_id = $1", args![id])
            .await?;
        tx.execute("DELETE FROM permissions WHERE principal_id = $1", args![id])
            .await?;
        tx.execute("DELETE FROM principals WHERE id = $1", args![id])
            .await?;
        tx.notify(notify).await?;
        tx.commit().await?;
        Ok(Some(keys))
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord, notify: &Published) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let done = tx
            .execute(
                "INSERT INTO api_keys (key_id, principal_id, key_sha256, created_at, expires_at) \
                 SELECT $1, id, $3, $4, $5 FROM principals WHERE name = $2",
                args![
                    k.key_id.as_str(),
                    k.principal.as_str(),
                    k.key_sha256.as_slice(),
                    k.created_at,
                    k.expires_at
                ],
            )
            .await?;
        if done == 0 {
            return Err(StoreError::MissingParent);
        }
        tx.notify(notify).await?;
        tx.commit().await
    }

    async fn list_api_keys(
        &self,
        principal: &PrincipalId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                select_api_keys!(
                    "WHERE p.name = $1 AND (CAST($2 AS TEXT) IS NULL OR k.key_id > $2) \
                     ORDER BY k.key_id LIMIT $3"
                ),
                args![principal.as_str(), after, i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| api_key(r.as_ref())).collect()
    }

    async fn delete_api_key(&self, key_id: &str, notify: &Published) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done = tx
            .execute("DELETE FROM api_keys WHERE key_id = $1", args![key_id])
            .await?;
        if done == 0 {
            return Ok(false);
        }
        tx.notify(notify).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn touch_api_keys(&self, used: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for (key_id, at) in used {
            tx.execute(
                "UPDATE api_keys SET last_used_at = $2 \
                 WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                args![key_id.as_str(), *at],
            )
            .await?;
        }
        tx.commit().await
    }

    async fn put_permission(
        &self,
        m: &PermissionRecord,
        notify: &Published,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let ids = tx
            .fetch_optional(
                "SELECT p.id AS principal_id, t.id AS tenant_id FROM principals p, tenants t \
                 WHERE p.name = $1 AND t.slug = $2",
                args![m.principal.as_str(), m.tenant.as_str()],
            )
            .await?
            .ok_or(StoreError::MissingParent)?;
        let done = tx
            .execute(
                "INSERT INTO permissions (principal_id, tenant_id, provider, created_at) \
                 VALUES ($1, $2, $3, {now}) ON CONFLICT DO NOTHING",
                args![
                    ids.uuid("principal_id")?,
                    ids.uuid("tenant_id")?,
                    m.provider.as_str()
                ],
            )
            .await?;
        if done == 0 {
            return Ok(());
        }
        tx.notify(notify).await?;
        tx.commit().await
    }

    async fn delete_permission(
        &self,
        m: &PermissionRecord,
        notify: &Published,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done = tx
            .execute(
                "DELETE FROM permissions WHERE provider = $3 \
                 AND principal_id = (SELECT id FROM principals WHERE name = $1) \
                 AND tenant_id = (SELECT id FROM tenants WHERE slug = $2)",
                args![m.principal.as_str(), m.tenant.as_str(), m.provider.as_str()],
            )
            .await?;
        if done == 0 {
            return Ok(false);
        }
        tx.notify(notify).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_permissions(
        &self,
        principal: Option<&PrincipalId>,
        tenant: Option<&TenantId>,
        after: Option<&PermissionRecord>,
        limit: u32,
    ) -> Result<Vec<PermissionRecord>, StoreError> {
        let rows = self
            .db
            .pool()
            .fetch_all(
                select_permissions!(
                    "WHERE (CAST($1 AS TEXT) IS NULL OR p.name = $1) \
                     AND (CAST($2 AS TEXT) IS NULL OR t.slug = $2) \
                     AND (CAST($3 AS TEXT) IS NULL OR p.name > $3 \
                          OR (p.name = $3 AND (t.slug > $4 \
                              OR (t.slug = $4 AND m.provider > $5)))) \
                     ORDER BY p.name, t.slug, m.provider LIMIT $6"
                ),
                args![
                    principal.map(PrincipalId::as_str),
                    tenant.map(TenantId::as_str),
                    after.map(|a| a.principal.as_str()),
                    after.map(|a| a.tenant.as_str()),
                    after.map(|a| a.provider.as_str()),
                    i64::from(limit)
                ],
            )
            .await?;
        rows.iter().map(|r| permission(r.as_ref())).collect()
    }

    async fn load_access(&self) -> Result<AccessRecords, StoreError> {
        // One transaction, so keys and permissions are a consistent snapshot.
        let mut tx = self.db.begin().await?;
        let principals = tx.fetch_all(SELECT_PRINCIPALS, vec![]).await?;
        let keys = tx.fetch_all(select_api_keys!(""), vec![]).await?;
        let permissions = tx.fetch_all(select_permissions!(""), vec![]).await?;
        tx.commit().await?;
        Ok(AccessRecords {
            principals: principals
                .iter()
                .map(|r| principal(r.as_ref()))
                .collect::<Result<_, _>>()?,
            api_keys: keys
                .iter()
                .map(|r| api_key(r.as_ref()))
                .collect::<Result<_, _>>()?,
            permissions: permissions
                .iter()
                .map(|r| permission(r.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn insert_audit_events(&self, events: &[AuditRecord]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for e in events {
            tx.execute(
                "INSERT INTO audit_events (id, time, principal, action, tenant, provider, \
                 subject, outcome, peer) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                args![
                    e.id,
                    e.time,
                    e.principal.as_str(),
                    e.action.as_str(),
                    e.tenant.as_str(),
                    e.provider.as_str(),
                    e.subject.as_str(),
                    e.outcome.as_str(),
                    e.peer.as_str()
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    async fn list_audit_events(
        &self,
        tenant: Option<&str>,
        principal: Option<&str>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        // The max UUID sorts last: "before everything".
        let rows = self
            .db
            .pool()
            .fetch_all(
                "SELECT id, time, principal, action, tenant, provider, subject, outcome, peer \
                 FROM audit_events WHERE id < $3 \
                 AND (CAST($1 AS TEXT) IS NULL OR tenant = $1) \
                 AND (CAST($2 AS TEXT) IS NULL OR principal = $2) \
                 ORDER BY id DESC LIMIT $4",
                args![
                    tenant,
                    principal,
                    before.unwrap_or(Uuid::max()),
                    i64::from(limit)
                ],
            )
            .await?;
        rows.iter().map(|r| audit(r.as_ref())).collect()
    }

    async fn purge_audit_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.db
            .pool()
            .execute(
                "DELETE FROM audit_events WHERE id IN \
                 (SELECT id FROM audit_events WHERE time < $1 ORDER BY time LIMIT $2)",
                args![before, i64::from(limit)],
            )
            .await
    }
}
