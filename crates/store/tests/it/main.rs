//! One suite, two backends: every test runs against a real PostgreSQL server started by the
//! harness and against SQLite, through the public `Store` port only.

mod access;

use std::sync::Arc;

use access::*;

use secrecy::SecretString;
use time::{Duration, OffsetDateTime, macros::datetime};
use tokenvend_core::{
    Deps,
    admin::{Admin, PutConnection},
    cache::TokenCache,
    clock::{Clock, SystemClock},
    connection::ConnectionSettings,
    crypto::{Envelope, KeyRing},
    endpoint::EndpointPolicy,
    events::Notifier,
    grants::{Grants, GrantsConfig},
    ids::{ConnectionKey, ProviderId, TenantId},
    oauth::{TokenClient, TokenClientConfig},
    paging::PageRequest,
    store::{
        ConnectionRecord, GrantRecord, GrantStatus, Lease, LeaseEnd, LeaseWrite,
        PendingAuthorization, Published, Store, StoreError, StoreEvent, TenantRecord, TokenRecord,
        WrappedDek,
    },
};
use tokenvend_testkit::postgres::PgCluster;
use uuid::Uuid;

async fn pg() -> Arc<dyn Store> {
    let url = PgCluster::shared().fresh_database();
    tokenvend_store::open(&url, true)
        .await
        .expect("open postgres")
}

/// A fresh SQLite database in a directory that lives as long as the returned guard.
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = tokenvend_store::open(&url, true)
        .await
        .expect("open sqlite");
    (store, dir)
}

/// Runs each listed test against both backends.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::pg().await).await } )* }
        mod sqlite { $( #[tokio::test] async fn $name() { let (s, _dir) = super::sqlite().await; super::$name(s).await } )* }
    };
}

both!(
    tenants,
    connections_optimistic_concurrency,
    tokens_keep_the_fresher,
    cascades,
    data_keys_and_envelope_across_restarts,
    secrets_are_encrypted_at_rest,
    concurrent_puts_do_not_lose_updates,
    pending_authorizations_are_single_use,
    grants_and_refreshes,
    refresh_leases_are_exclusive_and_fenced,
    change_feed_reaches_subscribers,
    refresh_ahead_keeps_used_tokens_warm_and_lets_idle_ones_expire,
    heartbeats_keep_a_lease_and_shutdown_releases_it,
    a_refresh_attempt_blocks_takeover_until_its_deadline,
    a_refresh_never_writes_over_a_revoked_or_reauthorized_grant,
    changes_announce_themselves_in_their_transaction,
    a_late_result_landing_after_takeover_stops_the_new_attempt,
    data_keys_are_counted_paged_and_rewrapped_once,
    callers_keys_and_permissions_reach_the_decision,
    audit_events_are_listed_newest_first_filtered_and_purged,
);

fn at(s: i64) -> OffsetDateTime {
    datetime!(2026-01-01 0:00 UTC) + Duration::seconds(s)
}

fn tenant(slug: &str) -> TenantRecord {
    TenantRecord {
        id: Uuid::now_v7(),
        slug: TenantId::parse(slug).unwrap(),
        display_name: format!("{slug} Ltd"),
        created_at: at(0),
    }
}

fn conn(t: &TenantRecord, provider: &str, version: i64) -> ConnectionRecord {
    ConnectionRecord {
        id: Uuid::now_v7(),
        tenant_id: t.id,
        tenant: t.slug.clone(),
        provider: ProviderId::parse(provider).unwrap(),
        version,
        settings: "{}".into(),
        client_secret: Some(vec![1, 2, 3]),
        api_key: None,
        secret_fingerprint: "ab".into(),
        created_at: at(1),
        updated_at: at(2),
    }
}

/// An event for the store to publish with a change (its delivery is tested in
/// `change_feed_reaches_subscribers`).
/// Stores `t` the one way the port writes a token: as a lease holder finishing.
async fn save_token(s: &Arc<dyn Store>, t: &TokenRecord) -> Result<LeaseWrite, StoreError> {
    finish_with(s, t, None).await
}

/// A refresh of grant `g` (at its version) storing `t` and, if given, a rotated refresh
/// token.
async fn save_refreshed(
    s: &Arc<dyn Store>,
    g: &GrantRecord,
    refresh_token: Option<&[u8]>,
    t: &TokenRecord,
) -> LeaseWrite {
    let grant = tokenvend_core::store::GrantWrite {
        id: g.id,
        version: g.version,
        refresh_token,
    };
    finish_with(s, t, Some(grant)).await.unwrap()
}

async fn finish_with(
    s: &Arc<dyn Store>,
    t: &TokenRecord,
    grant: Option<tokenvend_core::store::GrantWrite<'_>>,
) -> Result<LeaseWrite, StoreError> {
    let lease = s
        .try_lease(t.connection_id, &t.subject, "test-writer", LONG)
        .await?
        .expect("no lease is held while tests write tokens");
    s.finish_lease(
        t.connection_id,
        &t.subject,
        lease.generation,
        LeaseEnd::Token { token: t, grant },
        &ev(),
    )
    .await
}

fn ev() -> Published {
    Published {
        origin: "test".into(),
        event: StoreEvent::Resync,
    }
}

fn key(t: &TenantRecord, p: &str) -> ConnectionKey {
    ConnectionKey {
        tenant: t.slug.clone(),
        provider: ProviderId::parse(p).unwrap(),
    }
}

fn token(c: &ConnectionRecord, version: i64, expires: i64, marker: u8) -> TokenRecord {
    TokenRecord {
        connection_id: c.id,
        subject: String::new(),
        connection_version: version,
        access_token: vec![marker],
        token_sha256: vec![marker; 32],
        scopes: vec!["a".into(), "b".into()],
        expires_at: at(expires),
        fetched_at: at(0),
    }
}

