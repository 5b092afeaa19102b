//! Secrets Paddock must hold in plaintext to redact them (tenant-registered
//! secrets) are stored sealed: ChaCha20-Poly1305 under `secrets.encryption_key`,
//! a fresh random nonce per value, so a Redis dump or backup reveals only
//! fingerprints.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use sha2::{Digest, Sha256};

/// Seals and opens values with one key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secrets.encryption_key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed value is corrupt or was sealed with another key")]
    Unreadable,
}

impl SecretBox {
    /// `key` is 32 bytes in standard base64 (`openssl rand -base64 32`).
    pub fn new(key: &str) -> Result<Self, SealError> {
        let bytes = STANDARD.decode(key.trim()).map_err(|_| SealError::BadKey)?;
        let cipher = ChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self { cipher })
    }

    /// A box whose key is derived from `secret` for one `purpose` only.
    pub fn derived(purpose: &str, secret: &[u8]) -> Self {
        let key = Sha256::new().chain_update(purpose.as_bytes()).chain_update([0]).chain_update(secret).finalize();
        Self { cipher: ChaCha20Poly1305::new(&key) }
    }

    /// Base64 of nonce and ciphertext.
    pub fn seal(&self, plaintext: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.cipher.encrypt(&nonce, plaintext.as_bytes()).expect("encryption of a string cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Unreadable)?;
        if bytes.len() < 12 {
            return Err(SealError::Unreadable);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SealError::Unreadable)?;
        String::from_utf8(plain).map_err(|_| SealError::Unreadable)
    }
}

/// How a secret is shown: the first 12 hex digits of its SHA-256.
pub fn fingerprint(value: &str) -> String {
    crate::hash::hex(&Sha256::digest(value.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn sealed_values_open_only_with_their_key_and_never_repeat() {
        let vault = SecretBox::new(KEY).unwrap();
        let (a, b) = (vault.seal("hunter2-is-a-secret"), vault.seal("hunter2-is-a-secret"));
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(!a.contains("hunter2"));
        assert_eq!(vault.open(&a).unwrap(), "hunter2-is-a-secret");
        let other = SecretBox::new("ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=").unwrap();
        assert!(other.open(&a).is_err());
        let mut tampered = STANDARD.decode(&a).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(vault.open(&STANDARD.encode(tampered)).is_err());
        assert!(SecretBox::new("too-short").is_err());
    }
}
