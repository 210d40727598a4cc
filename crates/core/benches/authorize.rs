//! The authorization decision on the GetToken hot path, caller key vs bootstrap key. Run
//! with `cargo bench -p tokenvend-core --bench authorize`.
//!
//! A caller key costs a key-id parse, one map lookup in a snapshot of 10 000 keys, SHA-256
//! of the presented key, a constant-time compare, the expiry check, the coarse last-use
//! mark, then the (tenant, provider) permission lookup. The bootstrap key costs SHA-256 and
//! a constant-time compare. Both keys are 64 characters (two SHA-256 blocks).

use std::sync::Arc;

use divan::{Bencher, black_box};
use tokenvend_core::{
    access::{Authorizer, keys},
    clock::SystemClock,
    ids::{PrincipalId, ProviderId, TenantId},
    store::{AccessRecords, ApiKeyRecord, PermissionRecord, PrincipalRecord, ProviderScope, Role},
};

const BOOTSTRAP: &str = "bench-bootstrap-admin-key-0123456789abcdef0123456789abcdef012345";

fn main() {
    divan::main();
}

/// 10 000 callers with one key and one permission each; returns the last caller's key.
fn authorizer() -> (Authorizer, String) {
    let now = tokenvend_core::clock::Clock::now(&SystemClock);
    let mut records = AccessRecords::default();
    let mut last = String::new();
    for i in 0..10_000 {
        let name = PrincipalId::parse(format!("caller-{i}")).unwrap();
        records.principals.push(PrincipalRecord {
            id: uuid::Uuid::now_v7(),
            name: name.clone(),
            role: Role::Caller,
            description: String::new(),
            certificate_identity: None,
            created_at: now,
        });
        let key = keys::generate().unwrap();
        records.api_keys.push(ApiKeyRecord {
            key_id: key.key_id.clone(),
            principal: name.clone(),
            key_sha256: key.sha256.to_vec(),
            created_at: now,
            expires_at: Some(now + time::Duration::days(365)),
            last_used_at: None,
        });
        records.permissions.push(PermissionRecord {
            principal: name,
            tenant: TenantId::parse(format!("tenant-{i}")).unwrap(),
            provider: ProviderScope::One(ProviderId::parse("enode").unwrap()),
        });
        last = secrecy::ExposeSecret::expose_secret(&key.api_key).to_owned();
    }
    let authorizer = Authorizer::new(Some(BOOTSTRAP), Arc::new(SystemClock));
    authorizer.replace(records);
    (authorizer, last)
}

#[divan::bench]
fn caller_key(b: Bencher) {
    let (authorizer, key) = authorizer();
    assert_eq!(key.len(), BOOTSTRAP.len());
    b.bench(|| {
        let p = authorizer.authenticate_key(black_box(&key)).unwrap();
        assert!(p.may_get_token(black_box("tenant-9999"), black_box("enode")));
    });
}

#[divan::bench]
fn bootstrap_key(b: Bencher) {
    let (authorizer, _) = authorizer();
    b.bench(|| {
        let p = authorizer.authenticate_key(black_box(BOOTSTRAP)).unwrap();
        assert!(p.may_get_token(black_box("tenant-9999"), black_box("enode")));
    });
}

/// Contended: both cores authenticating the same caller key at once.
#[divan::bench(threads = [2])]
fn caller_key_contended(b: Bencher) {
    let (authorizer, key) = authorizer();
    b.bench(|| {
        let p = authorizer.authenticate_key(black_box(&key)).unwrap();
        assert!(p.may_get_token(black_box("tenant-9999"), black_box("enode")));
    });
}