/// Tenant `acme` with connection `p` (version 1): where most tests start.
async fn acme_p(s: &Arc<dyn Store>) -> (TenantRecord, ConnectionRecord) {
    let t = tenant("acme");
    s.create_tenant(&t).await.unwrap();
    let c = conn(&t, "p", 1);
    s.put_connection(&c, None, &ev()).await.unwrap();
    (t, c)
}

/// An active grant of `subject` on `c`: version 1, refresh token `[1]`.
fn grant(c: &ConnectionRecord, subject: &str, scopes: &[&str]) -> GrantRecord {
    GrantRecord {
        id: Uuid::now_v7(),
        connection_id: c.id,
        subject: subject.into(),
        refresh_token: Some(vec![1]),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        status: GrantStatus::Active,
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    }
}

/// The access token stored for a key, if any.
async fn access_token(s: &Arc<dyn Store>, conn: Uuid, subject: &str) -> Option<Vec<u8>> {
    s.load_token(conn, subject)
        .await
        .unwrap()
        .map(|t| t.access_token)
}

/// The refresh token of `subject`'s grant on `conn` (the grant must exist).
async fn refresh_token(s: &Arc<dyn Store>, conn: Uuid, subject: &str) -> Option<Vec<u8>> {
    s.get_grant(conn, subject)
        .await
        .unwrap()
        .expect("the grant")
        .refresh_token
}

/// A lease TTL that outlasts any test.
const LONG: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks for a key's lease for `holder`: `Some` if it got it.
async fn lease(
    s: &Arc<dyn Store>,
    conn: Uuid,
    subject: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Option<Lease> {
    s.try_lease(conn, subject, holder, ttl).await.unwrap()
}

/// A lease short enough to expire during the test, long enough to use right away.
const SHORT: std::time::Duration = std::time::Duration::from_millis(300);

/// Takes the lease once the current (short) one has expired on the database's clock. Lease
/// expiry is wall-clock time by design, so this waits for time to pass (bounded).
async fn take_over(s: &Arc<dyn Store>, conn: Uuid, holder: &str) -> Lease {
    take_over_key(s, conn, "", holder).await
}

/// `take_over` for the key of `subject`.
async fn take_over_key(s: &Arc<dyn Store>, conn: Uuid, subject: &str, holder: &str) -> Lease {
    for _ in 0..100 {
        if let Some(l) = lease(s, conn, subject, holder, LONG).await {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the short lease never expired");
}

/// Ends the lease of `generation` on a key with `end`.
async fn finish(
    s: &Arc<dyn Store>,
    conn: Uuid,
    subject: &str,
    generation: i64,
    end: LeaseEnd<'_>,
) -> LeaseWrite {
    s.finish_lease(conn, subject, generation, end, &ev())
        .await
        .unwrap()
}

/// A lease's end that writes a fetched token, no grant involved.
fn fetched(token: &TokenRecord) -> LeaseEnd<'_> {
    LeaseEnd::Token { token, grant: None }
}

/// What a replica (`origin`) announces when connection `provider` of tenant `acme` changed.
fn changed(origin: &str, provider: &str) -> Published {
    Published {
        origin: origin.into(),
        event: StoreEvent::ConnectionChanged {
            tenant: "acme".into(),
            provider: provider.into(),
        },
    }
}

/// Subscribes to the change feed once it is live: PostgreSQL's listener says Resync once it
/// LISTENs (SQLite's feed is live at once), so publishing starts after that.
async fn live_feed(s: &Arc<dyn Store>) -> tokio::sync::broadcast::Receiver<Published> {
    let mut rx = s.subscribe();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while rx.recv().await.unwrap().event != StoreEvent::Resync {}
    })
    .await;
    rx
}

/// The next event on the feed that is not a Resync (PostgreSQL announces one whenever its
/// listener reconnects); bounded.
async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<Published>) -> Published {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let p = rx.recv().await.unwrap();
            if p.event != StoreEvent::Resync {
                return p;
            }
        }
    })
    .await
    .expect("the event arrives")
}

