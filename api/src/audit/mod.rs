//! The audit trail as the API serves it: events, verification, status,
//! legal holds and retention, compliance exports, and the shipper of the
//! pending log (events written in Redis with their change).

pub mod exports;
pub mod handlers;
pub mod holds;
pub mod pending;
