//! Role bindings, service accounts and their tokens, people's status,
//! emergency revocation, and the audit events of every change to them.

pub mod handlers;
pub mod revoke;
