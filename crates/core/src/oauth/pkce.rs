//! PKCE (RFC 7636) and the `state` value: both unguessable, both from the OS RNG.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// 32 random bytes, unpadded base64url: 43 characters, the RFC 7636 minimum, well under
/// its 128-character maximum (the ev.energy sample's recipe can exceed it).
pub fn random_token() -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::fill(&mut bytes[..]);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}

/// The S256 challenge of a verifier.
pub fn challenge(verifier: &SecretString) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        // RFC 7636 Appendix B: verifier → challenge
        let v43 = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            challenge(&v43),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_43_unreserved_characters_and_differ() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.expose_secret().len(), 43);
        assert!(
            a.expose_secret()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
