//! The egress proxy a sandbox reaches the outside through, and the policy it
//! enforces: hostnames on the run's allowlist only, ports 80 and 443 only, no
//! IP literals, and never a private, loopback or link-local address (unless
//! an operator trusts that network). The proxy resolves names itself; the
//! sandbox has no DNS. A CONNECT tunnel carries TLS only, for the host it
//! was opened to (the ClientHello's server name must be that host).

mod policy;
mod proxy;
mod sni;

pub use policy::{Decision, EgressPolicy, PolicyError};
pub use proxy::{EgressLog, EgressProxy, EgressRecord, MAX_EGRESS_RECORDS};