async fn tenants(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    let a = tenant("acme");
    s.create_tenant(&a).await.unwrap();
    assert!(matches!(
        s.create_tenant(&tenant("acme")).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.get_tenant(&a.slug).await.unwrap().unwrap(), a);
    assert!(
        s.get_tenant(&TenantId::parse("nope").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    for slug in ["c", "b", "d"] {
        s.create_tenant(&tenant(slug)).await.unwrap();
    }
    let slugs = |v: Vec<TenantRecord>| {
        v.into_iter()
            .map(|t| t.slug.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(slugs(s.list_tenants(None, 2).await.unwrap()), ["acme", "b"]);
    assert_eq!(
        slugs(s.list_tenants(Some("b"), 2).await.unwrap()),
        ["c", "d"]
    );
    assert!(s.list_tenants(Some("d"), 2).await.unwrap().is_empty());
    assert!(s.delete_tenant(&a.slug, "test").await.unwrap());
    assert!(!s.delete_tenant(&a.slug, "test").await.unwrap());
}

async fn connections_optimistic_concurrency(s: Arc<dyn Store>) {
    let t = tenant("acme");
    s.create_tenant(&t).await.unwrap();
    let c = conn(&t, "enode", 1);
    s.put_connection(&c, None, &ev()).await.unwrap();
    // a second insert of the same key
    assert!(matches!(
        s.put_connection(&conn(&t, "enode", 1), None, &ev()).await,
        Err(StoreError::AlreadyExists)
    ));
    let got = s.get_connection(&key(&t, "enode")).await.unwrap().unwrap();
    assert_eq!(got, c);

    let v2 = ConnectionRecord {
        version: 2,
        settings: r#"{"client_id":"x"}"#.into(),
        ..c.clone()
    };
    s.put_connection(&v2, Some(1), &ev()).await.unwrap();
    // a writer that read version 1 loses
    let stale = ConnectionRecord {
        version: 2,
        settings: "{}".into(),
        ..c.clone()
    };
    assert!(matches!(
        s.put_connection(&stale, Some(1), &ev()).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        s.get_connection(&key(&t, "enode"))
            .await
            .unwrap()
            .unwrap()
            .settings,
        v2.settings
    );

    // a connection for a tenant that does not exist
    let ghost = tenant("ghost");
    assert!(matches!(
        s.put_connection(&conn(&ghost, "x", 1), None, &ev()).await,
        Err(StoreError::MissingParent)
    ));

    for p in ["b", "a"] {
        s.put_connection(&conn(&t, p, 1), None, &ev())
            .await
            .unwrap();
    }
    let names: Vec<_> = s
        .list_connections(&t.slug, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.provider.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "enode"]);
    let page: Vec<_> = s.list_connections(&t.slug, Some("a"), 1).await.unwrap();
    assert_eq!(page[0].provider.as_str(), "b");
    assert!(s.delete_connection(&key(&t, "a"), &ev()).await.unwrap());
    assert!(!s.delete_connection(&key(&t, "a"), &ev()).await.unwrap());
}

async fn tokens_keep_the_fresher(s: Arc<dyn Store>) {
    let (_, c) = acme_p(&s).await;
    assert!(s.load_token(c.id, "").await.unwrap().is_none());
    save_token(&s, &token(&c, 1, 100, 1)).await.unwrap();
    assert_eq!(
        s.load_token(c.id, "").await.unwrap().unwrap(),
        token(&c, 1, 100, 1)
    );
    // a slow writer with an older token does not replace a fresher one
    save_token(&s, &token(&c, 1, 50, 2)).await.unwrap();
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![1]));
    save_token(&s, &token(&c, 1, 200, 3)).await.unwrap();
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![3]));
    // a token of a newer connection version always wins
    save_token(&s, &token(&c, 2, 10, 4)).await.unwrap();
    let got = s.load_token(c.id, "").await.unwrap().unwrap();
    assert_eq!((got.access_token, got.connection_version), (vec![4], 2));
    // and an older version never does
    save_token(&s, &token(&c, 1, 999, 5)).await.unwrap();
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![4]));
    // subjects are separate rows
    let mut alice = token(&c, 2, 10, 6);
    alice.subject = "alice".into();
    save_token(&s, &alice).await.unwrap();
    assert_eq!(access_token(&s, c.id, "alice").await, Some(vec![6]));
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![4]));

    // compare-and-invalidate: an older token's hash changes nothing, the current one's drops it
    assert!(!s.invalidate_token(c.id, "", &[1; 32], &ev()).await.unwrap());
    assert!(s.load_token(c.id, "").await.unwrap().is_some());
    assert!(s.invalidate_token(c.id, "", &[4; 32], &ev()).await.unwrap());
    assert!(s.load_token(c.id, "").await.unwrap().is_none());
    assert!(!s.invalidate_token(c.id, "", &[4; 32], &ev()).await.unwrap());
    assert!(
        s.load_token(c.id, "alice").await.unwrap().is_some(),
        "other subjects untouched"
    );
}

async fn cascades(s: Arc<dyn Store>) {
    let (t, c) = acme_p(&s).await;
    save_token(&s, &token(&c, 1, 100, 1)).await.unwrap();
    assert!(s.delete_connection(&key(&t, "p"), &ev()).await.unwrap());
    assert!(s.load_token(c.id, "").await.unwrap().is_none());
    // a token for a deleted connection is refused, not orphaned
    assert!(matches!(
        save_token(&s, &token(&c, 1, 100, 1)).await,
        Err(StoreError::MissingParent)
    ));

    let c2 = conn(&t, "q", 1);
    s.put_connection(&c2, None, &ev()).await.unwrap();
    save_token(&s, &token(&c2, 1, 100, 1)).await.unwrap();
    assert!(s.delete_tenant(&t.slug, "test").await.unwrap());
    assert!(s.get_connection(&key(&t, "q")).await.unwrap().is_none());
    assert!(s.load_token(c2.id, "").await.unwrap().is_none());
}

async fn data_keys_and_envelope_across_restarts(s: Arc<dyn Store>) {
    let dek = WrappedDek {
        id: Uuid::now_v7(),
        master_key_id: "k1".into(),
        wrapped: vec![9; 60],
    };
    s.insert_data_key(&dek).await.unwrap();
    let got = s.get_data_key(dek.id).await.unwrap().unwrap();
    assert_eq!(
        (got.id, got.master_key_id, got.wrapped),
        (dek.id, dek.master_key_id, dek.wrapped)
    );
    assert!(s.get_data_key(Uuid::now_v7()).await.unwrap().is_none());

    let ring = KeyRing::generate_entry("k1");
    let aad = tokenvend_core::crypto::Aad {
        table: "connections",
        column: "client_secret",
        row: Uuid::now_v7(),
        qualifier: "",
    };
    let ct = Envelope::new(KeyRing::parse(&ring).unwrap(), s.clone())
        .encrypt(aad, b"hello")
        .await
        .unwrap();
    // a new process (new envelope, empty key cache) decrypts through the stored data key
    let again = Envelope::new(KeyRing::parse(&ring).unwrap(), s.clone());
    assert_eq!(&*again.decrypt(aad, &ct).await.unwrap(), b"hello");
}

