//! Test harness shared by the integration tests (`tests/it`) and the demo.
//!
//! Everything runs against the real services that `cargo xtask setup`
//! started (Redis, Docker, Garage); each test isolates itself with a unique
//! Redis namespace, repository and worker, never by flushing shared state.
//! A missing service fails loudly.

#![allow(clippy::unwrap_used)]

pub mod apps;
pub mod fixtures;
pub mod git_server;
pub mod github;
pub mod oidc;
pub mod outage;
pub mod providers;
pub mod redis_server;
pub mod services;

pub use apps::{TEST_AUDIT_KEY, TestApp, WorkerHandle, WorkerProcess, spawn_app};
pub use git_server::GitServer;

/// Asserts that `text` (usually a run's log) holds every one of `needles`,
/// naming the first one missing.
pub fn assert_contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}

/// Writes a new 2048-bit RSA private key (PEM) to `private` with openssl and
/// returns its public key (PEM): for emulated identity providers.
pub fn rsa_key_pair(private: &std::path::Path) -> Vec<u8> {
    let quiet = || std::process::Stdio::null();
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(private)
        .stderr(quiet())
        .status()
        .expect("openssl runs");
    assert!(made.success(), "openssl genpkey failed");
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(private)
        .output()
        .expect("openssl runs");
    assert!(public.status.success(), "openssl pkey failed");
    public.stdout
}
