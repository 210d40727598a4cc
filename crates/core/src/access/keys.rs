//! The API key format: `tvk_<key id>_<secret>`.
//!
//! The prefix makes a leaked key recognisable to secret scanners; the key id (public, also
//! in `ListApiKeys` and the audit log) finds the stored hash by primary key, so checking a
//! key never scans; the secret is 256 bits from the operating system's RNG. Only the
//! SHA-256 of the whole key is stored: a key is already high-entropy, so a slow password
//! hash would add nothing but latency on every call.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRng, rngs::SysRng};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "tvk_";
/// 8 random bytes as hex: unique enough as a primary key (collisions are retried).
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A freshly generated key: the key itself goes to the operator once, the rest is stored.
pub struct NewKey {
    pub key_id: String,
    pub api_key: SecretString,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The OS RNG failed: nothing sensible can be generated.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RngFailed(String);

pub fn generate() -> Result<NewKey, RngFailed> {
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    SysRng
        .try_fill_bytes(&mut id)
        .and_then(|()| SysRng.try_fill_bytes(secret.as_mut()))
        .map_err(|e| RngFailed(e.to_string()))?;
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let api_key = format!(
        "{PREFIX}{key_id}_{}",
        URL_SAFE_NO_PAD.encode(secret.as_ref())
    );
    let sha256 = digest(&api_key);
    Ok(NewKey {
        key_id,
        api_key: api_key.into(),
        sha256,
    })
}

/// The key id of a presented key, if it has our shape. Says nothing about validity.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = id.len() == KEY_ID_BYTES * 2
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && !secret.is_empty()).then_some(id)
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn generated_keys_have_the_scannable_shape_and_their_hash() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let key = a.api_key.expose_secret();
        assert!(key.starts_with("tvk_"), "{}", a.key_id);
        assert_eq!(key_id(key), Some(a.key_id.as_str()));
        assert_eq!(digest(key), a.sha256);
        // 4 + 16 + 1 + 43 characters: 256 bits of secret after the id.
        assert_eq!(key.len(), 64);
        assert_ne!(a.key_id, b.key_id);
        assert_ne!(a.sha256, b.sha256);
        assert!(!format!("{a:?}").contains(key));
    }

    #[test]
    fn only_our_shape_has_a_key_id() {
        for bad in [
            "",
            "tvk_",
            "tvk_0123456789abcdef",
            "tvk_0123456789abcdef_",
            "tvk_0123456789ABCDEF_x",
            "tvk_0123_x",
            "xyz_0123456789abcdef_x",
            "correct-horse-battery-staple",
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
        assert_eq!(
            key_id("tvk_0123456789abcdef_secret_with_underscores"),
            Some("0123456789abcdef")
        );
    }
}
