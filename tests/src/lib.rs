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
pub mod providers;
pub mod redis_server;
pub mod services;

pub use apps::{TestApp, WorkerHandle, WorkerProcess, spawn_app};
pub use git_server::GitServer;

/// Asserts that `text` (usually a run's log) holds every one of `needles`,
/// naming the first one missing.
pub fn assert_contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}
