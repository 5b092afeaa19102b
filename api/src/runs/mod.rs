//! `/v1/runs`: request a run, follow it, read its logs.

pub mod cursor;
pub mod dto;
pub mod handlers;
pub mod record;
pub mod service;