/// The core's dependencies over `s`: a fresh key ring, an empty cache, `clock`; the token
/// client may reach loopback and plain-HTTP endpoints (mock providers) if `policy` allows.
fn deps(s: &Arc<dyn Store>, clock: Arc<dyn Clock>, policy: EndpointPolicy) -> Deps {
    let ring = KeyRing::parse(&KeyRing::generate_entry("k1")).unwrap();
    Deps {
        store: s.clone(),
        envelope: Arc::new(Envelope::new(ring, s.clone())),
        cache: Arc::new(TokenCache::new()),
        client: TokenClient::new(TokenClientConfig {
            allow_insecure: policy.allow_insecure,
            ..Default::default()
        })
        .unwrap(),
        clock,
        notifier: Notifier::new("test"),
    }
}

/// The admin API over `deps` (authorizations live 10 minutes).
fn admin_over(deps: &Deps, policy: EndpointPolicy) -> Admin {
    let grants = Arc::new(Grants::new(
        deps.clone(),
        GrantsConfig {
            public_url: None,
            authorization_ttl: std::time::Duration::from_secs(600),
            policy,
        },
    ));
    Admin::new(deps.clone(), policy, grants)
}

/// The admin API over `s` as production runs it: the wall clock, public endpoints only.
fn admin(s: &Arc<dyn Store>) -> Admin {
    let policy = EndpointPolicy {
        allow_insecure: false,
    };
    admin_over(&deps(s, Arc::new(SystemClock), policy), policy)
}

fn put(secret: &str) -> PutConnection {
    PutConnection {
        key: ConnectionKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse("enode").unwrap(),
        },
        settings: ConnectionSettings {
            token_url: "https://oauth.example.com/oauth2/token".into(),
            client_id: "client-1".into(),
            ..Default::default()
        },
        client_secret: Some(SecretString::from(secret)),
        api_key: None,
    }
}

async fn secrets_are_encrypted_at_rest(s: Arc<dyn Store>) {
    let admin = admin(&s);
    admin
        .create_tenant(TenantId::parse("acme").unwrap(), "Acme".into())
        .await
        .unwrap();
    let planted = "planted-secret-7f3a9c";
    let view = admin.put_connection(put(planted)).await.unwrap();
    assert_eq!(view.credential_kind, "client_secret");
    assert_eq!(view.record.version, 1);
    assert_eq!(view.record.secret_fingerprint.len(), 16);
    let raw = s.get_connection(&view.record.key()).await.unwrap().unwrap();
    let ct = raw.client_secret.clone().unwrap();
    assert!(
        !ct.windows(planted.len()).any(|w| w == planted.as_bytes()),
        "plaintext at rest"
    );
    assert!(
        !format!("{raw:?} {view:?}").contains(planted),
        "Debug leaks the secret"
    );

    // an empty secret keeps the stored one; the version still moves
    let v2 = admin
        .put_connection(PutConnection {
            client_secret: None,
            ..put("")
        })
        .await
        .unwrap();
    assert_eq!(v2.record.version, 2);
    assert_eq!(
        s.get_connection(&view.record.key())
            .await
            .unwrap()
            .unwrap()
            .client_secret
            .unwrap(),
        ct
    );
    assert_eq!(v2.record.secret_fingerprint, view.record.secret_fingerprint);
    // a new secret changes the fingerprint
    let v3 = admin.put_connection(put("another-secret")).await.unwrap();
    assert_ne!(v3.record.secret_fingerprint, view.record.secret_fingerprint);

    // both kinds at once are refused, and nothing changes
    let both = PutConnection {
        api_key: Some(SecretString::from("k")),
        ..put("x")
    };
    let err = admin.put_connection(both).await.unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");
    assert_eq!(
        s.get_connection(&view.record.key())
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );

    // listing pages through the tenant's connections
    let page = admin
        .list_connections(&TenantId::parse("acme").unwrap(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.next_page_token.as_str()), (1, ""));
}

async fn concurrent_puts_do_not_lose_updates(s: Arc<dyn Store>) {
    let admin = Arc::new(admin(&s));
    admin
        .create_tenant(TenantId::parse("acme").unwrap(), String::new())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            admin.put_connection(put(&format!("secret-{i}"))).await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap().record.version);
    }
    versions.sort();
    // every writer got its own version: none overwrote another unseen
    assert_eq!(versions, [1, 2, 3, 4]);
}

