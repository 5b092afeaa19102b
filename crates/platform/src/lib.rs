//! Process plumbing every Paddock binary shares: how a process calls out
//! (TLS trust, corporate proxy), the accept loop of its listeners, the
//! configuration loader, telemetry and metrics.

pub mod aws_credentials;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod telemetry;
