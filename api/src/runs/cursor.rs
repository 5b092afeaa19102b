//! Run-list cursors are opaque: the position (a run id) sealed under a key
//! derived from the API's own secret, so a cursor names no run the caller
//! could not see and cannot be forged to start anywhere else.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::RunId;
use common::sealed::SecretBox;

/// Characters of a cursor: base64url of a 12-byte nonce, the 26-character
/// id and a 16-byte tag.
pub const CURSOR_CHARS: usize = 72;

#[derive(Clone)]
pub struct Cursors(SecretBox);

impl Cursors {
    pub fn new(secret: &[u8]) -> Self {
        Self(SecretBox::derived("paddock run-list cursor", secret))
    }

    pub fn seal(&self, position: RunId) -> String {
        let sealed = STANDARD.decode(self.0.seal(&position.to_string())).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(sealed)
    }

    /// The position, if `cursor` is one this API sealed.
    pub fn open(&self, cursor: &str) -> Option<RunId> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        self.0.open(&STANDARD.encode(bytes)).ok()?.parse().ok()
    }
}

/// Whether `cursor` has a cursor's shape (the document's pattern).
pub fn shape_ok(cursor: &str) -> bool {
    cursor.len() == CURSOR_CHARS && cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_hide_the_position_and_refuse_forgeries() {
        let (ours, theirs) = (Cursors::new(b"one secret"), Cursors::new(b"another secret"));
        let id = RunId::new();
        let cursor = ours.seal(id);
        assert!(shape_ok(&cursor), "{cursor}");
        assert!(!cursor.contains(&id.to_string()));
        assert_eq!(ours.open(&cursor), Some(id));
        assert_eq!(theirs.open(&cursor), None);
        assert_ne!(ours.seal(id), cursor, "a fresh nonce each time");
        assert_eq!(ours.open(&id.to_string()), None, "a bare run id is no cursor");
        let mut flipped = cursor.into_bytes();
        flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
        assert_eq!(ours.open(&String::from_utf8(flipped).unwrap()), None);
    }
}
