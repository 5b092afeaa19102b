//! `/v1/policies`: sandbox policy overrides per tenant and repository.

pub mod handlers;
