//! `Debug` never shows a secret: every type that holds one is formatted here with a planted
//! value, and the output is searched for it — as text and as the byte list a derived `Debug`
//! of a `Vec<u8>` would print.

use std::time::Duration;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokenvend_core::{
    access::{Authorizer, keys},
    cache::CachedToken,
    clock::SystemClock,
    crypto::KeyRing,
    ids::{PrincipalId, ProviderId, TenantId},
    oauth::parse_token_response,
    store::{
        ApiKeyRecord, ConnectionRecord, GrantRecord, GrantStatus, PendingAuthorization,
        TokenRecord, WrappedDek,
    },
};
use uuid::Uuid;

const SECRET: &str = "Pl4nted-s3cret-value";

fn assert_hidden(what: &str, debug: String) {
    let bytes = format!("{:?}", SECRET.as_bytes());
    let inner = &bytes[1..bytes.len() - 1];
    assert!(!debug.contains(SECRET), "{what} shows the secret: {debug}");
    assert!(
        !debug.contains(inner),
        "{what} shows the secret's bytes: {debug}"
    );
}

#[test]
fn debug_output_never_holds_a_secret() {
    let now = OffsetDateTime::UNIX_EPOCH;
    let bytes = SECRET.as_bytes().to_vec();
    let conn = ConnectionRecord {
        id: Uuid::nil(),
        tenant_id: Uuid::nil(),
        tenant: TenantId::parse("acme").unwrap(),
        provider: ProviderId::parse("p").unwrap(),
        version: 1,
        settings: "{}".into(),
        client_secret: Some(bytes.clone()),
        api_key: Some(bytes.clone()),
        secret_fingerprint: String::new(),
        created_at: now,
        updated_at: now,
    };
    assert_hidden("ConnectionRecord", format!("{conn:?}"));
    let token = TokenRecord {
        connection_id: Uuid::nil(),
        subject: String::new(),
        connection_version: 1,
        access_token: bytes.clone(),
        token_sha256: bytes.clone(),
        scopes: vec![],
        expires_at: now,
        fetched_at: now,
    };
    assert_hidden("TokenRecord", format!("{token:?}"));
    let grant = GrantRecord {
        id: Uuid::nil(),
        connection_id: Uuid::nil(),
        subject: "alice".into(),
        refresh_token: Some(bytes.clone()),
        scopes: vec![],
        status: GrantStatus::Active,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    assert_hidden("GrantRecord", format!("{grant:?}"));
    let pending = PendingAuthorization {
        state_sha256: bytes.clone(),
        id: Uuid::nil(),
        connection_id: Uuid::nil(),
        subject: "alice".into(),
        code_verifier: bytes.clone(),
        redirect_uri: String::new(),
        scopes: vec![],
        expires_at: now,
        created_at: now,
    };
    assert_hidden("PendingAuthorization", format!("{pending:?}"));
    let dek = WrappedDek {
        id: Uuid::nil(),
        master_key_id: "k1".into(),
        wrapped: bytes.clone(),
    };
    assert_hidden("WrappedDek", format!("{dek:?}"));
    let cached = CachedToken::new(SecretString::from(SECRET), None, vec![], None, true, None);
    assert_hidden("CachedToken", format!("{cached:?}"));
    let body =
        format!(r#"{{"access_token":"{SECRET}","refresh_token":"{SECRET}","expires_in":60}}"#);
    let response = parse_token_response(
        200,
        Some("application/json"),
        body.as_bytes(),
        Duration::from_secs(60),
        &[],
        &[],
    )
    .unwrap();
    assert_hidden("TokenResponse", format!("{response:?}"));
    // A master key: its base64 must not show either.
    let entry = KeyRing::generate_entry("k1");
    let key_b64 = entry.split_once(':').unwrap().1.to_owned();
    let ring = format!("{:?}", KeyRing::parse(&entry).unwrap());
    assert!(!ring.contains(&key_b64), "KeyRing shows its key: {ring}");

    // Callers: a stored key's hash, a new key, the bootstrap key inside the decision.
    let stored = ApiKeyRecord {
        key_id: "0123456789abcdef".into(),
        principal: PrincipalId::parse("billing").unwrap(),
        key_sha256: bytes.clone(),
        created_at: now,
        expires_at: None,
        last_used_at: None,
    };
    assert_hidden("ApiKeyRecord", format!("{stored:?}"));
    let new = keys::generate().unwrap();
    let shown = format!("{new:?}");
    assert!(
        !shown.contains(new.api_key.expose_secret()),
        "NewKey shows its key: {shown}"
    );
    let auth = Authorizer::new(Some(SECRET), Arc::new(SystemClock));
    assert_hidden("Authorizer", format!("{auth:?}"));
}
