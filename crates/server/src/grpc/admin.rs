//! `tokenvend.v1.AdminService`: tenants, connections, the provider catalog and end users'
//! grants. Responses never carry a secret.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokenvend_core::{
    access::Callers,
    admin::{Admin, ConnectionView, PutConnection},
    catalog::ClientAuth,
    catalog::{TEMPLATES, Template},
    connection::ConnectionSettings,
    grants::{GrantView, Grants},
    ids::{ConnectionKey, ProviderId, Subject, TenantId},
    paging::{Page, PageRequest},
    store::TenantRecord,
};
use tokenvend_proto::v1::{
    self as pb, CompleteAuthorizationRequest, CreateTenantRequest, DeleteConnectionRequest,
    DeleteConnectionResponse, DeleteTenantRequest, DeleteTenantResponse, GetConnectionRequest,
    GetGrantRequest, GetTenantRequest, ListConnectionGrantsRequest, ListConnectionGrantsResponse,
    ListConnectionsRequest, ListConnectionsResponse, ListTemplatesRequest, ListTemplatesResponse,
    ListTenantsRequest, ListTenantsResponse, PutConnectionRequest, RevokeGrantRequest,
    RevokeGrantResponse, RotateClientSecretRequest, StartAuthorizationRequest,
    StartAuthorizationResponse, admin_service_server::AdminService,
};
use tonic::{Request, Response, Status};

use super::{callers, invalid, status, timestamp};
use crate::auth::{AuditTarget, audit_target};

pub struct AdminApi {
    admin: Arc<Admin>,
    grants: Arc<Grants>,
    callers: Arc<Callers>,
}

impl AdminApi {
    pub fn new(admin: Arc<Admin>, grants: Arc<Grants>, callers: Arc<Callers>) -> Self {
        Self {
            admin,
            grants,
            callers,
        }
    }
}

fn grant_pb(v: GrantView) -> pb::Grant {
    let GrantView {
        tenant,
        provider,
        record,
    } = v;
    pb::Grant {
        tenant: tenant.to_string(),
        provider: provider.to_string(),
        subject: record.subject,
        scopes: record.scopes,
        status: record.status.as_str().to_owned(),
        has_refresh_token: record.refresh_token.is_some(),
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
    }
}

