//! Envelope encryption of secrets at rest.
//!
//! Ciphertext layout: `version (1) ‖ dek_id (16, UUID) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`.
//! The associated data binds a ciphertext to `table ‖ column ‖ immutable row UUID ‖ qualifier`,
//! so a value copied to another row or column — or left behind by a deleted and re-created
//! tenant of the same name — does not decrypt.
//!
//! Each process makes its own data key the first time it encrypts, and retires it after
//! [`DEK_MAX_USES`] encryptions: with one writer per key the count is exact without any
//! shared counter, and random 96-bit nonces stay far below the 2^32 NIST bound.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use dashmap::DashMap;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{CryptoError, KeyRing, keyring::MasterKey};
use crate::store::{DataKeyStore, WrappedDek};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 16 + NONCE_LEN;

/// Data keys are retired long before 2^32 random-nonce encryptions.
pub const DEK_MAX_USES: u64 = 1 << 24;

/// Where a ciphertext belongs. Part of the AEAD's associated data, never stored itself.
#[derive(Clone, Copy, Debug)]
pub struct Aad<'a> {
    pub table: &'static str,
    pub column: &'static str,
    /// The row's immutable UUID (never a slug: slugs can be re-used after a delete).
    pub row: Uuid,
    /// Further immutable key parts of the row (e.g. the subject of a token row), or "".
    pub qualifier: &'a str,
}

impl Aad<'_> {
    fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.qualifier.len());
        v.extend_from_slice(b"tokenvend.v1\0");
        v.extend_from_slice(self.table.as_bytes());
        v.push(0);
        v.extend_from_slice(self.column.as_bytes());
        v.push(0);
        v.extend_from_slice(self.row.as_bytes());
        v.push(0);
        v.extend_from_slice(self.qualifier.as_bytes());
        v
    }
}

struct ActiveDek {
    id: Uuid,
    cipher: Arc<Aes256Gcm>,
    uses: AtomicU64,
}

