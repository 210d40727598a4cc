//! Callers, keys, permissions and the audit log, through the domain's `Callers` and
//! `Authorizer` over each backend.

use std::sync::Arc;

use secrecy::ExposeSecret;
use time::Duration;
use tokenvend_core::{
    Error,
    access::{Authorizer, Callers, NewPrincipal},
    audit::{AuditEntry, Auditor},
    clock::{Clock, ManualClock},
    events::Notifier,
    ids::{PrincipalId, TenantId},
    paging::PageRequest,
    store::{PermissionRecord, ProviderScope, Role, Store, StoreEvent},
};

use super::{at, live_feed, next_event, tenant};

fn name(s: &str) -> PrincipalId {
    PrincipalId::parse(s).unwrap()
}

fn perm(p: &str, t: &str, v: &str) -> PermissionRecord {
    PermissionRecord {
        principal: name(p),
        tenant: TenantId::parse(t).unwrap(),
        provider: ProviderScope::parse(v).unwrap(),
    }
}

fn page(size: i32, token: &str) -> PageRequest {
    PageRequest {
        page_size: size,
        page_token: token.into(),
    }
}

pub async fn callers_keys_and_permissions_reach_the_decision(s: Arc<dyn Store>) {
    let clock = ManualClock::new(at(0));
    let callers = Callers::new(s.clone(), Notifier::new("r1"), Arc::new(clock.clone()));
    let auth = Authorizer::new(None, Arc::new(clock.clone()));
    s.create_tenant(&tenant("acme")).await.unwrap();
    s.create_tenant(&tenant("globex")).await.unwrap();
    let mut feed = live_feed(&s).await;

    let billing = callers
        .create_principal(NewPrincipal {
            name: name("billing"),
            role: Role::Caller,
            description: "the billing service".into(),
            certificate_identity: Some("spiffe://c/billing".into()),
        })
        .await
        .unwrap();
    assert_eq!(next_event(&mut feed).await.event, StoreEvent::AccessChanged);
    assert!(matches!(
        callers
            .create_principal(NewPrincipal {
                name: name("billing"),
                role: Role::Admin,
                description: String::new(),
                certificate_identity: None,
            })
            .await,
        Err(Error::PrincipalExists(_))
    ));
    // The certificate identity is unique too.
    assert!(matches!(
        callers
            .create_principal(NewPrincipal {
                name: name("other"),
                role: Role::Caller,
                description: String::new(),
                certificate_identity: Some("spiffe://c/billing".into()),
            })
            .await,
        Err(Error::PrincipalExists(_))
    ));
    assert_eq!(
        callers.get_principal(&name("billing")).await.unwrap(),
        billing
    );

    let key = callers
        .create_api_key(&name("billing"), Some(at(3600)))
        .await
        .unwrap();
    let expiring = key.api_key.expose_secret().to_owned();
    let key2 = callers
        .create_api_key(&name("billing"), None)
        .await
        .unwrap();
    let lasting = key2.api_key.expose_secret().to_owned();
    assert!(matches!(
        callers.create_api_key(&name("nobody"), None).await,
        Err(Error::PrincipalNotFound(_))
    ));
    assert!(matches!(
        callers.create_api_key(&name("billing"), Some(at(-1))).await,
        Err(Error::InvalidInput(e)) if e.field == "expires_at"
    ));
    callers
        .grant_permission(perm("billing", "acme", "enode"))
        .await
        .unwrap();
    // Idempotent.
    callers
        .grant_permission(perm("billing", "acme", "enode"))
        .await
        .unwrap();
    callers
        .grant_permission(perm("billing", "globex", "*"))
        .await
        .unwrap();
    assert!(matches!(
        callers
            .grant_permission(perm("billing", "initech", "*"))
            .await,
        Err(Error::TenantNotFound(_))
    ));
    assert!(matches!(
        callers.grant_permission(perm("nobody", "acme", "*")).await,
        Err(Error::PrincipalNotFound(_))
    ));

    // Stored as a hash only: the key's text is nowhere in what the store gives back.
    let stored = s.load_access().await.unwrap();
    assert_eq!(stored.api_keys.len(), 2);
    assert!(!format!("{stored:?}").contains(&lasting));
    assert!(stored.api_keys.iter().all(|k| k.key_sha256.len() == 32));

    auth.reload(s.as_ref()).await.unwrap();
    let who = auth.authenticate_key(&lasting).unwrap();
    assert!(who.may_get_token("acme", "enode"));
    assert!(!who.may_get_token("acme", "edrv"));
    assert!(who.may_get_token("globex", "edrv"));
    assert_eq!(
        auth.authenticate_certificate(&["spiffe://c/billing".into()])
            .unwrap()
            .name
            .as_str(),
        "billing"
    );

    // Listings page.
    callers
        .create_principal(NewPrincipal {
            name: name("analytics"),
            role: Role::Caller,
            description: String::new(),
            certificate_identity: None,
        })
        .await
        .unwrap();
    callers
        .grant_permission(perm("analytics", "acme", "*"))
        .await
        .unwrap();
    let first = callers
        .list_permissions(None, None, &page(2, ""))
        .await
        .unwrap();
    let rest = callers
        .list_permissions(None, None, &page(2, &first.next_page_token))
        .await
        .unwrap();
    let all: Vec<_> = first.items.iter().chain(&rest.items).cloned().collect();
    assert_eq!(
        all,
        [
            perm("analytics", "acme", "*"),
            perm("billing", "acme", "enode"),
            perm("billing", "globex", "*")
        ]
    );
    assert_eq!(rest.next_page_token, "");
    let acme = callers
        .list_permissions(None, Some(&TenantId::parse("acme").unwrap()), &page(0, ""))
        .await
        .unwrap();
    assert_eq!(acme.items.len(), 2);
    let mine = callers
        .list_permissions(Some(&name("billing")), None, &page(0, ""))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 2);
    let principals = callers.list_principals(&page(1, "")).await.unwrap();
    assert_eq!(principals.items[0].name.as_str(), "analytics");
    let keys = callers
        .list_api_keys(&name("billing"), &page(0, ""))
        .await
        .unwrap();
    assert_eq!(keys.items.len(), 2);
    assert!(matches!(
        callers.list_api_keys(&name("nobody"), &page(0, "")).await,
        Err(Error::PrincipalNotFound(_))
    ));

    // Last use: written in a batch, only forward.
    clock.advance(Duration::seconds(90));
    auth.authenticate_key(&lasting).unwrap();
    assert_eq!(auth.flush_last_used(s.as_ref()).await.unwrap(), 1);
    assert_eq!(auth.flush_last_used(s.as_ref()).await.unwrap(), 0);
    let keys = callers
        .list_api_keys(&name("billing"), &page(0, ""))
        .await
        .unwrap();
    let used = keys
        .items
        .iter()
        .find(|k| k.key_id == key2.record.key_id)
        .unwrap();
    assert_eq!(used.last_used_at, Some(at(90)));
    s.touch_api_keys(&[(key2.record.key_id.clone(), at(10))])
        .await
        .unwrap();
    let keys = s.list_api_keys(&name("billing"), None, 10).await.unwrap();
    let used = keys
        .iter()
        .find(|k| k.key_id == key2.record.key_id)
        .unwrap();
    assert_eq!(used.last_used_at, Some(at(90)), "never moves back");

    // Revocation: the key, a permission, then the principal with everything it had.
    callers.revoke_api_key(&key.record.key_id).await.unwrap();
    assert!(matches!(
        callers.revoke_api_key(&key.record.key_id).await,
        Err(Error::ApiKeyNotFound(_))
    ));
    callers
        .revoke_permission(&perm("billing", "acme", "enode"))
        .await
        .unwrap();
    assert!(matches!(
        callers
            .revoke_permission(&perm("billing", "acme", "enode"))
            .await,
        Err(Error::PermissionNotFound { .. })
    ));
    auth.reload(s.as_ref()).await.unwrap();
    assert!(auth.authenticate_key(&expiring).is_err());
    assert!(
        !auth
            .authenticate_key(&lasting)
            .unwrap()
            .may_get_token("acme", "enode")
    );
    assert_eq!(callers.delete_principal(&name("billing")).await.unwrap(), 1);
    assert!(matches!(
        callers.delete_principal(&name("billing")).await,
        Err(Error::PrincipalNotFound(_))
    ));
    auth.reload(s.as_ref()).await.unwrap();
    assert!(auth.authenticate_key(&lasting).is_err());
    assert!(
        auth.authenticate_certificate(&["spiffe://c/billing".into()])
            .is_none()
    );
    let left = s.load_access().await.unwrap();
    assert_eq!(left.api_keys.len(), 0);
    assert_eq!(left.permissions, [perm("analytics", "acme", "*")]);

    // Deleting a tenant takes its permissions and tells every replica.
    let mut feed = live_feed(&s).await;
    assert!(
        s.delete_tenant(&TenantId::parse("acme").unwrap(), "r2")
            .await
            .unwrap()
    );
    assert_eq!(next_event(&mut feed).await.event, StoreEvent::AccessChanged);
    assert!(s.load_access().await.unwrap().permissions.is_empty());
}

