//! The LLM gateway a sandbox calls models through. One listener per run on
//! the run network's gateway address, authenticated by a per-run token
//! (stored hashed in Redis, revoked when the run ends); it forwards OpenAI
//! Chat Completions / Responses and Anthropic Messages to an allowed
//! provider with the provider's key added here, redacts secrets from the
//! request first, and streams the answer back as it arrives.

mod redact;
mod server;

pub use redact::{Redactions, Redactor, canaries};
pub use server::{CallRecord, GatewayServer, RunGateway, TranscriptEntry};

use std::io::Read;

use sha2::{Digest, Sha256};

/// A new run token: `pdk_run_` and 32 random bytes, base64url.
pub fn mint_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut token = String::from("pdk_run_");
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            token.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    Ok(token)
}

/// How a token is stored and compared: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_stored_hashed() {
        let (a, b) = (mint_token().unwrap(), mint_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("pdk_run_") && a.len() >= 50, "{a}");
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
