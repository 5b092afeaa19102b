//! `/v1/limits`: concurrency caps per tenant and repository, tenant weights.

pub mod handlers;
