//! `/v1/tenants/{tenant}/secrets`: values a tenant registers so that every
//! prompt, answer, log and transcript of its runs has them redacted.

pub mod handlers;
