//! Sealing events for the pending log. An event accepted with its action
//! waits in Redis until a shipper moves it into the trail; while it waits,
//! a Redis administrator could edit it. The process that accepted the
//! action seals the event with an HMAC under a key derived from the audit
//! signing key, which Redis never holds: an edited pending event no longer
//! verifies, and the sequence Redis numbers events with shows one deleted.

use common::audit::{AuditEvent, SealedEvent};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuditError;

/// What the MAC key is derived from the signing key for (a key used for
/// one purpose only).
const PURPOSE: &[u8] = b"paddock audit pending-event seal v1";

/// Seals and checks pending events. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The sealer of the deployment whose digests `key` signs.
    pub fn new(key: &ed25519_dalek::SigningKey) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
        mac.update(PURPOSE);
        Self { key: mac.finalize().into_bytes().into() }
    }

    /// From `audit.signing_key`, as [`super::from_config`] reads it.
    pub fn from_config(config: &common::config::Config) -> Result<Self, AuditError> {
        Ok(Self::new(&super::configured_key(config)?))
    }

    fn mac(&self, json: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(json);
        mac
    }

    /// `event` as JSON with its seal.
    pub fn seal(&self, event: &AuditEvent) -> Result<SealedEvent, AuditError> {
        let json = serde_json::to_string(event)
            .map_err(|e| AuditError::Unavailable(objstore::StoreError::new(format!("an audit event: {e}"))))?;
        let mac = common::hash::hex(&self.mac(json.as_bytes()).finalize().into_bytes());
        Ok(SealedEvent { json, mac })
    }

    /// Whether `mac` (hex) seals `json` (in constant time).
    pub fn verifies(&self, json: &str, mac: &str) -> bool {
        let Some(tag) = unhex(mac) else { return false };
        self.mac(json.as_bytes()).verify_slice(&tag).is_ok()
    }
}

impl common::audit::EventSealer for Sealer {
    fn seal_event(&self, event: &AuditEvent) -> Result<SealedEvent, String> {
        self.seal(event).map_err(|e| e.to_string())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::audit::{Actor, ObjectRef};

    #[test]
    fn a_sealed_event_verifies_and_any_edit_or_another_key_does_not() {
        let sealer = Sealer::new(&ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let actor = Actor { principal: "alice@example.com".to_owned(), method: "oidc".to_owned(), via: None };
        let sealed = sealer.seal(&AuditEvent::new("run.request", actor, ObjectRef::new("run", "r1"))).unwrap();
        assert!(sealer.verifies(&sealed.json, &sealed.mac));
        assert!(!sealer.verifies(&sealed.json.replace("alice@", "mallory@"), &sealed.mac));
        assert!(!sealer.verifies(&sealed.json, &sealed.mac[..62]));
        assert!(!sealer.verifies(&sealed.json, "zz"));
        let other = Sealer::new(&ed25519_dalek::SigningKey::from_bytes(&[4; 32]));
        assert!(!other.verifies(&sealed.json, &sealed.mac));
    }
}
