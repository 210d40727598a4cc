//! The caller administration part of `AdminService`: principals, API keys, permissions
//! and the audit log, converted between proto and `access::Callers`.

use secrecy::ExposeSecret;
use tokenvend_core::{
    access::{Callers, NewPrincipal},
    ids::{PrincipalId, TenantId},
    input::InvalidInput,
    paging::{Page, PageRequest},
    store::{ApiKeyRecord, AuditRecord, PermissionRecord, PrincipalRecord, ProviderScope, Role},
};
use tokenvend_proto::v1::{self as pb};
use tonic::{Request, Status};

use super::{invalid, status, timestamp};
use crate::auth::audit_target;

fn principal_id(value: String) -> Result<PrincipalId, Status> {
    PrincipalId::parse(value).map_err(invalid)
}

/// An optional filter: empty means any.
fn filter<T>(
    value: String,
    parse: impl FnOnce(String) -> Result<T, InvalidInput>,
) -> Result<Option<T>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some).map_err(invalid)
    }
}

fn role_from_pb(v: i32) -> Result<Role, Status> {
    match pb::Role::try_from(v) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Caller) => Ok(Role::Caller),
        _ => Err(invalid(InvalidInput::new(
            "role",
            "must be ROLE_ADMIN or ROLE_CALLER",
        ))),
    }
}

fn role_pb(r: Role) -> i32 {
    match r {
        Role::Admin => pb::Role::Admin,
        Role::Caller => pb::Role::Caller,
    }
    .into()
}

fn principal_pb(p: PrincipalRecord) -> pb::Principal {
    let PrincipalRecord {
        id: _,
        name,
        role,
        description,
        certificate_identity,
        created_at,
    } = p;
    pb::Principal {
        principal: name.to_string(),
        role: role_pb(role),
        description,
        created_at: Some(timestamp(created_at)),
        certificate_identity: certificate_identity.unwrap_or_default(),
    }
}

fn api_key_pb(k: ApiKeyRecord) -> pb::ApiKey {
    let ApiKeyRecord {
        key_id,
        principal,
        key_sha256: _, // never leaves the server
        created_at,
        expires_at,
        last_used_at,
    } = k;
    pb::ApiKey {
        key_id,
        principal: principal.to_string(),
        created_at: Some(timestamp(created_at)),
        expires_at: expires_at.map(timestamp),
        last_used_at: last_used_at.map(timestamp),
    }
}

fn permission_pb(p: PermissionRecord) -> pb::Permission {
    pb::Permission {
        principal: p.principal.to_string(),
        tenant: p.tenant.to_string(),
        provider: p.provider.as_str().to_owned(),
    }
}

fn permission(
    principal: String,
    tenant: String,
    provider: String,
) -> Result<PermissionRecord, Status> {
    Ok(PermissionRecord {
        principal: principal_id(principal)?,
        tenant: TenantId::parse(tenant).map_err(invalid)?,
        provider: ProviderScope::parse(provider).map_err(invalid)?,
    })
}

fn audit_event_pb(e: AuditRecord) -> pb::AuditEvent {
    let AuditRecord {
        id: _,
        time,
        principal,
        action,
        tenant,
        provider,
        subject,
        outcome,
        peer,
    } = e;
    pb::AuditEvent {
        time: Some(timestamp(time)),
        principal,
        action,
        tenant,
        provider,
        subject,
        outcome,
        peer,
    }
}

fn time_from_pb(
    field: &'static str,
    t: prost_types::Timestamp,
) -> Result<time::OffsetDateTime, Status> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| invalid(InvalidInput::new(field, "is not a valid time")))
}

pub async fn create_principal(
    callers: &Callers,
    req: Request<pb::CreatePrincipalRequest>,
) -> Result<pb::Principal, Status> {
    audit_target(&req, "", "", &req.get_ref().principal);
    let pb::CreatePrincipalRequest {
        principal,
        role,
        description,
        certificate_identity,
    } = req.into_inner();
    let created = callers
        .create_principal(NewPrincipal {
            name: principal_id(principal)?,
            role: role_from_pb(role)?,
            description,
            certificate_identity: Some(certificate_identity),
        })
        .await
        .map_err(status)?;
    Ok(principal_pb(created))
}

pub async fn get_principal(
    callers: &Callers,
    req: Request<pb::GetPrincipalRequest>,
) -> Result<pb::Principal, Status> {
    let pb::GetPrincipalRequest { principal } = req.into_inner();
    let p = callers
        .get_principal(&principal_id(principal)?)
        .await
        .map_err(status)?;
    Ok(principal_pb(p))
}

pub async fn list_principals(
    callers: &Callers,
    req: Request<pb::ListPrincipalsRequest>,
) -> Result<pb::ListPrincipalsResponse, Status> {
    let pb::ListPrincipalsRequest {
        page_size,
        page_token,
    } = req.into_inner();
    let Page {
        items,
        next_page_token,
    } = callers
        .list_principals(&PageRequest {
            page_size,
            page_token,
        })
        .await
        .map_err(status)?;
    Ok(pb::ListPrincipalsResponse {
        principals: items.into_iter().map(principal_pb).collect(),
        next_page_token,
    })
}

