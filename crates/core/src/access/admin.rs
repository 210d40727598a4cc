//! Administration of callers: principals, their API keys and permissions, and the audit
//! log's listing. Every change is announced in its own transaction, so every replica's
//! decision (`decision.rs`) follows within the change feed's latency.

use std::sync::Arc;

use secrecy::SecretString;
use time::OffsetDateTime;
use uuid::Uuid;

use super::keys;
use crate::{
    clock::Clock,
    error::{Error, Result},
    events::Notifier,
    ids::{PrincipalId, TenantId},
    input::InvalidInput,
    paging::{Page, PageRequest},
    store::{
        ApiKeyRecord, AuditRecord, PermissionRecord, PrincipalRecord, ProviderScope, Role, Store,
        StoreError,
    },
};

/// Key ids are 64 random bits: a collision is a once-in-a-lifetime event, retried.
const KEY_ID_ATTEMPTS: usize = 3;

pub struct Callers {
    store: Arc<dyn Store>,
    notifier: Notifier,
    clock: Arc<dyn Clock>,
}

/// A new principal as asked for.
pub struct NewPrincipal {
    pub name: PrincipalId,
    pub role: Role,
    pub description: String,
    pub certificate_identity: Option<String>,
}

/// The answer to `CreateApiKey`: the key itself is in here and nowhere else, ever.
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub api_key: SecretString,
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

