//! Where secrets meet storage: the associated data that binds each ciphertext to its table,
//! column and immutable row id (so a ciphertext copied to another row does not decrypt), and
//! the few steps that encrypt or decrypt a connection's secrets and tokens.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    connection::missing,
    crypto::{Aad, Envelope},
    error::Result,
    ids::TokenKey,
    oauth::TokenResponse,
    store::{ConnectionRecord, TokenRecord},
};

pub(crate) const CONNECTIONS: &str = "connections";
pub(crate) const TOKENS: &str = "tokens";

/// Connection secrets are bound to the connection's immutable row id and their column.
pub(crate) fn connection_aad(id: uuid::Uuid, column: &'static str) -> Aad<'static> {
    Aad {
        table: CONNECTIONS,
        column,
        row: id,
        qualifier: "",
    }
}

/// A grant's refresh token is bound to the grant's immutable row id.
pub(crate) fn grant_aad(id: uuid::Uuid) -> Aad<'static> {
    Aad {
        table: "grants",
        column: "refresh_token",
        row: id,
        qualifier: "",
    }
}

/// Token rows are keyed by (connection id, subject); both are immutable, so both are bound.
pub(crate) fn token_aad<'a>(conn: &ConnectionRecord, key: &'a TokenKey) -> Aad<'a> {
    Aad {
        table: TOKENS,
        column: "access_token",
        row: conn.id,
        qualifier: key.subject.as_str(),
    }
}

/// The connection's client secret, decrypted.
pub(crate) async fn client_secret_of(
    envelope: &Envelope,
    conn: &ConnectionRecord,
) -> Result<SecretString> {
    let ct = conn
        .client_secret
        .as_ref()
        .ok_or_else(|| missing(conn, "client_secret"))?;
    Ok(envelope
        .decrypt_string(connection_aad(conn.id, "client_secret"), ct)
        .await?)
}

/// A provider's answer as a storable (encrypted) record. Shared with the code exchange.
/// `sent_at` is when the request left: the provider's `expires_in` counts from when it
/// received it, so counting from the answer's arrival would overstate the lifetime by the
/// round trip (and by every retry).
pub(crate) async fn token_record(
    envelope: &Envelope,
    sent_at: OffsetDateTime,
    conn: &ConnectionRecord,
    key: &TokenKey,
    response: TokenResponse,
) -> Result<(TokenRecord, Duration, TokenResponse)> {
    // Microsecond precision, as both databases store it: memory and store then agree.
    let fetched_at = sent_at
        .replace_nanosecond(sent_at.nanosecond() / 1000 * 1000)
        .unwrap_or(sent_at);
    let plaintext = response.access_token.expose_secret().as_bytes();
    let record = TokenRecord {
        connection_id: conn.id,
        subject: key.subject.as_str().to_owned(),
        connection_version: conn.version,
        access_token: envelope.encrypt(token_aad(conn, key), plaintext).await?,
        token_sha256: Sha256::digest(plaintext).to_vec(),
        scopes: response.scopes.clone(),
        expires_at: fetched_at + response.expires_in,
        fetched_at,
    };
    Ok((record, response.expires_in, response))
}