pub struct Envelope {
    ring: KeyRing,
    store: Arc<dyn DataKeyStore>,
    /// The data key this process encrypts with. A std lock: held only for a pointer copy.
    active: RwLock<Option<Arc<ActiveDek>>>,
    /// Serialises making a new data key, so a burst of first encryptions makes one.
    rotating: tokio::sync::Mutex<()>,
    /// Unwrapped data keys by id, for decryption.
    deks: DashMap<Uuid, Arc<Aes256Gcm>>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl Envelope {
    pub fn new(ring: KeyRing, store: Arc<dyn DataKeyStore>) -> Self {
        Self {
            ring,
            store,
            active: RwLock::new(None),
            rotating: tokio::sync::Mutex::new(()),
            deks: DashMap::new(),
        }
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    pub async fn encrypt(&self, aad: Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let dek = self.active_dek().await?;
        let nonce = Nonce::generate();
        let sealed = dek
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad.to_bytes(),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(dek.id.as_bytes());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub async fn decrypt(
        &self,
        aad: Aad<'_>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() < HEADER_LEN + TAG_LEN || ciphertext[0] != FORMAT_V1 {
            return Err(CryptoError::Malformed);
        }
        let id = Uuid::from_slice(&ciphertext[1..17]).map_err(|_| CryptoError::Malformed)?;
        let nonce =
            Nonce::try_from(&ciphertext[17..HEADER_LEN]).map_err(|_| CryptoError::Malformed)?;
        let cipher = self.dek(id).await?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &ciphertext[HEADER_LEN..],
                    aad: &aad.to_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(Zeroizing::new(plain))
    }

    /// Convenience for UTF-8 secrets.
    pub async fn decrypt_string(
        &self,
        aad: Aad<'_>,
        ciphertext: &[u8],
    ) -> Result<secrecy::SecretString, CryptoError> {
        let plain = self.decrypt(aad, ciphertext).await?;
        let s = std::str::from_utf8(&plain).map_err(|_| CryptoError::Malformed)?;
        Ok(secrecy::SecretString::from(s))
    }

    async fn active_dek(&self) -> Result<Arc<ActiveDek>, CryptoError> {
        if let Some(dek) = self.usable_active() {
            return Ok(dek);
        }
        let _guard = self.rotating.lock().await;
        if let Some(dek) = self.usable_active() {
            return Ok(dek);
        }
        let id = Uuid::now_v7();
        let key = Key::<Aes256Gcm>::generate();
        let master = self.ring.active();
        self.store
            .insert_data_key(&wrap(master, id, key.as_slice())?)
            .await?;
        let cipher = Arc::new(Aes256Gcm::new(&key));
        self.deks.insert(id, cipher.clone());
        let dek = Arc::new(ActiveDek {
            id,
            cipher,
            uses: AtomicU64::new(1),
        });
        *self.active.write().expect("dek lock poisoned") = Some(dek.clone());
        tracing::info!(dek_id = %id, master_key_id = %master.id, "created a new data encryption key");
        Ok(dek)
    }

    /// The active key if it has uses left; counts this use.
    fn usable_active(&self) -> Option<Arc<ActiveDek>> {
        let guard = self.active.read().expect("dek lock poisoned");
        let dek = guard.as_ref()?;
        (dek.uses.fetch_add(1, Ordering::Relaxed) < DEK_MAX_USES).then(|| dek.clone())
    }

    async fn dek(&self, id: Uuid) -> Result<Arc<Aes256Gcm>, CryptoError> {
        if let Some(c) = self.deks.get(&id) {
            return Ok(c.clone());
        }
        let stored = self
            .store
            .get_data_key(id)
            .await?
            .ok_or(CryptoError::UnknownDek(id))?;
        let key = self.unwrap(&stored)?;
        let cipher = Arc::new(Aes256Gcm::new_from_slice(&key).map_err(|_| CryptoError::Malformed)?);
        self.deks.insert(id, cipher.clone());
        Ok(cipher)
    }
}

impl Envelope {
    /// A stored data key, unwrapped by the master key that wrapped it.
    fn unwrap(&self, stored: &WrappedDek) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let master = self
            .ring
            .get(&stored.master_key_id)
            .ok_or_else(|| CryptoError::UnknownMasterKey(stored.master_key_id.clone()))?;
        if stored.wrapped.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = stored.wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
        Ok(Zeroizing::new(
            master
                .cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: sealed,
                        aad: &dek_aad(stored.id, &master.id),
                    },
                )
                .map_err(|_| CryptoError::Decrypt)?,
        ))
    }

    /// Refuses a ring that lacks a master key still wrapping stored data keys: every
    /// secret under those keys would fail to decrypt. Says which keys and how many.
    pub async fn check_ring(&self) -> Result<(), CryptoError> {
        let uses = self.store.master_key_uses().await?;
        let missing: Vec<String> = uses
            .iter()
            .filter(|u| u.data_keys > 0 && self.ring.get(&u.master_key_id).is_none())
            .map(|u| {
                format!(
                    "{:?} still wraps {} data key(s)",
                    u.master_key_id, u.data_keys
                )
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CryptoError::MasterKeysMissing(missing.join(", ")))
        }
    }

    /// Re-wraps every data key under the active master key, `batch` at a time: online (each
    /// key is one conditional update; the data key itself, and so every ciphertext and every
    /// cached key, stays the same), resumable (what is done stays done), safe to run on
    /// several replicas at once (a key another run re-wrapped first is skipped).
    pub async fn rewrap(&self, batch: u32) -> Result<Rewrapped, CryptoError> {
        let active = self.ring.active();
        let mut done = Rewrapped::default();
        let mut after = None;
        loop {
            let page = self
                .store
                .data_keys_not_wrapped_by(&active.id, after, batch.max(1))
                .await?;
            let Some(last) = page.last() else {
                return Ok(done);
            };
            after = Some(last.id);
            for stored in &page {
                let key = match self.unwrap(stored) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(dek_id = %stored.id, master_key_id = %stored.master_key_id, error = %e, "cannot re-wrap a data key: its master key is not usable");
                        done.unreadable += 1;
                        continue;
                    }
                };
                let rewrapped = wrap(active, stored.id, &key)?;
                if self
                    .store
                    .rewrap_data_key(&stored.master_key_id, &rewrapped)
                    .await?
                {
                    done.rewrapped += 1;
                } else {
                    done.raced += 1;
                }
            }
        }
    }
}

/// What a re-wrap pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Data keys now wrapped by the active master key.
    pub rewrapped: u64,
    /// Data keys another pass re-wrapped (or changed) first.
    pub raced: u64,
    /// Data keys whose master key is not in the ring (or does not unwrap them).
    pub unreadable: u64,
}

