//! Encryption at rest: AES-256-GCM envelope encryption. Master keys (the key ring, from
//! configuration) wrap data keys (DEKs, stored wrapped in the database); DEKs encrypt the
//! secrets. A new master key wraps the data keys made from then on; `Envelope::rewrap` then
//! re-wraps the older data keys under it — the data keys only, never every secret — after
//! which the old master key can leave the ring.

mod envelope;
mod keyring;

pub use envelope::{Aad, Envelope, Rewrapped};

impl From<crate::store::StoreError> for CryptoError {
    fn from(e: crate::store::StoreError) -> Self {
        CryptoError::Store(e.to_string())
    }
}
pub use keyring::{KeyRing, MasterKey};

/// Why a ciphertext could not be produced or opened. Deliberately coarse: an attacker
/// probing ciphertexts learns nothing from which check failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("invalid master key ring: {0}")]
    KeyRing(String),
    #[error("ciphertext is malformed (unknown format version or truncated)")]
    Malformed,
    #[error("data key {0} is not available (unknown or wrapped by a master key not in the ring)")]
    UnknownDek(uuid::Uuid),
    #[error("master key {0:?} is not in TOKENVEND_MASTER_KEYS")]
    UnknownMasterKey(String),
    #[error("decryption failed: wrong key, wrong row, or tampered ciphertext")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("data key storage failed: {0}")]
    Store(String),
    #[error(
        "TOKENVEND_MASTER_KEYS lacks master keys that still wrap stored data: {0}; put them back (after the active key) and run `tokenvend rewrap` before removing them"
    )]
    MasterKeysMissing(String),
}
