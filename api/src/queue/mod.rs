//! `/v1/queue`: exact depth counters.

pub mod handlers;
