//! Which destinations a run may reach.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use common::config::{EgressConfig, EgressPreset};
use serde::Serialize;

/// The allowlist of one run, with what the operator trusts.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    pub preset: EgressPreset,
    exact: Vec<String>,
    suffixes: Vec<String>,
    trusted: Vec<(IpAddr, u8)>,
    static_hosts: BTreeMap<String, IpAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid egress configuration: `{key}` {message}")]
pub struct PolicyError {
    pub key: &'static str,
    pub message: String,
}

/// The outcome for one request, recorded whatever it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allowed { addresses: Vec<SocketAddr> },
    Denied { reason: String },
}

fn deny(reason: impl Into<String>) -> Decision {
    Decision::Denied { reason: reason.into() }
}

impl EgressPolicy {
    /// The configured default policy; refuses contradictions at start.
    pub fn from_config(config: &EgressConfig) -> Result<Self, PolicyError> {
        if config.preset == EgressPreset::None && !config.allow.is_empty() {
            return Err(PolicyError {
                key: "egress.allow",
                message: "is set but egress.preset is `none`; use `custom` (or `registries`)".to_owned(),
            });
        }
        Self::for_run(config, config.preset, &config.allow)
    }

    /// A run's policy: its preset and allowlist (from its sandbox policy),
    /// with the operator's registries, trusted networks and static hosts.
    /// `none` allows nothing, whatever the allowlist says.
    pub fn for_run(config: &EgressConfig, preset: EgressPreset, allow: &[String]) -> Result<Self, PolicyError> {
        let mut names: Vec<String> = match preset {
            EgressPreset::None => Vec::new(),
            EgressPreset::Custom | EgressPreset::Registries => allow.to_vec(),
        };
        if preset == EgressPreset::Registries {
            names.extend(config.registries.iter().cloned());
        }
        let (mut exact, mut suffixes) = (Vec::new(), Vec::new());
        for name in names {
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(domain) if valid_hostname(domain) => suffixes.push(format!(".{domain}")),
                None if valid_hostname(&name) => exact.push(name),
                _ => {
                    return Err(PolicyError { key: "egress.allow", message: format!("`{name}` is not a hostname") });
                }
            }
        }
        let trusted = config
            .trusted_networks
            .iter()
            .map(|cidr| {
                parse_cidr(cidr).ok_or_else(|| PolicyError {
                    key: "egress.trusted_networks",
                    message: format!("`{cidr}` is not a CIDR like 10.1.0.0/16"),
                })
            })
            .collect::<Result<_, _>>()?;
        let static_hosts = config
            .static_hosts
            .iter()
            .map(|(name, ip)| {
                ip.parse().map(|ip| (name.to_ascii_lowercase(), ip)).map_err(|_| PolicyError {
                    key: "egress.static_hosts",
                    message: format!("`{ip}` (for {name}) is not an IP address"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { preset, exact, suffixes, trusted, static_hosts })
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.exact.iter().any(|h| h == host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        let inside = is_internal(ip) || is_own_address(ip);
        !inside || self.trusted.iter().any(|(net, bits)| in_network(ip, *net, *bits))
    }

    /// Checks the request before any connection: port, IP literal, allowlist.
    pub fn check(&self, host: &str, port: u16) -> Result<String, Decision> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if port != 80 && port != 443 {
            return Err(deny(format!("port {port} is not 80 or 443")));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() || !valid_hostname(&host) {
            return Err(deny("IP literals are refused; use a hostname on the allowlist"));
        }
        if !self.host_allowed(&host) {
            return Err(deny(format!("{host} is not on the run's allowlist ({:?})", self.preset)));
        }
        Ok(host)
    }

    /// Resolves an allowed host and refuses it when any address is internal
    /// (so a name cannot be pointed at the metadata endpoint or the host).
    pub async fn resolve(&self, host: &str, port: u16) -> Decision {
        let addresses: Vec<SocketAddr> = if let Some(ip) = self.static_hosts.get(host) {
            vec![SocketAddr::new(*ip, port)]
        } else {
            match tokio::net::lookup_host((host, port)).await {
                Ok(found) => found.collect(),
                Err(e) => return deny(format!("{host} does not resolve: {e}")),
            }
        };
        if addresses.is_empty() {
            return deny(format!("{host} has no address"));
        }
        if let Some(bad) = addresses.iter().find(|a| !self.address_allowed(a.ip())) {
            return deny(format!("{host} resolves to {} (private, loopback, link-local or this host's)", bad.ip()));
        }
        Decision::Allowed { addresses }
    }

    /// Both steps.
    pub async fn decide(&self, host: &str, port: u16) -> Decision {
        match self.check(host, port) {
            Ok(host) => self.resolve(&host, port).await,
            Err(denied) => denied,
        }
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !h.rsplit('.').next().unwrap_or_default().chars().all(|c| c.is_ascii_digit())
}

fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Addresses a sandbox must never reach through the proxy.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let segments = v6.segments();
            let first = segments[0];
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6 == Ipv6Addr::LOCALHOST
                // NAT64 (well-known and local-use prefixes) translates to any IPv4 address.
                || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || segments[..3] == [0x64, 0xff9b, 1]
                || (first == 0x2001 && segments[1] == 0) // Teredo tunnels
                || (first == 0x2002 && internal_v4(embedded(segments[1], segments[2]))) // 6to4
                || (segments[..6] == [0; 6] && internal_v4(embedded(segments[6], segments[7]))) // IPv4-compatible
                || first == 0x0100 && segments[1..4] == [0, 0, 0] // discard-only
        }
    }
}

/// Whether `ip` is one of this host's own addresses (binding to it works
/// only then): a sandbox must not reach the worker's own services through
/// the proxy, whichever interface they listen on.
pub fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || ip == Ipv4Addr::new(168, 63, 129, 16) // Azure's host wire server
        || a >= 240
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(preset: EgressPreset, allow: &[&str], trusted: &[&str]) -> EgressPolicy {
        let config = EgressConfig {
            preset,
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            trusted_networks: trusted.iter().map(|s| (*s).to_owned()).collect(),
            static_hosts: BTreeMap::from([
                ("mirror.corp.example".to_owned(), "10.1.2.3".to_owned()),
                ("evil.example".to_owned(), "169.254.169.254".to_owned()),
            ]),
            ..EgressConfig::default()
        };
        EgressPolicy::from_config(&config).unwrap()
    }

    fn denied(d: &Decision) -> bool {
        matches!(d, Decision::Denied { .. })
    }

    #[tokio::test]
    async fn the_default_allows_nothing() {
        let p = policy(EgressPreset::None, &[], &[]);
        assert!(denied(&p.decide("pypi.org", 443).await));
    }

    #[test]
    fn ports_ip_literals_and_unlisted_hosts_are_refused_before_any_lookup() {
        let p = policy(EgressPreset::Custom, &["example.com", "*.corp.example"], &[]);
        assert!(p.check("example.com", 443).is_ok());
        assert!(p.check("EXAMPLE.com.", 80).is_ok());
        assert!(p.check("git.corp.example", 443).is_ok());
        assert!(p.check("corp.example", 443).is_err(), "a wildcard covers subdomains only");
        assert!(p.check("example.com", 22).is_err());
        assert!(p.check("example.com", 8080).is_err());
        assert!(p.check("example.org", 443).is_err());
        assert!(p.check("example.com.evil.org", 443).is_err());
        for literal in ["169.254.169.254", "1.1.1.1", "[::1]", "::1", "2130706433"] {
            assert!(p.check(literal, 80).is_err(), "{literal} accepted");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_unless_trusted() {
        let p = policy(EgressPreset::Custom, &["evil.example", "mirror.corp.example"], &[]);
        assert!(denied(&p.decide("evil.example", 80).await), "metadata endpoint reachable by name");
        assert!(denied(&p.decide("mirror.corp.example", 443).await));
        let trusting = policy(EgressPreset::Custom, &["evil.example", "mirror.corp.example"], &["10.1.0.0/16"]);
        assert!(!denied(&trusting.decide("mirror.corp.example", 443).await));
        assert!(denied(&trusting.decide("evil.example", 80).await));
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "168.63.129.16",
            "192.0.0.8",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::101:101",
            "64:ff9b:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2002:a9fe:a9fe::1",
            "::10.0.0.1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(!is_own_address("192.0.2.77".parse().unwrap()), "a documentation address is no host's");
        for ip in ["1.1.1.1", "151.101.0.223", "2a04:4e42::223", "2002:0101:0101::1", "198.20.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_configuration_names_its_key() {
        let bad =
            EgressConfig { preset: EgressPreset::Custom, allow: vec!["not a host".to_owned()], ..Default::default() };
        assert_eq!(EgressPolicy::from_config(&bad).unwrap_err().key, "egress.allow");
        let bad = EgressConfig { trusted_networks: vec!["10.0.0.0".to_owned()], ..Default::default() };
        assert_eq!(EgressPolicy::from_config(&bad).unwrap_err().key, "egress.trusted_networks");
        let bad = EgressConfig { allow: vec!["example.com".to_owned()], ..Default::default() };
        assert_eq!(EgressPolicy::from_config(&bad).unwrap_err().key, "egress.allow");
    }
}
