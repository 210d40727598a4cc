//! `tokenvend.v1.AdminService`: tenants and connections. Responses never carry a secret.

use std::sync::Arc;

use secrecy::SecretString;
use tokenvend_core::{
    admin::{Admin, ConnectionView, PageRequest, PutConnection},
    connection::{ClientAuth, ConnectionSettings},
    ids::{ConnectionKey, ProviderId, TenantId},
    store::TenantRecord,
};
use tokenvend_proto::v1::{
    self as pb, CreateTenantRequest, DeleteConnectionRequest, DeleteConnectionResponse,
    DeleteTenantRequest, DeleteTenantResponse, GetConnectionRequest, GetTenantRequest,
    ListConnectionsRequest, ListConnectionsResponse, ListTenantsRequest, ListTenantsResponse,
    PutConnectionRequest, admin_service_server::AdminService,
};
use tonic::{Request, Response, Status};

use super::{invalid, status, timestamp};

pub struct AdminApi {
    admin: Arc<Admin>,
}

impl AdminApi {
    pub fn new(admin: Arc<Admin>) -> Self {
        Self { admin }
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
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
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
        let (tenants, next_page_token) = self
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
        let DeleteTenantRequest { tenant } = req.into_inner();
        let slug = TenantId::parse(tenant).map_err(invalid)?;
        self.admin.delete_tenant(&slug).await.map_err(status)?;
        tracing::info!("tenant deleted");
        Ok(Response::new(DeleteTenantResponse {}))
    }

    #[tracing::instrument(skip_all, fields(tenant = %req.get_ref().tenant, provider = %req.get_ref().provider))]
    async fn put_connection(
        &self,
        req: Request<PutConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
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
        let (views, next_page_token) = self
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
        let DeleteConnectionRequest { tenant, provider } = req.into_inner();
        let key = connection_key(tenant, provider)?;
        self.admin.delete_connection(&key).await.map_err(status)?;
        tracing::info!("connection deleted");
        Ok(Response::new(DeleteConnectionResponse {}))
    }
}
