//! The authorization decision, in memory: who a presented key (or client certificate) is,
//! and whether that principal may do what it asks. A call never waits on the database for
//! it; the snapshot is rebuilt from the store when any replica announces a change
//! (`AccessChanged` on the change feed), on a feed gap, and on a periodic safety reload.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
// Seeded foldhash: every call looks up a key id and a (tenant, provider) pair here.
use foldhash::{HashMap, HashMapExt, HashSet};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::keys;
use crate::{
    clock::Clock,
    error::Error,
    ids::PrincipalId,
    store::{AccessRecords, ProviderScope, Role, Store, StoreError, StoreEvent},
};

/// The name audit events and logs give the bootstrap admin key.
pub const BOOTSTRAP: &str = "bootstrap";

/// `last_used_at` moves in steps of this much: one atomic write per key per step, and one
/// row update per step and replica, however many calls.
const LAST_USED_STEP_SECS: i64 = 60;

/// An authenticated caller as the decision sees it.
#[derive(Debug)]
pub struct Principal {
    pub name: PrincipalId,
    pub role: Role,
    /// Tenant slug → what it may get there (callers only).
    tenants: HashMap<String, TenantAccess>,
}

#[derive(Debug, Default)]
struct TenantAccess {
    every_provider: bool,
    providers: HashSet<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether it may get tokens of (tenant, provider). Decided on the names as asked, before
    /// anything is looked up, so a tenant that does not exist gets the same answer as one
    /// the caller may not see.
    pub fn may_get_token(&self, tenant: &str, provider: &str) -> bool {
        self.is_admin()
            || self
                .tenants
                .get(tenant)
                .is_some_and(|t| t.every_provider || t.providers.contains(provider))
    }
}

struct KeyEntry {
    sha256: [u8; 32],
    principal: Arc<Principal>,
    expires_at: Option<OffsetDateTime>,
    /// Unix seconds of the last use seen here, and of the last one written to the store.
    /// Kept across reloads (by key id), so a reload loses no use.
    used: Arc<(AtomicI64, AtomicI64)>,
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, KeyEntry>,
    certificates: HashMap<String, Arc<Principal>>,
}

impl Snapshot {
    fn build(records: AccessRecords, previous: &Snapshot) -> Self {
        let mut tenants: HashMap<&PrincipalId, HashMap<String, TenantAccess>> = HashMap::new();
        for p in &records.permissions {
            let access = tenants
                .entry(&p.principal)
                .or_default()
                .entry(p.tenant.as_str().to_owned())
                .or_default();
            match &p.provider {
                ProviderScope::Any => access.every_provider = true,
                ProviderScope::One(provider) => {
                    access.providers.insert(provider.as_str().to_owned());
                }
            }
        }
        let mut principals = HashMap::new();
        let mut certificates = HashMap::new();
        for p in &records.principals {
            let principal = Arc::new(Principal {
                name: p.name.clone(),
                role: p.role,
                tenants: tenants.remove(&p.name).unwrap_or_default(),
            });
            if let Some(identity) = &p.certificate_identity {
                certificates.insert(identity.clone(), principal.clone());
            }
            principals.insert(p.name.clone(), principal);
        }
        let keys = records
            .api_keys
            .into_iter()
            .filter_map(|k| {
                let principal = principals.get(&k.principal)?.clone();
                let sha256: [u8; 32] = k.key_sha256.as_slice().try_into().ok()?;
                let used = previous.keys.get(&k.key_id).map_or_else(
                    || {
                        let stored = k.last_used_at.map_or(0, OffsetDateTime::unix_timestamp);
                        Arc::new((AtomicI64::new(stored), AtomicI64::new(stored)))
                    },
                    |e| e.used.clone(),
                );
                Some((
                    k.key_id,
                    KeyEntry {
                        sha256,
                        principal,
                        expires_at: k.expires_at,
                        used,
                    },
                ))
            })
            .collect();
        Snapshot { keys, certificates }
    }
}