async fn pending_authorizations_are_single_use(s: Arc<dyn Store>) {
    let (_, c) = acme_p(&s).await;
    let pending = |state: u8, expires: i64| PendingAuthorization {
        state_sha256: vec![state; 32],
        id: Uuid::now_v7(),
        connection_id: c.id,
        subject: "alice".into(),
        code_verifier: vec![7; 40],
        redirect_uri: "https://tv.example/oauth/callback".into(),
        scopes: vec!["openid".into()],
        expires_at: at(expires),
        created_at: at(0),
    };
    let p1 = pending(1, 600);
    s.insert_pending_authorization(&p1).await.unwrap();
    s.insert_pending_authorization(&pending(2, 10))
        .await
        .unwrap();
    assert!(matches!(
        s.insert_pending_authorization(&p1).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        s.take_pending_authorization(&[1; 32])
            .await
            .unwrap()
            .unwrap(),
        p1
    );
    assert!(
        s.take_pending_authorization(&[1; 32])
            .await
            .unwrap()
            .is_none(),
        "replay"
    );
    assert!(
        s.take_pending_authorization(&[9; 32])
            .await
            .unwrap()
            .is_none(),
        "unknown"
    );
    assert_eq!(s.delete_expired_authorizations(at(100)).await.unwrap(), 1);
    assert!(
        s.take_pending_authorization(&[2; 32])
            .await
            .unwrap()
            .is_none()
    );
}

async fn grants_and_refreshes(s: Arc<dyn Store>) {
    let (t, c) = acme_p(&s).await;
    let g = grant(&c, "alice", &["a"]);
    let mut tok = token(&c, 1, 100, 5);
    tok.subject = "alice".into();
    s.put_grant(&g, false, Some(&tok), &ev()).await.unwrap();
    assert!(matches!(
        s.put_grant(
            &GrantRecord {
                id: Uuid::now_v7(),
                ..g.clone()
            },
            false,
            None,
            &ev()
        )
        .await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.get_grant(c.id, "alice").await.unwrap().unwrap(), g);
    assert_eq!(access_token(&s, c.id, "alice").await, Some(vec![5]));

    // a refresh without rotation keeps the refresh token; with rotation replaces it
    let mut t2 = tok.clone();
    t2.access_token = vec![6];
    t2.expires_at = at(200);
    assert_eq!(save_refreshed(&s, &g, None, &t2).await, LeaseWrite::Written);
    assert_eq!(refresh_token(&s, c.id, "alice").await, Some(vec![1]));
    assert_eq!(access_token(&s, c.id, "alice").await, Some(vec![6]));
    let mut t3 = t2.clone();
    t3.access_token = vec![7];
    t3.expires_at = at(300);
    assert_eq!(
        save_refreshed(&s, &g, Some(&[2]), &t3).await,
        LeaseWrite::Written
    );
    assert_eq!(refresh_token(&s, c.id, "alice").await, Some(vec![2]));
    let unknown = GrantRecord {
        id: Uuid::now_v7(),
        ..g.clone()
    };
    assert_eq!(
        save_refreshed(&s, &unknown, None, &t3).await,
        LeaseWrite::GrantChanged,
        "a refresh of a grant that is gone writes nothing"
    );

    assert!(
        s.set_grant_status(g.id, g.version, GrantStatus::ReauthorizationRequired, at(5))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_grant(c.id, "alice").await.unwrap().unwrap().status,
        GrantStatus::ReauthorizationRequired
    );
    // re-authorization replaces the refresh token, reactivates, and drops the old access token
    let again = GrantRecord {
        refresh_token: Some(vec![3]),
        status: GrantStatus::Active,
        version: g.version + 1,
        updated_at: at(9),
        ..g.clone()
    };
    s.put_grant(&again, true, None, &ev()).await.unwrap();
    assert_eq!(s.get_grant(c.id, "alice").await.unwrap().unwrap(), again);
    assert!(s.load_token(c.id, "alice").await.unwrap().is_none());

    let bob = GrantRecord {
        id: Uuid::now_v7(),
        subject: "bob".into(),
        ..g.clone()
    };
    s.put_grant(&bob, false, None, &ev()).await.unwrap();
    let subjects: Vec<_> = s
        .list_grants(c.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.subject)
        .collect();
    assert_eq!(subjects, ["alice", "bob"]);
    assert_eq!(
        s.list_grants(c.id, Some("alice"), 10).await.unwrap().len(),
        1
    );

    assert_eq!(
        save_refreshed(&s, &again, None, &t3).await,
        LeaseWrite::Written
    );
    assert!(s.delete_grant(c.id, "alice", &ev()).await.unwrap());
    assert!(
        s.load_token(c.id, "alice").await.unwrap().is_none(),
        "its token goes with it"
    );
    assert!(!s.delete_grant(c.id, "alice", &ev()).await.unwrap());
    // deleting the connection takes the rest
    assert!(s.delete_connection(&key(&t, "p"), &ev()).await.unwrap());
    assert!(s.get_grant(c.id, "bob").await.unwrap().is_none());
}

async fn refresh_leases_are_exclusive_and_fenced(s: Arc<dyn Store>) {
    use std::time::Duration as D;
    let (_, c) = acme_p(&s).await;

    // One holder at a time; the first lease of a key creates its row.
    let a = lease(&s, c.id, "", "replica-a", LONG).await.unwrap();
    assert_eq!(a.generation, 1);
    assert!(!a.unfinished_attempt);
    assert!(lease(&s, c.id, "", "replica-b", LONG).await.is_none());
    // Subjects are separate keys.
    assert!(lease(&s, c.id, "alice", "replica-b", LONG).await.is_some());

    // Released: the next holder gets the next generation.
    assert_eq!(
        finish(&s, c.id, "", a.generation, LeaseEnd::Released).await,
        LeaseWrite::Written
    );
    let b = lease(&s, c.id, "", "replica-b", SHORT).await.unwrap();
    assert_eq!(b.generation, 2);

    // B's short lease expires (on the database's clock) and C takes over.
    let c3 = take_over(&s, c.id, "replica-c").await;
    assert_eq!(c3.generation, 3);
    // B's lease is gone: it may no longer start a refresh...
    assert!(
        s.mark_refresh_attempt(c.id, "", b, D::from_secs(10))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        finish(&s, c.id, "", b.generation, LeaseEnd::Released).await,
        LeaseWrite::Fenced
    );

    // C starts a refresh; while it runs, D cannot take the lease.
    assert!(
        s.mark_refresh_attempt(c.id, "", c3, D::from_secs(10))
            .await
            .unwrap()
            .is_some()
    );
    let tok = token(&c, 1, 500, 9);
    // An attempt of an older generation that is not the recorded one is fenced off.
    assert_eq!(
        finish(&s, c.id, "", b.generation, fetched(&tok)).await,
        LeaseWrite::Fenced
    );
    assert!(s.load_token(c.id, "").await.unwrap().is_none());
    // C's result is written and the lease released.
    assert_eq!(
        finish(&s, c.id, "", c3.generation, fetched(&tok)).await,
        LeaseWrite::Written
    );
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![9]));
    let d = lease(&s, c.id, "", "replica-d", SHORT).await.unwrap();
    assert!(!d.unfinished_attempt, "C finished its attempt");

    // D sends a refresh and dies: its lease runs out, the attempt stays recorded.
    assert!(
        s.mark_refresh_attempt(c.id, "", d, SHORT)
            .await
            .unwrap()
            .is_some()
    );
    let e = take_over(&s, c.id, "replica-e").await;
    assert!(
        e.unfinished_attempt,
        "E learns that D's refresh never finished"
    );
    // D's late result is still written: the provider already rotated the refresh token.
    let late = token(&c, 1, 900, 7);
    assert_eq!(
        finish(&s, c.id, "", d.generation, fetched(&late)).await,
        LeaseWrite::Written
    );
    assert_eq!(access_token(&s, c.id, "").await, Some(vec![7]));

    // A definitive failure is remembered until `until`, for the connection version it hit.
    assert!(s.recent_failure(c.id, "").await.unwrap().is_none());
    assert_eq!(
        finish(
            &s,
            c.id,
            "",
            e.generation,
            LeaseEnd::Failed {
                error: "{\"x\":1}",
                class: "oauth_error",
                connection_version: 1,
                remember_for: Some(std::time::Duration::from_secs(3600)),
                outcome_known: true
            },
        )
        .await,
        LeaseWrite::Written
    );
    let f = s.recent_failure(c.id, "").await.unwrap().unwrap();
    assert_eq!((f.error.as_str(), f.connection_version), ("{\"x\":1}", 1));
    // The connection's refresh history counts it (GetConnection's refresh state).
    let history = s.refresh_history(c.id).await.unwrap();
    assert_eq!(history.failures, 1);
    assert_eq!(history.refreshed_at, Some(late.fetched_at));
    let (class, failed_at) = history.last_failure.clone().unwrap();
    assert_eq!(class, "oauth_error");
    // ...and cleared by the next success.
    let g = lease(&s, c.id, "", "replica-g", LONG).await.unwrap();
    let renewed = TokenRecord {
        fetched_at: at(500),
        ..token(&c, 1, 1000, 8)
    };
    finish(&s, c.id, "", g.generation, fetched(&renewed)).await;
    assert!(s.recent_failure(c.id, "").await.unwrap().is_none());
    let history = s.refresh_history(c.id).await.unwrap();
    assert_eq!(history.failures, 0, "a success resets the count");
    assert_eq!(history.refreshed_at, Some(renewed.fetched_at));
    assert_eq!(
        history.last_failure,
        Some(("oauth_error".to_owned(), failed_at)),
        "the last failure stays visible after a success"
    );
    // A past `until` is not remembered at all.
    let h = lease(&s, c.id, "", "replica-h", LONG).await.unwrap();
    finish(
        &s,
        c.id,
        "",
        h.generation,
        LeaseEnd::Failed {
            error: "e",
            class: "unavailable",
            connection_version: 1,
            remember_for: Some(std::time::Duration::ZERO),
            outcome_known: true,
        },
    )
    .await;
    assert!(s.recent_failure(c.id, "").await.unwrap().is_none());
    let history = s.refresh_history(c.id).await.unwrap();
    assert_eq!(history.failures, 1);
    assert_eq!(history.last_failure.unwrap().0, "unavailable");
    // A connection never refreshed has an empty history.
    assert_eq!(
        s.refresh_history(uuid::Uuid::now_v7()).await.unwrap(),
        Default::default()
    );
}