/// `key` (a data key) wrapped by `master`, bound to its id and the master key's id.
fn wrap(master: &MasterKey, id: Uuid, key: &[u8]) -> Result<WrappedDek, CryptoError> {
    let nonce = Nonce::generate();
    let wrapped = master
        .cipher
        .encrypt(
            &nonce,
            Payload {
                msg: key,
                aad: &dek_aad(id, &master.id),
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&wrapped);
    Ok(WrappedDek {
        id,
        master_key_id: master.id.clone(),
        wrapped: blob,
    })
}

fn dek_aad(id: Uuid, master_key_id: &str) -> Vec<u8> {
    let mut v = b"tokenvend.dek\0".to_vec();
    v.extend_from_slice(id.as_bytes());
    v.push(0);
    v.extend_from_slice(master_key_id.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{DataKeyStore, MasterKeyUse, StoreError};

    #[derive(Default)]
    struct MemDeks(Mutex<Vec<WrappedDek>>);

    #[async_trait::async_trait]
    impl DataKeyStore for MemDeks {
        async fn insert_data_key(&self, dek: &WrappedDek) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(dek.clone());
            Ok(())
        }
        async fn get_data_key(&self, id: Uuid) -> Result<Option<WrappedDek>, StoreError> {
            Ok(self.0.lock().unwrap().iter().find(|d| d.id == id).cloned())
        }
        async fn master_key_uses(&self) -> Result<Vec<MasterKeyUse>, StoreError> {
            let mut uses: Vec<MasterKeyUse> = Vec::new();
            for d in self.0.lock().unwrap().iter() {
                match uses.iter_mut().find(|u| u.master_key_id == d.master_key_id) {
                    Some(u) => u.data_keys += 1,
                    None => uses.push(MasterKeyUse {
                        master_key_id: d.master_key_id.clone(),
                        data_keys: 1,
                    }),
                }
            }
            Ok(uses)
        }
        async fn data_keys_not_wrapped_by(
            &self,
            master: &str,
            after: Option<Uuid>,
            limit: u32,
        ) -> Result<Vec<WrappedDek>, StoreError> {
            let mut v: Vec<WrappedDek> = (self.0.lock().unwrap().iter())
                .filter(|d| d.master_key_id != master && Some(d.id) > after)
                .cloned()
                .collect();
            v.sort_by_key(|d| d.id);
            v.truncate(limit as usize);
            Ok(v)
        }
        async fn rewrap_data_key(&self, from: &str, dek: &WrappedDek) -> Result<bool, StoreError> {
            let mut all = self.0.lock().unwrap();
            match all
                .iter_mut()
                .find(|d| d.id == dek.id && d.master_key_id == from)
            {
                Some(d) => {
                    *d = dek.clone();
                    Ok(true)
                }
                None => Ok(false),
            }
        }
    }

    fn aad(row: Uuid) -> Aad<'static> {
        Aad {
            table: "connections",
            column: "client_secret",
            row,
            qualifier: "",
        }
    }

    #[tokio::test]
    async fn round_trip_and_binding() {
        let store = Arc::new(MemDeks::default());
        let ring = KeyRing::parse(&KeyRing::generate_entry("k1")).unwrap();
        let env = Envelope::new(ring, store.clone());
        let row = Uuid::now_v7();
        let ct = env.encrypt(aad(row), b"s3cret").await.unwrap();
        assert_eq!(ct[0], FORMAT_V1);
        assert!(!ct.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(&*env.decrypt(aad(row), &ct).await.unwrap(), b"s3cret");
        // one data key for many encryptions
        env.encrypt(aad(row), b"x").await.unwrap();
        assert_eq!(store.0.lock().unwrap().len(), 1);

        // another row, column or qualifier: fails
        assert!(matches!(
            env.decrypt(aad(Uuid::now_v7()), &ct).await,
            Err(CryptoError::Decrypt)
        ));
        let other_col = Aad {
            column: "api_key",
            ..aad(row)
        };
        assert!(env.decrypt(other_col, &ct).await.is_err());
        let other_q = Aad {
            qualifier: "alice",
            ..aad(row)
        };
        assert!(env.decrypt(other_q, &ct).await.is_err());

        // tampering with any byte fails
        for i in [0, 5, 20, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert!(env.decrypt(aad(row), &bad).await.is_err(), "byte {i}");
        }
        assert!(matches!(
            env.decrypt(aad(row), &ct[..10]).await,
            Err(CryptoError::Malformed)
        ));
    }

    #[tokio::test]
    async fn other_process_and_key_rotation() {
        let store = Arc::new(MemDeks::default());
        let old = KeyRing::generate_entry("old");
        let new = KeyRing::generate_entry("new");
        let env = Envelope::new(KeyRing::parse(&old).unwrap(), store.clone());
        let row = Uuid::now_v7();
        let ct = env.encrypt(aad(row), b"s3cret").await.unwrap();

        // a second process with the old key still in its ring decrypts (DEK loaded from store)
        let rotated = Envelope::new(
            KeyRing::parse(&format!("{},{}", *new, *old)).unwrap(),
            store.clone(),
        );
        assert_eq!(&*rotated.decrypt(aad(row), &ct).await.unwrap(), b"s3cret");
        // its new encryptions use a DEK wrapped by the new key
        rotated.encrypt(aad(row), b"y").await.unwrap();
        assert_eq!(store.0.lock().unwrap()[1].master_key_id, "new");

        // a process without the old master key cannot
        let without = Envelope::new(KeyRing::parse(&new).unwrap(), store.clone());
        assert!(matches!(
            without.decrypt(aad(row), &ct).await,
            Err(CryptoError::UnknownMasterKey(id)) if id == "old"
        ));
        // a wrong key under the same id cannot either
        let imposter = Envelope::new(
            KeyRing::parse(&KeyRing::generate_entry("old")).unwrap(),
            store.clone(),
        );
        assert!(matches!(
            imposter.decrypt(aad(row), &ct).await,
            Err(CryptoError::Decrypt)
        ));
    }

    /// Rotation end to end: a new key first, re-wrap, then the old key can go — and until
    /// the re-wrap, a ring without it is refused with the count of what it still wraps.
    #[tokio::test]
    async fn rewrap_lets_the_old_master_key_go() {
        let store = Arc::new(MemDeks::default());
        let old = KeyRing::generate_entry("old");
        let new = KeyRing::generate_entry("new");
        let env = Envelope::new(KeyRing::parse(&old).unwrap(), store.clone());
        let row = Uuid::now_v7();
        let ct = env.encrypt(aad(row), b"s3cret").await.unwrap();

        let without = Envelope::new(KeyRing::parse(&new).unwrap(), store.clone());
        match without.check_ring().await {
            Err(CryptoError::MasterKeysMissing(m)) => {
                assert!(m.contains("\"old\" still wraps 1 data key"), "{m}")
            }
            other => panic!("{other:?}"),
        }

        let both = Envelope::new(
            KeyRing::parse(&format!("{},{}", *new, *old)).unwrap(),
            store.clone(),
        );
        both.check_ring().await.unwrap();
        // A key this process already unwrapped stays usable during and after the re-wrap.
        assert_eq!(&*both.decrypt(aad(row), &ct).await.unwrap(), b"s3cret");
        let done = both.rewrap(1).await.unwrap();
        assert_eq!(
            done,
            Rewrapped {
                rewrapped: 1,
                raced: 0,
                unreadable: 0
            }
        );
        assert_eq!(
            both.rewrap(1).await.unwrap(),
            Rewrapped::default(),
            "resumable: nothing left"
        );
        assert_eq!(&*both.decrypt(aad(row), &ct).await.unwrap(), b"s3cret");

        // Now the old key can go: the check passes and the old ciphertext still decrypts.
        let only_new = Envelope::new(KeyRing::parse(&new).unwrap(), store.clone());
        only_new.check_ring().await.unwrap();
        assert_eq!(&*only_new.decrypt(aad(row), &ct).await.unwrap(), b"s3cret");
        // A stale re-wrap (from a master key the row no longer has) changes nothing.
        let stale = store.0.lock().unwrap()[0].clone();
        assert!(!store.rewrap_data_key("old", &stale).await.unwrap());
    }

    #[tokio::test]
    async fn retires_exhausted_dek() {
        let store = Arc::new(MemDeks::default());
        let env = Envelope::new(
            KeyRing::parse(&KeyRing::generate_entry("k")).unwrap(),
            store.clone(),
        );
        env.encrypt(aad(Uuid::nil()), b"a").await.unwrap();
        env.active
            .read()
            .unwrap()
            .as_ref()
            .unwrap()
            .uses
            .store(DEK_MAX_USES, Ordering::Relaxed);
        env.encrypt(aad(Uuid::nil()), b"b").await.unwrap();
        assert_eq!(store.0.lock().unwrap().len(), 2);
    }
}