pub async fn audit_events_are_listed_newest_first_filtered_and_purged(s: Arc<dyn Store>) {
    let clock = ManualClock::new(at(0));
    let callers = Callers::new(s.clone(), Notifier::new("r1"), Arc::new(clock.clone()));
    let (auditor, writer) = Auditor::new(s.clone(), Arc::new(clock.clone()));
    let writer = tokio::spawn(writer);
    for i in 0..5 {
        auditor
            .change(AuditEntry {
                principal: if i % 2 == 0 {
                    "ops".into()
                } else {
                    "billing".into()
                },
                action: format!("Action{i}"),
                tenant: if i < 3 {
                    "acme".into()
                } else {
                    "globex".into()
                },
                provider: "enode".into(),
                subject: String::new(),
                outcome: "OK",
                peer: "127.0.0.1:1".into(),
            })
            .await;
        clock.advance(Duration::seconds(10));
    }
    auditor.refusal(AuditEntry {
        action: "GetToken".into(),
        outcome: "UNAUTHENTICATED",
        ..Default::default()
    });
    drop(auditor);
    writer.await.unwrap();

    let first = callers
        .list_audit_events(None, None, &page(4, ""))
        .await
        .unwrap();
    let actions: Vec<_> = first.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["GetToken", "Action4", "Action3", "Action2"]);
    let rest = callers
        .list_audit_events(None, None, &page(4, &first.next_page_token))
        .await
        .unwrap();
    let actions: Vec<_> = rest.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["Action1", "Action0"]);
    assert_eq!(rest.next_page_token, "");
    let acme = callers
        .list_audit_events(Some("acme"), Some("ops"), &page(0, ""))
        .await
        .unwrap();
    let actions: Vec<_> = acme.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["Action2", "Action0"]);
    assert_eq!(acme.items[0].time, at(20));
    assert_eq!(acme.items[0].peer, "127.0.0.1:1");

    // Retention: everything before t=25 goes, in batches.
    assert_eq!(s.purge_audit_events(at(25), 2).await.unwrap(), 2);
    assert_eq!(s.purge_audit_events(at(25), 2).await.unwrap(), 1);
    assert_eq!(s.purge_audit_events(at(25), 2).await.unwrap(), 0);
    let left = callers
        .list_audit_events(None, None, &page(0, ""))
        .await
        .unwrap();
    assert_eq!(left.items.len(), 3);
    let _ = clock.now();
}