async fn change_feed_reaches_subscribers(s: Arc<dyn Store>) {
    let mut rx = live_feed(&s).await;
    let event = changed("replica-a", "p");
    s.publish(&event).await.unwrap();
    assert_eq!(next_event(&mut rx).await, event);
}

async fn refresh_ahead_keeps_used_tokens_warm_and_lets_idle_ones_expire(s: Arc<dyn Store>) {
    use futures::FutureExt;
    use tokenvend_core::{
        clock::ManualClock,
        config::VendorConfig,
        ids::{Subject, TokenKey},
        vend::Vendor,
    };
    use wiremock::{Mock, MockServer, Request, ResponseTemplate, matchers::method};

    let provider = MockServer::start().await;
    let n = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(method("POST"))
        .respond_with(move |_: &Request| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": format!("t{i}"), "expires_in": 100}),
            )
        })
        .mount(&provider)
        .await;
    let clock = ManualClock::new(datetime!(2030-01-01 0:00 UTC));
    let policy = EndpointPolicy {
        allow_insecure: true,
    };
    let deps = deps(&s, Arc::new(clock.clone()), policy);
    let admin = admin_over(&deps, policy);
    admin
        .create_tenant(TenantId::parse("acme").unwrap(), String::new())
        .await
        .unwrap();
    for p in ["used", "idle"] {
        let mut put = put("s");
        put.key.provider = ProviderId::parse(p).unwrap();
        put.settings.token_url = format!("{}/{p}", provider.uri());
        admin.put_connection(put).await.unwrap();
    }
    let vendor = Arc::new(Vendor::new(
        deps,
        VendorConfig {
            default_min_ttl: std::time::Duration::from_secs(10),
            policy,
            ..Default::default()
        },
    ));
    let key = |p: &str| TokenKey {
        tenant: TenantId::parse("acme").unwrap(),
        provider: ProviderId::parse(p).unwrap(),
        subject: Subject::client(),
    };
    vendor.get_token(key("used"), None, None).await.unwrap();
    vendor.get_token(key("idle"), None, None).await.unwrap();

    // Five lifetimes in 10 s steps; the refresher runs each step, a caller asks each step.
    for _ in 0..50 {
        clock.advance(Duration::seconds(10));
        for renewal in vendor.refresh_due(8) {
            renewal.await.unwrap();
        }
        let t = vendor
            .get_token(key("used"), None, None)
            .now_or_never()
            .expect("a caller in steady state never waits for the provider")
            .unwrap();
        assert!(t.valid_for(clock.now(), std::time::Duration::from_secs(10)));
    }
    let count = |p: &'static str| {
        let provider = &provider;
        async move {
            provider
                .received_requests()
                .await
                .unwrap()
                .iter()
                .filter(|r| r.url.path() == format!("/{p}"))
                .count()
        }
    };
    // Renewed at 75-80 % of each 100 s lifetime: 1 + 500 / 80 or so.
    let used = count("used").await;
    assert!((6..=8).contains(&used), "used key fetched {used} times");
    assert_eq!(count("idle").await, 1, "an idle key is left to expire");
}

