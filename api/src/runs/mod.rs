//! `/v1/runs`: request a run, follow it, read its logs (or follow them live).

pub mod cursor;
pub mod dto;
pub mod handlers;
pub mod live;
pub mod record;
pub mod service;