pub async fn delete_principal(
    callers: &Callers,
    req: Request<pb::DeletePrincipalRequest>,
) -> Result<pb::DeletePrincipalResponse, Status> {
    audit_target(&req, "", "", &req.get_ref().principal);
    let pb::DeletePrincipalRequest { principal } = req.into_inner();
    let keys = callers
        .delete_principal(&principal_id(principal)?)
        .await
        .map_err(status)?;
    Ok(pb::DeletePrincipalResponse {
        revoked_api_keys: keys as i64,
    })
}

pub async fn create_api_key(
    callers: &Callers,
    req: Request<pb::CreateApiKeyRequest>,
) -> Result<pb::CreateApiKeyResponse, Status> {
    audit_target(&req, "", "", &req.get_ref().principal);
    let pb::CreateApiKeyRequest {
        principal,
        expires_at,
    } = req.into_inner();
    let expires_at = expires_at
        .map(|t| time_from_pb("expires_at", t))
        .transpose()?;
    let created = callers
        .create_api_key(&principal_id(principal)?, expires_at)
        .await
        .map_err(status)?;
    tracing::info!(key_id = %created.record.key_id, principal = %created.record.principal, "API key created");
    Ok(pb::CreateApiKeyResponse {
        key_id: created.record.key_id,
        api_key: created.api_key.expose_secret().to_owned(),
        expires_at: created.record.expires_at.map(timestamp),
    })
}

pub async fn list_api_keys(
    callers: &Callers,
    req: Request<pb::ListApiKeysRequest>,
) -> Result<pb::ListApiKeysResponse, Status> {
    let pb::ListApiKeysRequest {
        principal,
        page_size,
        page_token,
    } = req.into_inner();
    let Page {
        items,
        next_page_token,
    } = callers
        .list_api_keys(
            &principal_id(principal)?,
            &PageRequest {
                page_size,
                page_token,
            },
        )
        .await
        .map_err(status)?;
    Ok(pb::ListApiKeysResponse {
        api_keys: items.into_iter().map(api_key_pb).collect(),
        next_page_token,
    })
}

pub async fn revoke_api_key(
    callers: &Callers,
    req: Request<pb::RevokeApiKeyRequest>,
) -> Result<pb::RevokeApiKeyResponse, Status> {
    audit_target(&req, "", "", &req.get_ref().key_id);
    let pb::RevokeApiKeyRequest { key_id } = req.into_inner();
    callers.revoke_api_key(&key_id).await.map_err(status)?;
    tracing::info!(key_id = %key_id, "API key revoked");
    Ok(pb::RevokeApiKeyResponse {})
}

pub async fn grant_permission(
    callers: &Callers,
    req: Request<pb::GrantPermissionRequest>,
) -> Result<pb::Permission, Status> {
    let r = req.get_ref();
    audit_target(&req, &r.tenant, &r.provider, &r.principal);
    let pb::GrantPermissionRequest {
        principal,
        tenant,
        provider,
    } = req.into_inner();
    let granted = callers
        .grant_permission(permission(principal, tenant, provider)?)
        .await
        .map_err(status)?;
    Ok(permission_pb(granted))
}

pub async fn revoke_permission(
    callers: &Callers,
    req: Request<pb::RevokePermissionRequest>,
) -> Result<pb::RevokePermissionResponse, Status> {
    let r = req.get_ref();
    audit_target(&req, &r.tenant, &r.provider, &r.principal);
    let pb::RevokePermissionRequest {
        principal,
        tenant,
        provider,
    } = req.into_inner();
    callers
        .revoke_permission(&permission(principal, tenant, provider)?)
        .await
        .map_err(status)?;
    Ok(pb::RevokePermissionResponse {})
}

pub async fn list_permissions(
    callers: &Callers,
    req: Request<pb::ListPermissionsRequest>,
) -> Result<pb::ListPermissionsResponse, Status> {
    let pb::ListPermissionsRequest {
        principal,
        tenant,
        page_size,
        page_token,
    } = req.into_inner();
    let principal = filter(principal, PrincipalId::parse)?;
    let tenant = filter(tenant, TenantId::parse)?;
    let Page {
        items,
        next_page_token,
    } = callers
        .list_permissions(
            principal.as_ref(),
            tenant.as_ref(),
            &PageRequest {
                page_size,
                page_token,
            },
        )
        .await
        .map_err(status)?;
    Ok(pb::ListPermissionsResponse {
        permissions: items.into_iter().map(permission_pb).collect(),
        next_page_token,
    })
}

pub async fn list_audit_events(
    callers: &Callers,
    req: Request<pb::ListAuditEventsRequest>,
) -> Result<pb::ListAuditEventsResponse, Status> {
    let pb::ListAuditEventsRequest {
        tenant,
        principal,
        page_size,
        page_token,
    } = req.into_inner();
    let Page {
        items,
        next_page_token,
    } = callers
        .list_audit_events(
            Some(tenant.as_str()).filter(|t| !t.is_empty()),
            Some(principal.as_str()).filter(|p| !p.is_empty()),
            &PageRequest {
                page_size,
                page_token,
            },
        )
        .await
        .map_err(status)?;
    Ok(pb::ListAuditEventsResponse {
        events: items.into_iter().map(audit_event_pb).collect(),
        next_page_token,
    })
}
