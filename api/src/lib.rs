//! The admin service: the only crate that speaks HTTP to users.
//!
//! Handlers are thin: extract (authentication included), call the queue or
//! the object store, map to a DTO. Every error leaves as problem+json.

pub mod audit;
pub mod auth;
pub mod contract;
pub mod costs;
pub mod health;
pub mod identity;
pub mod json;
pub mod limits;
pub mod oidc;
pub mod openapi;
pub mod people;
pub mod policies;
pub mod problem;
pub mod providers;
pub mod queue;
pub mod request_id;
pub mod runs;
pub mod secrets;
pub mod startup;
pub mod tenants;
pub mod webhooks;

pub use startup::{AppState, Application};