/// What a caller presented, kept by a long-lived call (`WatchToken`) to be checked again
/// whenever keys or permissions change. No secret: an API key is kept by its id (its
/// digest was verified when the call began).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    ApiKey(String),
    Bootstrap,
    Certificate(Vec<String>),
}

/// Authenticates callers against the in-memory snapshot.
pub struct Authorizer {
    snapshot: ArcSwap<Snapshot>,
    bootstrap: Option<([u8; 32], Arc<Principal>)>,
    clock: Arc<dyn Clock>,
    /// Bumped on every new snapshot: long-lived calls check their caller again.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// `bootstrap_key`: `TOKENVEND_BOOTSTRAP_ADMIN_KEY`, an admin for first set-up.
    pub fn new(bootstrap_key: Option<&str>, clock: Arc<dyn Clock>) -> Self {
        let bootstrap = bootstrap_key.map(|k| {
            let principal = Principal {
                name: PrincipalId::parse(BOOTSTRAP).expect("a valid slug"),
                role: Role::Admin,
                tenants: HashMap::new(),
            };
            (keys::digest(k), Arc::new(principal))
        });
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            bootstrap,
            clock,
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes whenever the decision is rebuilt (keys, principals or permissions may differ).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// What to check again later for a caller that presented `presented` (already
    /// authenticated by [`Authorizer::authenticate_key`]).
    pub fn key_credential(&self, presented: &str) -> Credential {
        match (keys::key_id(presented), &self.bootstrap) {
            (Some(id), _) if self.snapshot.load().keys.contains_key(id) => {
                Credential::ApiKey(id.to_owned())
            }
            (_, Some((sha256, _))) if bool::from(keys::digest(presented).ct_eq(sha256)) => {
                Credential::Bootstrap
            }
            (id, _) => Credential::ApiKey(id.unwrap_or_default().to_owned()),
        }
    }

    /// The caller behind `credential` as the decision stands now: an error once its key
    /// was revoked or expired, or its certificate unbound.
    pub fn recheck(&self, credential: &Credential) -> Result<Arc<Principal>, Error> {
        match credential {
            Credential::ApiKey(id) => {
                let snapshot = self.snapshot.load();
                let entry = snapshot
                    .keys
                    .get(id)
                    .ok_or(Error::Unauthenticated("the API key was revoked"))?;
                if entry.expires_at.is_some_and(|at| at <= self.clock.now()) {
                    return Err(Error::Unauthenticated("the API key has expired"));
                }
                Ok(entry.principal.clone())
            }
            Credential::Bootstrap => {
                self.bootstrap
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .ok_or(Error::Unauthenticated(
                        "the bootstrap key is not configured",
                    ))
            }
            Credential::Certificate(identities) => {
                self.authenticate_certificate(identities)
                    .ok_or(Error::Unauthenticated(
                        "the client certificate is no longer bound to a principal",
                    ))
            }
        }
    }

    /// Rebuilds the snapshot from the store.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        self.replace(store.load_access().await?);
        Ok(())
    }

