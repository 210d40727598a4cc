//! The master key ring from `TOKENVEND_MASTER_KEYS`: `id:<base64 of 32 bytes>,…`, the first
//! entry active (wraps new data keys), the rest kept to unwrap data keys made before a rotation.

use std::fmt;

use aes_gcm::{
    Aes256Gcm, Key,
    aead::{Generate, KeyInit},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::CryptoError;

/// One master key. The cipher zeroizes its key schedule on drop (aes-gcm `zeroize` feature).
pub struct MasterKey {
    pub id: String,
    pub(super) cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<MasterKey>,
}

impl KeyRing {
    /// Parses the ring. Errors never echo key material, only positions and ids.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (id, b64) = entry.split_once(':').ok_or_else(|| {
                CryptoError::KeyRing(format!(
                    "entry {} is not of the form id:<base64 key>",
                    i + 1
                ))
            })?;
            let id_ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !id_ok {
                return Err(CryptoError::KeyRing(format!(
                    "entry {}: key id must be 1-64 of [A-Za-z0-9._-]",
                    i + 1
                )));
            }
            let bytes = Zeroizing::new(STANDARD.decode(b64.trim()).map_err(|_| {
                CryptoError::KeyRing(format!("key {id:?}: not standard padded base64"))
            })?);
            if bytes.len() != 32 {
                return Err(CryptoError::KeyRing(format!(
                    "key {id:?}: must be 32 bytes, got {}",
                    bytes.len()
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(CryptoError::KeyRing(format!("key id {id:?} appears twice")));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| CryptoError::KeyRing(format!("key {id:?}: bad length")))?;
            keys.push(MasterKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(CryptoError::KeyRing("no master key given".into()));
        }
        Ok(Self { keys })
    }

    /// A fresh `id:<base64>` entry, as printed by `tokenvend keygen`.
    pub fn generate_entry(id: &str) -> Zeroizing<String> {
        let key = Key::<Aes256Gcm>::generate();
        Zeroizing::new(format!("{id}:{}", STANDARD.encode(key.as_slice())))
    }

    /// The key that wraps new data keys.
    pub fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let a = KeyRing::generate_entry("k1");
        let b = KeyRing::generate_entry("k0");
        let ring = KeyRing::parse(&format!("{},{}", *a, *b)).unwrap();
        assert_eq!(ring.active().id, "k1");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1", "k0"]);
        assert!(ring.get("k0").is_some());

        for bad in ["", "nokey", "k:!!!", "k:AAAA", "bad id:AAAA"] {
            assert!(KeyRing::parse(bad).is_err(), "{bad}");
        }
        let dup = format!("{},{}", *a, *a);
        assert!(
            KeyRing::parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        // the error must not echo the key material
        let secretish = "k:c2VjcmV0LWtleS1tYXRlcmlhbA==";
        let err = KeyRing::parse(secretish).unwrap_err().to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        // Debug prints ids only
        assert!(!format!("{ring:?}").contains(a.split(':').nth(1).unwrap()));
    }
}