async fn heartbeats_keep_a_lease_and_shutdown_releases_it(s: Arc<dyn Store>) {
    use std::time::Duration as D;
    let (_, c) = acme_p(&s).await;
    let a = lease(&s, c.id, "", "replica-a", LONG).await.unwrap();
    assert!(
        s.renew_lease(c.id, "", a.generation, D::from_secs(30))
            .await
            .unwrap(),
        "the holder renews its own lease"
    );
    // Shutdown: replica-a gives its leases up; B takes over at once, not after the TTL.
    assert_eq!(s.release_leases("replica-a").await.unwrap(), 1);
    assert_eq!(s.release_leases("replica-a").await.unwrap(), 0);
    let b = lease(&s, c.id, "", "replica-b", LONG)
        .await
        .expect("a released lease is free at once");
    assert!(b.generation > a.generation);
    assert!(
        !s.renew_lease(c.id, "", a.generation, D::from_secs(30))
            .await
            .unwrap(),
        "a lease taken over is not renewed by its former holder"
    );
    assert!(
        s.renew_lease(c.id, "", b.generation, D::from_secs(30))
            .await
            .unwrap()
    );
}

async fn a_refresh_attempt_blocks_takeover_until_its_deadline(s: Arc<dyn Store>) {
    use std::time::Duration as D;
    let (_, c) = acme_p(&s).await;
    let a = lease(&s, c.id, "alice", "replica-a", LONG).await.unwrap();
    let mark = s
        .mark_refresh_attempt(c.id, "alice", a, D::from_secs(30))
        .await
        .unwrap()
        .expect("the holder may mark an attempt");
    assert_eq!(mark.deadline_in, D::from_secs(30));
    // A's lease is gone (as if it lapsed) while its request may still be in flight: nobody
    // may take the lease, or the refresh token could be sent twice.
    s.release_leases("replica-a").await.unwrap();
    assert!(
        lease(&s, c.id, "alice", "replica-b", LONG).await.is_none(),
        "an attempt within its deadline blocks takeover"
    );
    // A's answer arrives: its attempt is the recorded one, so it is written (rotated token
    // and all) although A no longer holds the lease.
    let mut tok = token(&c, 1, 500, 4);
    tok.subject = "alice".into();
    assert_eq!(
        finish(&s, c.id, "alice", a.generation, fetched(&tok)).await,
        LeaseWrite::Written
    );
    let b = lease(&s, c.id, "alice", "replica-b", LONG)
        .await
        .expect("a finished attempt no longer blocks");
    assert!(!b.unfinished_attempt);

    // An attempt whose outcome is unknown (a timeout: the provider may still be working on
    // it) keeps blocking until its deadline, then tells the next holder that the refresh
    // token may have been consumed.
    s.mark_refresh_attempt(c.id, "alice", b, SHORT)
        .await
        .unwrap()
        .unwrap();
    finish(
        &s,
        c.id,
        "alice",
        b.generation,
        LeaseEnd::Failed {
            error: "",
            class: "oauth_error",
            connection_version: 1,
            remember_for: None,
            outcome_known: false,
        },
    )
    .await;
    let c3 = take_over_key(&s, c.id, "alice", "replica-c").await;
    assert!(c3.unfinished_attempt);
}

async fn a_refresh_never_writes_over_a_revoked_or_reauthorized_grant(s: Arc<dyn Store>) {
    use tokenvend_core::store::GrantWrite;
    let (_, c) = acme_p(&s).await;
    let g = grant(&c, "alice", &[]);
    s.put_grant(&g, false, None, &ev()).await.unwrap();
    let mut tok = token(&c, 1, 500, 4);
    tok.subject = "alice".into();
    let refresh = async |lease: i64, version: i64, rt: &'static [u8]| {
        let grant = GrantWrite {
            id: g.id,
            version,
            refresh_token: Some(rt),
        };
        let end = LeaseEnd::Token {
            token: &tok,
            grant: Some(grant),
        };
        finish(&s, c.id, "alice", lease, end).await
    };

    // Re-authorized (version 2) while a refresh of version 1 ran: its result is dropped.
    let a = lease(&s, c.id, "alice", "a", LONG).await.unwrap();
    let again = GrantRecord {
        refresh_token: Some(vec![2]),
        version: 2,
        ..g.clone()
    };
    s.put_grant(&again, true, None, &ev()).await.unwrap();
    assert!(
        !s.set_grant_status(g.id, 1, GrantStatus::ReauthorizationRequired, at(1))
            .await
            .unwrap(),
        "a refusal of the old chain does not mark the new grant"
    );
    assert_eq!(
        refresh(a.generation, 1, b"old-chain").await,
        LeaseWrite::GrantChanged
    );
    let stored = s.get_grant(c.id, "alice").await.unwrap().unwrap();
    assert_eq!(stored.refresh_token, Some(vec![2]), "the new chain is kept");
    assert_eq!(stored.status, GrantStatus::Active);
    assert!(s.load_token(c.id, "alice").await.unwrap().is_none());
    // The lease was released all the same.
    let b = lease(&s, c.id, "alice", "b", LONG).await.expect("released");
    // A refresh under the current version is written, rotated refresh token included.
    assert_eq!(refresh(b.generation, 2, b"new").await, LeaseWrite::Written);
    assert_eq!(
        refresh_token(&s, c.id, "alice").await,
        Some(b"new".to_vec())
    );

    // Revoked while a refresh ran: no orphan token is written for the gone subject.
    let d = lease(&s, c.id, "alice", "d", LONG).await.unwrap();
    assert!(s.delete_grant(c.id, "alice", &ev()).await.unwrap());
    assert_eq!(
        refresh(d.generation, 2, b"orphan").await,
        LeaseWrite::GrantChanged
    );
    assert!(s.load_token(c.id, "alice").await.unwrap().is_none());
    assert!(s.get_grant(c.id, "alice").await.unwrap().is_none());
}

