//! Test helpers (feature `test-util`): stand-ins for ports whose use would be a bug.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    ids::{ConnectionKey, PrincipalId, TenantId},
    store::{
        AccessRecords, ApiKeyRecord, AuditRecord, ConnectionRecord, DataKeyStore, GrantRecord,
        GrantStatus, Lease, LeaseEnd, LeaseWrite, PendingAuthorization, PermissionRecord,
        PrincipalRecord, Published, RecentFailure, Store, StoreError, TenantRecord, TokenRecord,
        WrappedDek,
    },
};

/// A store that fails the test on any use: proves a path (the cache hit) never touches
/// the database.
pub struct UnreachableStore;

#[async_trait]
impl DataKeyStore for UnreachableStore {
    async fn insert_data_key(&self, _: &WrappedDek) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_data_key(&self, _: Uuid) -> Result<Option<WrappedDek>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn master_key_uses(&self) -> Result<Vec<crate::store::MasterKeyUse>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn data_keys_not_wrapped_by(
        &self,
        _: &str,
        _: Option<Uuid>,
        _: u32,
    ) -> Result<Vec<WrappedDek>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn rewrap_data_key(&self, _: &str, _: &WrappedDek) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
}

#[async_trait]
impl crate::store::AccessStore for UnreachableStore {
    async fn create_principal(&self, _: &PrincipalRecord, _: &Published) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_principal(&self, _: &PrincipalId) -> Result<Option<PrincipalRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_principals(
        &self,
        _: Option<&str>,
        _: u32,
    ) -> Result<Vec<PrincipalRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_principal(
        &self,
        _: &PrincipalId,
        _: &Published,
    ) -> Result<Option<u64>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn insert_api_key(&self, _: &ApiKeyRecord, _: &Published) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_api_keys(
        &self,
        _: &PrincipalId,
        _: Option<&str>,
        _: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_api_key(&self, _: &str, _: &Published) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn touch_api_keys(&self, _: &[(String, time::OffsetDateTime)]) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn put_permission(&self, _: &PermissionRecord, _: &Published) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_permission(
        &self,
        _: &PermissionRecord,
        _: &Published,
    ) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_permissions(
        &self,
        _: Option<&PrincipalId>,
        _: Option<&TenantId>,
        _: Option<&PermissionRecord>,
        _: u32,
    ) -> Result<Vec<PermissionRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn load_access(&self) -> Result<AccessRecords, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn insert_audit_events(&self, _: &[AuditRecord]) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_audit_events(
        &self,
        _: Option<&str>,
        _: Option<&str>,
        _: Option<Uuid>,
        _: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn purge_audit_events(&self, _: time::OffsetDateTime, _: u32) -> Result<u64, StoreError> {
        unreachable!("the store must not be used here")
    }
}

#[async_trait]
impl Store for UnreachableStore {
    async fn ping(&self) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn create_tenant(&self, _: &TenantRecord) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_tenant(&self, _: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_tenants(&self, _: Option<&str>, _: u32) -> Result<Vec<TenantRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_tenant(&self, _: &TenantId, _: &str) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_connection(
        &self,
        _: &ConnectionKey,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_connection_by_id(&self, _: Uuid) -> Result<Option<ConnectionRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_connections(
        &self,
        _: &TenantId,
        _: Option<&str>,
        _: u32,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn put_connection(
        &self,
        _: &ConnectionRecord,
        _: Option<i64>,
        _: &Published,
    ) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_connection(
        &self,
        _: &ConnectionKey,
        _: &Published,
    ) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn load_token(&self, _: Uuid, _: &str) -> Result<Option<TokenRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn invalidate_token(
        &self,
        _: Uuid,
        _: &str,
        _: &[u8],
        _: &Published,
    ) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn insert_pending_authorization(
        &self,
        _: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn take_pending_authorization(
        &self,
        _: &[u8],
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_expired_authorizations(
        &self,
        _: time::OffsetDateTime,
    ) -> Result<u64, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn get_grant(&self, _: Uuid, _: &str) -> Result<Option<GrantRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn list_grants(
        &self,
        _: Uuid,
        _: Option<&str>,
        _: u32,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn put_grant(
        &self,
        _: &GrantRecord,
        _: bool,
        _: Option<&TokenRecord>,
        _: &Published,
    ) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn set_grant_status(
        &self,
        _: Uuid,
        _: i64,
        _: GrantStatus,
        _: time::OffsetDateTime,
    ) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn delete_grant(&self, _: Uuid, _: &str, _: &Published) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn try_lease(
        &self,
        _: Uuid,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn mark_refresh_attempt(
        &self,
        _: Uuid,
        _: &str,
        _: crate::store::Lease,
        _: std::time::Duration,
    ) -> Result<Option<crate::store::AttemptMark>, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn renew_lease(
        &self,
        _: Uuid,
        _: &str,
        _: i64,
        _: std::time::Duration,
    ) -> Result<bool, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn release_leases(&self, _: &str) -> Result<u64, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn finish_lease(
        &self,
        _: Uuid,
        _: &str,
        _: i64,
        _: LeaseEnd<'_>,
        _: &Published,
    ) -> Result<LeaseWrite, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn recent_failure(&self, _: Uuid, _: &str) -> Result<Option<RecentFailure>, StoreError> {
        unreachable!("the store must not be used here")
    }

    async fn refresh_history(&self, _: Uuid) -> Result<crate::store::RefreshHistory, StoreError> {
        unreachable!("the store must not be used here")
    }
    async fn publish(&self, _: &Published) -> Result<(), StoreError> {
        unreachable!("the store must not be used here")
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published> {
        unreachable!("the store must not be used here")
    }
}

/// A vendor whose cache holds `key` → `token`, with a store and provider that must never be
/// reached: for benchmarks and tests of the hot path.
pub fn warm_vendor(
    key: &crate::ids::TokenKey,
    token: std::sync::Arc<crate::cache::CachedToken>,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) -> crate::vend::Vendor {
    use std::sync::Arc;
    let store: Arc<dyn Store> = Arc::new(UnreachableStore);
    let ring = crate::crypto::KeyRing::parse(&crate::crypto::KeyRing::generate_entry("k"))
        .expect("key ring");
    let cache = Arc::new(crate::cache::TokenCache::new());
    cache.insert_if_current(key.clone(), token, cache.epoch(&key.connection()));
    let deps = crate::Deps {
        envelope: Arc::new(crate::crypto::Envelope::new(ring, store.clone())),
        cache,
        client: crate::oauth::TokenClient::new(Default::default()).expect("http client"),
        clock,
        notifier: crate::events::Notifier::new("test"),
        store,
    };
    crate::vend::Vendor::new(deps, Default::default())
}