impl Callers {
    pub fn new(store: Arc<dyn Store>, notifier: Notifier, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            notifier,
            clock,
        }
    }

    pub async fn create_principal(&self, new: NewPrincipal) -> Result<PrincipalRecord> {
        text("description", &new.description, 500)?;
        let identity = new.certificate_identity.filter(|i| !i.is_empty());
        if let Some(i) = &identity {
            text("certificate_identity", i, 255)?;
        }
        if new.name.as_str() == super::BOOTSTRAP {
            return Err(InvalidInput::new(
                "principal",
                "\"bootstrap\" names the bootstrap admin key; choose another name",
            )
            .into());
        }
        let record = PrincipalRecord {
            id: Uuid::new_v4(),
            name: new.name,
            role: new.role,
            description: new.description,
            certificate_identity: identity,
            created_at: self.clock.now(),
        };
        match self
            .store
            .create_principal(&record, &self.notifier.access_changed())
            .await
        {
            Ok(()) => Ok(record),
            Err(StoreError::AlreadyExists) => Err(Error::PrincipalExists(record.name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_principal(&self, name: &PrincipalId) -> Result<PrincipalRecord> {
        self.store
            .get_principal(name)
            .await?
            .ok_or_else(|| Error::PrincipalNotFound(name.to_string()))
    }

    pub async fn list_principals(&self, page: &PageRequest) -> Result<Page<PrincipalRecord>> {
        let q = page.parse()?;
        let rows = self
            .store
            .list_principals(q.after.as_deref(), q.fetch())
            .await?;
        Ok(Page::from_rows(rows, &q, |p| p.name.as_str()))
    }

    /// Deletes the principal with its keys and permissions. Returns how many keys went.
    pub async fn delete_principal(&self, name: &PrincipalId) -> Result<u64> {
        self.store
            .delete_principal(name, &self.notifier.access_changed())
            .await?
            .ok_or_else(|| Error::PrincipalNotFound(name.to_string()))
    }

    pub async fn create_api_key(
        &self,
        principal: &PrincipalId,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<CreatedKey> {
        let now = self.clock.now();
        if expires_at.is_some_and(|at| at <= now) {
            return Err(InvalidInput::new("expires_at", "must be in the future").into());
        }
        for _ in 0..KEY_ID_ATTEMPTS {
            let new = keys::generate().map_err(|e| Error::Internal(e.to_string()))?;
            let record = ApiKeyRecord {
                key_id: new.key_id,
                principal: principal.clone(),
                key_sha256: new.sha256.to_vec(),
                created_at: now,
                expires_at,
                last_used_at: None,
            };
            match self
                .store
                .insert_api_key(&record, &self.notifier.access_changed())
                .await
            {
                Ok(()) => {
                    return Ok(CreatedKey {
                        record,
                        api_key: new.api_key,
                    });
                }
                Err(StoreError::AlreadyExists) => continue,
                Err(StoreError::MissingParent) => {
                    return Err(Error::PrincipalNotFound(principal.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Internal("API key ids collided repeatedly".into()))
    }

    pub async fn list_api_keys(
        &self,
        principal: &PrincipalId,
        page: &PageRequest,
    ) -> Result<Page<ApiKeyRecord>> {
        let q = page.parse()?;
        let rows = self
            .store
            .list_api_keys(principal, q.after.as_deref(), q.fetch())
            .await?;
        if rows.is_empty() && q.after.is_none() {
            // Tell a typo from a principal without keys.
            self.get_principal(principal).await?;
        }
        Ok(Page::from_rows(rows, &q, |k| k.key_id.as_str()))
    }

    pub async fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        if key_id.is_empty() || key_id.len() > 64 || key_id.chars().any(char::is_control) {
            return Err(
                InvalidInput::new("key_id", "is required (the id ListApiKeys shows)").into(),
            );
        }
        if self
            .store
            .delete_api_key(key_id, &self.notifier.access_changed())
            .await?
        {
            Ok(())
        } else {
            Err(Error::ApiKeyNotFound(key_id.to_owned()))
        }
    }

    pub async fn grant_permission(&self, permission: PermissionRecord) -> Result<PermissionRecord> {
        let principal = self.get_principal(&permission.principal).await?;
        if principal.role == Role::Admin {
            return Err(InvalidInput::new(
                "principal",
                format!(
                    "{} is ROLE_ADMIN and may already get every token; permissions are for ROLE_CALLER principals",
                    principal.name
                ),
            )
            .into());
        }
        match self
            .store
            .put_permission(&permission, &self.notifier.access_changed())
            .await
        {
            Ok(()) => Ok(permission),
            // The principal was there a moment ago: it is the tenant (or a concurrent delete).
            Err(StoreError::MissingParent) => {
                Err(Error::TenantNotFound(permission.tenant.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn revoke_permission(&self, permission: &PermissionRecord) -> Result<()> {
        if self
            .store
            .delete_permission(permission, &self.notifier.access_changed())
            .await?
        {
            Ok(())
        } else {
            Err(Error::PermissionNotFound {
                principal: permission.principal.to_string(),
                tenant: permission.tenant.to_string(),
                provider: permission.provider.as_str().to_owned(),
            })
        }
    }

    pub async fn list_permissions(
        &self,
        principal: Option<&PrincipalId>,
        tenant: Option<&TenantId>,
        page: &PageRequest,
    ) -> Result<Page<PermissionRecord>> {
        let q = page.parse()?;
        let after = q.after.as_deref().map(permission_cursor).transpose()?;
        let rows = self
            .store
            .list_permissions(principal, tenant, after.as_ref(), q.fetch())
            .await?;
        let keys: Vec<String> = rows
            .iter()
            .map(|p| format!("{}/{}/{}", p.principal, p.tenant, p.provider.as_str()))
            .collect();
        let page = Page::from_rows(rows.into_iter().zip(keys).collect(), &q, |(_, k)| k);
        Ok(page.map(|(p, _)| p))
    }

    pub async fn list_audit_events(
        &self,
        tenant: Option<&str>,
        principal: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<AuditRecord>> {
        let q = page.parse()?;
        let before = q
            .after
            .as_deref()
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| {
                    InvalidInput::new("page_token", "is not a token from a previous page")
                })
            })
            .transpose()?;
        let rows = self
            .store
            .list_audit_events(tenant, principal, before, q.fetch())
            .await?;
        let keys: Vec<String> = rows.iter().map(|e| e.id.to_string()).collect();
        let page = Page::from_rows(rows.into_iter().zip(keys).collect(), &q, |(_, k)| k);
        Ok(page.map(|(e, _)| e))
    }
}

/// The permission a page token names: `principal/tenant/provider` (slugs hold no `/`).
fn permission_cursor(s: &str) -> Result<PermissionRecord, InvalidInput> {
    let bad = || InvalidInput::new("page_token", "is not a token from a previous page");
    let mut parts = s.splitn(3, '/');
    let (Some(p), Some(t), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(PermissionRecord {
        principal: PrincipalId::parse(p).map_err(|_| bad())?,
        tenant: TenantId::parse(t).map_err(|_| bad())?,
        provider: ProviderScope::parse(v).map_err(|_| bad())?,
    })
}