async fn changes_announce_themselves_in_their_transaction(s: Arc<dyn Store>) {
    let mut rx = live_feed(&s).await;
    let named = |what: &str| changed("replica-a", what);
    let t = tenant("acme");
    s.create_tenant(&t).await.unwrap();
    let c = conn(&t, "p", 1);
    s.put_connection(&c, None, &named("put")).await.unwrap();
    assert_eq!(next_event(&mut rx).await, named("put"));
    // A put that loses its optimistic check announces nothing; the next one does.
    assert!(matches!(
        s.put_connection(&conn(&t, "p", 2), Some(7), &named("lost"))
            .await,
        Err(StoreError::Conflict)
    ));
    let mut tok = token(&c, 1, 500, 4);
    tok.token_sha256 = vec![4; 32];
    save_token(&s, &tok).await.unwrap();
    assert!(
        !s.invalidate_token(c.id, "", &[9; 32], &named("not-current"))
            .await
            .unwrap()
    );
    assert!(
        s.invalidate_token(c.id, "", &[4; 32], &named("invalidated"))
            .await
            .unwrap()
    );
    assert_eq!(
        next_event(&mut rx).await,
        named("invalidated"),
        "neither the lost put nor the stale invalidation was announced"
    );
    s.put_connection(&conn(&t, "q", 1), None, &named("q"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut rx).await, named("q"));
    // Deleting the tenant announces each of its connections.
    assert!(s.delete_tenant(&t.slug, "replica-b").await.unwrap());
    let mut gone = vec![next_event(&mut rx).await, next_event(&mut rx).await];
    gone.sort_by_key(|p| format!("{:?}", p.event));
    assert_eq!(
        gone,
        vec![changed("replica-b", "p"), changed("replica-b", "q")]
    );
}

/// A holder whose refresh outlived its deadline; B takes over and reads the grant; then A's
/// late result lands (its attempt was still the recorded one) with a rotated refresh token.
/// B must not record an attempt of its own: the refresh token it read is spent.
async fn a_late_result_landing_after_takeover_stops_the_new_attempt(s: Arc<dyn Store>) {
    let (_, c) = acme_p(&s).await;
    let a = lease(&s, c.id, "", "replica-a", SHORT).await.unwrap();
    s.mark_refresh_attempt(c.id, "", a, SHORT)
        .await
        .unwrap()
        .unwrap();
    let b = take_over(&s, c.id, "replica-b").await;
    assert_eq!(b.attempt_seen, Some(a.generation));
    assert_eq!(
        finish(&s, c.id, "", a.generation, fetched(&token(&c, 1, 900, 7))).await,
        LeaseWrite::Written,
        "A's recorded attempt is written although B holds the lease"
    );
    assert!(
        s.mark_refresh_attempt(c.id, "", b, LONG)
            .await
            .unwrap()
            .is_none(),
        "B's attempt is refused: the attempt it saw has finished"
    );
}

async fn data_keys_are_counted_paged_and_rewrapped_once(s: Arc<dyn Store>) {
    use tokenvend_core::store::MasterKeyUse;
    let dek = |master: &str| WrappedDek {
        id: Uuid::now_v7(),
        master_key_id: master.into(),
        wrapped: vec![1, 2, 3],
    };
    let (a, b, c) = (dek("k1"), dek("k1"), dek("k2"));
    for d in [&a, &b, &c] {
        s.insert_data_key(d).await.unwrap();
    }
    let uses = |k: &str, n: u64| MasterKeyUse {
        master_key_id: k.into(),
        data_keys: n,
    };
    assert_eq!(
        s.master_key_uses().await.unwrap(),
        [uses("k1", 2), uses("k2", 1)]
    );
    let ids = |v: Vec<WrappedDek>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.data_keys_not_wrapped_by("k2", None, 10).await.unwrap()),
        [a.id, b.id]
    );
    assert_eq!(
        ids(s
            .data_keys_not_wrapped_by("k2", Some(a.id), 10)
            .await
            .unwrap()),
        [b.id],
        "pages by id"
    );
    let rewrapped = WrappedDek {
        master_key_id: "k2".into(),
        wrapped: vec![9],
        ..a.clone()
    };
    assert!(s.rewrap_data_key("k1", &rewrapped).await.unwrap());
    assert!(
        !s.rewrap_data_key("k1", &rewrapped).await.unwrap(),
        "a second pass finds it done"
    );
    assert_eq!(s.get_data_key(a.id).await.unwrap().unwrap().wrapped, [9]);
    assert_eq!(
        s.master_key_uses().await.unwrap(),
        [uses("k1", 1), uses("k2", 2)]
    );
}