fn template_pb(t: &Template) -> pb::Template {
    pb::Template {
        name: t.name.to_owned(),
        description: t.description.to_owned(),
        params: t
            .params
            .iter()
            .map(|p| pb::TemplateParam {
                name: p.name.to_owned(),
                description: p.description.to_owned(),
                required: p.required,
                allowed_values: p.allowed.iter().map(|v| (*v).to_owned()).collect(),
            })
            .collect(),
        token_url: t.token_url.unwrap_or_default().to_owned(),
        authorize_url: t.authorize_url.unwrap_or_default().to_owned(),
        revocation_url: t.revocation_url.unwrap_or_default().to_owned(),
        client_auth: client_auth_pb(t.client_auth),
        user_grant_client_auth: client_auth_pb(t.user_grant_client_auth),
        scopes: t.scopes.iter().map(|s| (*s).to_owned()).collect(),
        default_expires_in_seconds: t.default_expires_in_secs as i64,
        required_fields: t.required_fields.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn tenant_pb(t: TenantRecord) -> pb::Tenant {
    pb::Tenant {
        tenant: t.slug.to_string(),
        display_name: t.display_name,
        create_time: Some(timestamp(t.created_at)),
    }
}

fn client_auth_from_pb(v: i32) -> Result<ClientAuth, Status> {
    match pb::ClientAuth::try_from(v) {
        Ok(pb::ClientAuth::Unspecified) => Ok(ClientAuth::Unspecified),
        Ok(pb::ClientAuth::Basic) => Ok(ClientAuth::Basic),
        Ok(pb::ClientAuth::Post) => Ok(ClientAuth::Post),
        Err(_) => Err(invalid(tokenvend_core::InvalidInput::new(
            "client_auth",
            "must be CLIENT_AUTH_UNSPECIFIED, CLIENT_AUTH_BASIC or CLIENT_AUTH_POST",
        ))),
    }
}

fn client_auth_pb(a: ClientAuth) -> i32 {
    match a {
        ClientAuth::Unspecified => pb::ClientAuth::Unspecified,
        ClientAuth::Basic => pb::ClientAuth::Basic,
        ClientAuth::Post => pb::ClientAuth::Post,
    }
    .into()
}

fn connection_pb(v: ConnectionView) -> pb::Connection {
    let ConnectionView {
        record,
        settings,
        effective,
        credential_kind,
        refresh,
    } = v;
    let ConnectionSettings {
        template,
        template_params,
        token_url,
        authorize_url,
        revocation_url,
        client_auth,
        client_id,
        scopes,
        audience,
        extra_params,
        redirect_uri,
        default_expires_in_secs: _, // shown as the effective value below
        propagate_trace_context,
    } = settings;
    let url = |u: Option<url::Url>| u.map(String::from).unwrap_or_default();
    pb::Connection {
        tenant: record.tenant.to_string(),
        provider: record.provider.to_string(),
        template: if template.is_empty() {
            "generic".to_owned()
        } else {
            template
        },
        template_params: template_params.into_iter().collect(),
        token_url,
        authorize_url,
        revocation_url,
        client_auth: client_auth_pb(client_auth),
        client_id,
        scopes,
        audience,
        extra_params: extra_params.into_iter().collect(),
        redirect_uri,
        effective_token_url: url(effective.token_url),
        effective_authorize_url: url(effective.authorize_url),
        effective_revocation_url: url(effective.revocation_url),
        effective_client_auth: client_auth_pb(effective.client_auth),
        credential_kind: credential_kind.to_owned(),
        secret_fingerprint: record.secret_fingerprint,
        version: record.version,
        default_expires_in_seconds: effective.default_expires_in.as_secs() as i64,
        propagate_trace_context,
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
        refresh_state: refresh.map(|r| pb::RefreshState {
            last_refresh_time: r.history.refreshed_at.map(timestamp),
            next_refresh_time: r.next_refresh_at.map(timestamp),
            consecutive_failures: r.history.failures,
            last_error_class: r
                .history
                .last_failure
                .as_ref()
                .map(|(class, _)| class.clone())
                .unwrap_or_default(),
            last_error_time: r.history.last_failure.map(|(_, at)| timestamp(at)),
        }),
    }
}

fn connection_key(tenant: String, provider: String) -> Result<ConnectionKey, Status> {
    Ok(ConnectionKey {
        tenant: TenantId::parse(tenant).map_err(invalid)?,
        provider: ProviderId::parse(provider).map_err(invalid)?,
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant))]
    async fn create_tenant(
        &self,
        req: Request<CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        audit_target(&req, &req.get_ref().tenant, "", "");
        let CreateTenantRequest {
            tenant,
            display_name,
        } = req.into_inner();
        let slug = TenantId::parse(tenant).map_err(invalid)?;
        let t = self
            .admin
            .create_tenant(slug, display_name)
            .await
            .map_err(status)?;
        tracing::info!("tenant created");
        Ok(Response::new(tenant_pb(t)))
    }

    async fn get_tenant(
        &self,
        req: Request<GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let GetTenantRequest { tenant } = req.into_inner();
        let slug = TenantId::parse(tenant).map_err(invalid)?;
        let t = self.admin.get_tenant(&slug).await.map_err(status)?;
        Ok(Response::new(tenant_pb(t)))
    }

    async fn list_tenants(
        &self,
        req: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let ListTenantsRequest {
            page_size,
            page_token,
        } = req.into_inner();
        let Page {
            items: tenants,
            next_page_token,
        } = self
            .admin
            .list_tenants(&PageRequest {
                page_size,
                page_token,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(ListTenantsResponse {
            tenants: tenants.into_iter().map(tenant_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant))]
    async fn delete_tenant(
        &self,
        req: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        audit_target(&req, &req.get_ref().tenant, "", "");
        let DeleteTenantRequest { tenant, force } = req.into_inner();
        let slug = TenantId::parse(tenant).map_err(invalid)?;
        let revoked = self
            .admin
            .delete_tenant(&slug, force)
            .await
            .map_err(status)?;
        tracing::info!(
            grants_revoked = revoked.at_provider,
            grants_deleted_locally = revoked.locally,
            "tenant deleted"
        );
        Ok(Response::new(DeleteTenantResponse {
            grants_revoked: revoked.at_provider as i32,
            grants_deleted_locally: revoked.locally as i32,
            warning: revoked.warning,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn put_connection(
        &self,
        req: Request<PutConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        audit_target(&req, &req.get_ref().tenant, &req.get_ref().provider, "");
        let PutConnectionRequest {
            tenant,
            provider,
            template,
            template_params,
            token_url,
            authorize_url,
            revocation_url,
            client_auth,
            client_id,
            client_secret,
            api_key,
            scopes,
            audience,
            extra_params,
            redirect_uri,
            default_expires_in_seconds,
            propagate_trace_context,
        } = req.into_inner();
        let put = PutConnection {
            key: connection_key(tenant, provider)?,
            settings: ConnectionSettings {
                template,
                template_params: template_params.into_iter().collect(),
                token_url,
                authorize_url,
                revocation_url,
                client_auth: client_auth_from_pb(client_auth)?,
                client_id,
                scopes,
                audience,
                extra_params: extra_params.into_iter().collect(),
                redirect_uri,
                default_expires_in_secs: default_expires_in_seconds.unwrap_or(0),
                propagate_trace_context,
            },
            client_secret: Some(SecretString::from(client_secret)),
            api_key: Some(SecretString::from(api_key)),
        };
        let view = self.admin.put_connection(put).await.map_err(status)?;
        tracing::info!(version = view.record.version, "connection put");
        Ok(Response::new(connection_pb(view)))
    }

    async fn get_connection(
        &self,
        req: Request<GetConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let GetConnectionRequest { tenant, provider } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let view = self.admin.get_connection(&key).await.map_err(status)?;
        Ok(Response::new(connection_pb(view)))
    }

    async fn list_connections(
        &self,
        req: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let ListConnectionsRequest {
            tenant,
            page_size,
            page_token,
        } = req.into_inner();
        let slug = TenantId::parse(tenant).map_err(invalid)?;
        let Page {
            items: views,
            next_page_token,
        } = self
            .admin
            .list_connections(
                &slug,
                &PageRequest {
                    page_size,
                    page_token,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListConnectionsResponse {
            connections: views.into_iter().map(connection_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn delete_connection(
        &self,
        req: Request<DeleteConnectionRequest>,
    ) -> Result<Response<DeleteConnectionResponse>, Status> {
        audit_target(&req, &req.get_ref().tenant, &req.get_ref().provider, "");
        let DeleteConnectionRequest {
            tenant,
            provider,
            force,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let revoked = self
            .admin
            .delete_connection(&key, force)
            .await
            .map_err(status)?;
        tracing::info!(
            grants_revoked = revoked.at_provider,
            grants_deleted_locally = revoked.locally,
            "connection deleted"
        );
        Ok(Response::new(DeleteConnectionResponse {
            grants_revoked: revoked.at_provider as i32,
            grants_deleted_locally: revoked.locally as i32,
            warning: revoked.warning,
        }))
    }

    async fn list_templates(
        &self,
        req: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        let ListTemplatesRequest {} = req.into_inner();
        Ok(Response::new(ListTemplatesResponse {
            templates: TEMPLATES.iter().map(template_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn rotate_client_secret(
        &self,
        req: Request<RotateClientSecretRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        audit_target(&req, &req.get_ref().tenant, &req.get_ref().provider, "");
        let RotateClientSecretRequest {
            tenant,
            provider,
            client_secret,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let view = self
            .admin
            .rotate_client_secret(&key, SecretString::from(client_secret))
            .await
            .map_err(status)?;
        Ok(Response::new(connection_pb(view)))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn start_authorization(
        &self,
        req: Request<StartAuthorizationRequest>,
    ) -> Result<Response<StartAuthorizationResponse>, Status> {
        audit_target(
            &req,
            &req.get_ref().tenant,
            &req.get_ref().provider,
            &req.get_ref().subject,
        );
        let StartAuthorizationRequest {
            tenant,
            provider,
            subject,
            scopes,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let subject = Subject::parse(subject).map_err(invalid)?;
        let started = self
            .grants
            .start(&key, subject, scopes)
            .await
            .map_err(status)?;
        Ok(Response::new(StartAuthorizationResponse {
            authorization_url: started.authorization_url.to_string(),
            state: started.state.expose_secret().to_owned(),
            expires_at: Some(timestamp(started.expires_at)),
            redirect_uri: started.redirect_uri,
        }))
    }

    async fn complete_authorization(
        &self,
        req: Request<CompleteAuthorizationRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let target = req.extensions().get::<AuditTarget>().cloned();
        let CompleteAuthorizationRequest { state, code } = req.into_inner();
        let grant = self.grants.complete(&state, &code).await.map_err(status)?;
        if let Some(t) = target {
            t.set(
                grant.tenant.as_str(),
                grant.provider.as_str(),
                &grant.record.subject,
            );
        }
        Ok(Response::new(grant_pb(grant)))
    }

    async fn get_grant(
        &self,
        req: Request<GetGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let GetGrantRequest {
            tenant,
            provider,
            subject,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let subject = Subject::parse(subject).map_err(invalid)?;
        let grant = self.grants.get(&key, &subject).await.map_err(status)?;
        Ok(Response::new(grant_pb(grant)))
    }

    async fn list_connection_grants(
        &self,
        req: Request<ListConnectionGrantsRequest>,
    ) -> Result<Response<ListConnectionGrantsResponse>, Status> {
        let ListConnectionGrantsRequest {
            tenant,
            provider,
            page_size,
            page_token,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let Page {
            items: grants,
            next_page_token,
        } = self
            .grants
            .list(
                &key,
                &PageRequest {
                    page_size,
                    page_token,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ListConnectionGrantsResponse {
            grants: grants.into_iter().map(grant_pb).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn revoke_grant(
        &self,
        req: Request<RevokeGrantRequest>,
    ) -> Result<Response<RevokeGrantResponse>, Status> {
        audit_target(
            &req,
            &req.get_ref().tenant,
            &req.get_ref().provider,
            &req.get_ref().subject,
        );
        let RevokeGrantRequest {
            tenant,
            provider,
            subject,
            force,
        } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        let subject = Subject::parse(subject).map_err(invalid)?;
        let revoked = self
            .grants
            .revoke(&key, &subject, force)
            .await
            .map_err(status)?;
        Ok(Response::new(RevokeGrantResponse {
            revoked_at_provider: revoked.at_provider > 0,
            warning: revoked.warning,
        }))
    }

    async fn create_principal(
        &self,
        req: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        callers::create_principal(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn get_principal(
        &self,
        req: Request<pb::GetPrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        callers::get_principal(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn list_principals(
        &self,
        req: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        callers::list_principals(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn delete_principal(
        &self,
        req: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        callers::delete_principal(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        callers::create_api_key(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        callers::list_api_keys(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        callers::revoke_api_key(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn grant_permission(
        &self,
        req: Request<pb::GrantPermissionRequest>,
    ) -> Result<Response<pb::Permission>, Status> {
        callers::grant_permission(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn revoke_permission(
        &self,
        req: Request<pb::RevokePermissionRequest>,
    ) -> Result<Response<pb::RevokePermissionResponse>, Status> {
        callers::revoke_permission(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn list_permissions(
        &self,
        req: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        callers::list_permissions(&self.callers, req)
            .await
            .map(Response::new)
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        callers::list_audit_events(&self.callers, req)
            .await
            .map(Response::new)
    }
}
