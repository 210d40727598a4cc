//! Encryption at rest: AES-256-GCM envelope encryption. Master keys (the key ring, from
//! configuration) wrap data keys (DEKs, stored wrapped in the database); DEKs encrypt the
//! secrets. A new master key wraps the data keys made from then on; the old key stays in the
//! ring for the data keys it wrapped (re-wrapping them under the new key is a later step,
//! and touches only the data keys, never every secret).

mod envelope;
mod keyring;

pub use envelope::{Aad, Envelope, Rewrapped};
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