    /// Makes `records` the decision (keeping the last uses seen of keys that stay).
    pub fn replace(&self, records: AccessRecords) {
        let previous = self.snapshot.load();
        let next = Snapshot::build(records, &previous);
        self.snapshot.store(Arc::new(next));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Who presented this API key. Every comparison of key material is constant-time.
    pub fn authenticate_key(&self, presented: &str) -> Result<Arc<Principal>, Error> {
        let snapshot = self.snapshot.load();
        if let Some(entry) = keys::key_id(presented).and_then(|id| snapshot.keys.get(id)) {
            if !bool::from(keys::digest(presented).ct_eq(&entry.sha256)) {
                return Err(Error::Unauthenticated("unknown API key"));
            }
            let now = self.clock.now();
            if entry.expires_at.is_some_and(|at| at <= now) {
                return Err(Error::Unauthenticated("the API key has expired"));
            }
            let secs = now.unix_timestamp();
            let (seen, _) = &*entry.used;
            if secs - seen.load(Ordering::Relaxed) >= LAST_USED_STEP_SECS {
                seen.store(secs, Ordering::Relaxed);
            }
            return Ok(entry.principal.clone());
        }
        match &self.bootstrap {
            Some((sha256, principal)) if bool::from(keys::digest(presented).ct_eq(sha256)) => {
                Ok(principal.clone())
            }
            _ => Err(Error::Unauthenticated("unknown API key")),
        }
    }

    /// The principal bound to one of a verified client certificate's identities.
    pub fn authenticate_certificate(&self, identities: &[String]) -> Option<Arc<Principal>> {
        let snapshot = self.snapshot.load();
        identities
            .iter()
            .find_map(|i| snapshot.certificates.get(i).cloned())
    }

    /// Writes the keys' last uses seen since the previous flush (one batch).
    pub async fn flush_last_used(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let snapshot = self.snapshot.load();
        let mut due = Vec::new();
        for (id, entry) in &snapshot.keys {
            let (seen, flushed) = &*entry.used;
            let s = seen.load(Ordering::Relaxed);
            if s > flushed.load(Ordering::Relaxed)
                && let Ok(at) = OffsetDateTime::from_unix_timestamp(s)
            {
                due.push((id.clone(), at, entry.used.clone()));
            }
        }
        if due.is_empty() {
            return Ok(0);
        }
        let batch: Vec<_> = due.iter().map(|(id, at, _)| (id.clone(), *at)).collect();
        store.touch_api_keys(&batch).await?;
        for (_, at, used) in &due {
            used.1.fetch_max(at.unix_timestamp(), Ordering::Relaxed);
        }
        Ok(due.len())
    }

    /// Keeps the snapshot current until the store's feed ends: a reload on every
    /// `AccessChanged` (from any replica) or feed gap, and every `reload_every` in case a
    /// notification was lost; `last_used_at` written every `flush_every`.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        reload_every: Duration,
        flush_every: Duration,
    ) {
        let mut feed = store.subscribe();
        let mut reload_tick = tokio::time::interval(reload_every);
        let mut flush_tick = tokio::time::interval(flush_every);
        reload_tick.tick().await;
        flush_tick.tick().await;
        loop {
            let reload = tokio::select! {
                event = feed.recv() => match event {
                    Ok(p) => matches!(p.event, StoreEvent::AccessChanged | StoreEvent::Resync),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = reload_tick.tick() => true,
                _ = flush_tick.tick() => {
                    if let Err(e) = self.flush_last_used(store.as_ref()).await {
                        tracing::warn!(error = %e, "could not record API keys' last use; retrying later");
                    }
                    false
                }
            };
            if reload && let Err(e) = self.reload(store.as_ref()).await {
                // The previous decision stays in force; the next event or tick retries.
                tracing::warn!(error = %e, "could not reload callers and permissions; keeping the previous ones");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::{
        clock::ManualClock,
        ids::{ProviderId, TenantId},
        store::{ApiKeyRecord, PermissionRecord, PrincipalRecord},
    };

    fn principal(name: &str, role: Role, cert: Option<&str>) -> PrincipalRecord {
        PrincipalRecord {
            id: uuid::Uuid::new_v4(),
            name: PrincipalId::parse(name).unwrap(),
            role,
            description: String::new(),
            certificate_identity: cert.map(str::to_owned),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn key(principal: &str, expires_at: Option<OffsetDateTime>) -> (ApiKeyRecord, String) {
        let k = keys::generate().unwrap();
        (
            ApiKeyRecord {
                key_id: k.key_id,
                principal: PrincipalId::parse(principal).unwrap(),
                key_sha256: k.sha256.to_vec(),
                created_at: OffsetDateTime::UNIX_EPOCH,
                expires_at,
                last_used_at: None,
            },
            k.api_key.expose_secret().to_owned(),
        )
    }

    fn grant(principal: &str, tenant: &str, provider: &str) -> PermissionRecord {
        PermissionRecord {
            principal: PrincipalId::parse(principal).unwrap(),
            tenant: TenantId::parse(tenant).unwrap(),
            provider: ProviderScope::parse(provider).unwrap(),
        }
    }

    #[test]
    fn decides_from_keys_permissions_and_expiry() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = ManualClock::new(start);
        let auth = Authorizer::new(Some("bootstrap-key-0123"), Arc::new(clock.clone()));
        let (billing_key, billing) = key("billing", None);
        let (ops_key, ops) = key("ops", Some(start + time::Duration::hours(1)));
        let records = AccessRecords {
            principals: vec![
                principal("billing", Role::Caller, Some("spiffe://c/billing")),
                principal("ops", Role::Admin, None),
            ],
            api_keys: vec![billing_key, ops_key],
            permissions: vec![
                grant("billing", "acme", "enode"),
                grant("billing", "globex", "*"),
            ],
        };
        auth.snapshot
            .store(Arc::new(Snapshot::build(records, &Snapshot::default())));

        let caller = auth.authenticate_key(&billing).unwrap();
        assert_eq!(caller.name.as_str(), "billing");
        assert!(caller.may_get_token("acme", "enode"));
        assert!(!caller.may_get_token("acme", "edrv"));
        assert!(caller.may_get_token("globex", "anything"));
        assert!(!caller.may_get_token("initech", "enode"));
        assert!(!caller.is_admin());

        let admin = auth.authenticate_key(&ops).unwrap();
        assert!(admin.is_admin() && admin.may_get_token("initech", "enode"));
        assert_eq!(
            auth.authenticate_key("bootstrap-key-0123")
                .unwrap()
                .name
                .as_str(),
            BOOTSTRAP
        );

        // The right key id with the wrong secret, an unknown key, an expired key.
        let forged = format!("{}x", &billing[..billing.len() - 1]);
        for bad in [forged.as_str(), "tvk_0000000000000000_x", "nope"] {
            assert!(matches!(
                auth.authenticate_key(bad),
                Err(Error::Unauthenticated("unknown API key"))
            ));
        }
        clock.advance(time::Duration::hours(1));
        assert!(matches!(
            auth.authenticate_key(&ops),
            Err(Error::Unauthenticated("the API key has expired"))
        ));

        let by_cert = auth
            .authenticate_certificate(&["cn".into(), "spiffe://c/billing".into()])
            .unwrap();
        assert_eq!(by_cert.name.as_str(), "billing");
        assert!(auth.authenticate_certificate(&["other".into()]).is_none());
        let _ = ProviderId::parse("x");
    }

    #[test]
    fn last_use_survives_a_reload_and_moves_in_steps() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = ManualClock::new(start);
        let auth = Authorizer::new(None, Arc::new(clock.clone()));
        let (k, presented) = key("billing", None);
        let id = k.key_id.clone();
        let records = AccessRecords {
            principals: vec![principal("billing", Role::Caller, None)],
            api_keys: vec![k],
            permissions: vec![],
        };
        auth.snapshot.store(Arc::new(Snapshot::build(
            records.clone(),
            &Snapshot::default(),
        )));
        auth.authenticate_key(&presented).unwrap();
        clock.advance(time::Duration::seconds(10));
        auth.authenticate_key(&presented).unwrap();
        let seen = |a: &Authorizer| a.snapshot.load().keys[&id].used.0.load(Ordering::Relaxed);
        assert_eq!(seen(&auth), start.unix_timestamp());
        let rebuilt = Snapshot::build(records, &auth.snapshot.load());
        auth.snapshot.store(Arc::new(rebuilt));
        assert_eq!(seen(&auth), start.unix_timestamp());
        clock.advance(time::Duration::seconds(60));
        auth.authenticate_key(&presented).unwrap();
        assert_eq!(seen(&auth), start.unix_timestamp() + 70);
        assert!(
            auth.authenticate_key("anything").is_err(),
            "no bootstrap key set"
        );
    }
}
