//! The audit trail as the API serves it: events, verification, status,
//! legal holds and retention, and compliance exports.

pub mod exports;
pub mod handlers;
pub mod holds;
