//! A small forward proxy: HTTP `CONNECT host:port` tunnels and plain HTTP
//! requests in absolute form, one listener per run on the run network's
//! gateway address. Every request is decided by the run's [`EgressPolicy`]
//! and recorded.

use common::audit::now_ms;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::RunId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::policy::{Decision, EgressPolicy};

const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use common::records::EgressRecord;

/// The decisions of one run, shared with its proxy: at most
/// [`MAX_EGRESS_RECORDS`] kept, the rest counted.
#[derive(Debug, Clone, Default)]
pub struct EgressLog(Arc<Mutex<(Vec<EgressRecord>, u64)>>);

/// How many egress decisions one run's record keeps.
pub const MAX_EGRESS_RECORDS: usize = 10_000;

impl EgressLog {
    fn push(&self, record: EgressRecord) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.0.len() < MAX_EGRESS_RECORDS {
            kept.0.push(record);
        } else {
            kept.1 += 1;
        }
    }

    /// The decisions kept, then (when some were not) one record saying how
    /// many more there were.
    pub fn records(&self) -> Vec<EgressRecord> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut records = kept.0.clone();
        if kept.1 > 0 {
            records.push(EgressRecord {
                at_ms: now_ms(),
                method: "-".to_owned(),
                host: format!("({} more decisions)", kept.1),
                port: 0,
                allowed: false,
                reason: Some(format!("not kept: over the run's bound of {MAX_EGRESS_RECORDS} recorded decisions")),
            });
        }
        records
    }
}

/// A running proxy; stopping it (or dropping it) closes the listener and
/// every tunnel.
pub struct EgressProxy {
    pub address: SocketAddr,
    pub log: EgressLog,
    stop: CancellationToken,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EgressProxy {
    pub async fn start(bind: SocketAddr, policy: Arc<EgressPolicy>, run: RunId) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let address = listener.local_addr()?;
        let (log, stop) = (EgressLog::default(), CancellationToken::new());
        let task_log = log.clone();
        let bound = platform::listener::Bound::new("egress proxy", platform::listener::RUN_CONNECTIONS);
        platform::listener::accept_until(listener, stop.clone(), bound, move |client| {
            let (policy, log) = (policy.clone(), task_log.clone());
            async move {
                if let Err(error) = serve(client, &policy, &log, run).await {
                    tracing::debug!(run_id = %run, %error, "egress connection ended with an error");
                }
            }
        });
        Ok(Self { address, log, stop })
    }
}

async fn respond(client: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

/// Reads the request head; returns it and any bytes read past it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    // One deadline for the whole head: a byte every few seconds does not
    // keep a connection open.
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let read = tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// `host:port` with an optional port (IPv6 literals keep their brackets).
fn split_authority(authority: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, default_port?),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

async fn serve(mut client: TcpStream, policy: &EgressPolicy, log: &EgressLog, run: RunId) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(&mut client).await? else {
        return respond(&mut client, "400 Bad Request", "paddock egress: unreadable request\n").await;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (host, port, path) = if method.eq_ignore_ascii_case("CONNECT") {
        match split_authority(target, None) {
            Some((host, port)) => (host, port, None),
            None => return respond(&mut client, "400 Bad Request", "paddock egress: CONNECT needs host:port\n").await,
        }
    } else if let Some(rest_of_url) = target.strip_prefix("http://") {
        let (authority, path) = match rest_of_url.find('/') {
            Some(i) => (&rest_of_url[..i], &rest_of_url[i..]),
            None => (rest_of_url, "/"),
        };
        match split_authority(authority, Some(80)) {
            Some((host, port)) => (host, port, Some(path.to_owned())),
            None => return respond(&mut client, "400 Bad Request", "paddock egress: bad URL\n").await,
        }
    } else {
        return respond(
            &mut client,
            "400 Bad Request",
            "paddock egress: this is a forward proxy; send CONNECT or an absolute http:// URL\n",
        )
        .await;
    };

    let decision = policy.decide(&host, port).await;
    let (allowed, reason, addresses) = match decision {
        Decision::Allowed { addresses } => (true, None, addresses),
        Decision::Denied { reason } => (false, Some(reason), Vec::new()),
    };
    tracing::info!(run_id = %run, method, %host, port, allowed, reason = reason.as_deref().unwrap_or(""), "egress");
    log.push(EgressRecord {
        at_ms: now_ms(),
        method: method.to_owned(),
        host: host.clone(),
        port,
        allowed,
        reason: reason.clone(),
    });
    if !allowed {
        let body = format!("paddock egress: denied {host}:{port}: {}\n", reason.unwrap_or_default());
        return respond(&mut client, "403 Forbidden", &body).await;
    }
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addresses[..])).await;
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        _ => return respond(&mut client, "502 Bad Gateway", "paddock egress: upstream unreachable\n").await,
    };
    let mut rest = rest;
    match path {
        None => {
            client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
            match tunnel_hello(&mut client, &host, rest).await? {
                Ok(hello) => rest = hello,
                Err(why) => {
                    tracing::info!(run_id = %run, %host, port, reason = %why, "egress tunnel refused");
                    log.push(EgressRecord {
                        at_ms: now_ms(),
                        method: "CONNECT".to_owned(),
                        host: host.clone(),
                        port,
                        allowed: false,
                        reason: Some(why),
                    });
                    return client.shutdown().await;
                }
            }
        }
        Some(path) => {
            // Origin form upstream; the Host header is the URL's authority
            // (no fronting), and hop-by-hop proxy headers are dropped.
            let mut forwarded = format!("{method} {path} {version}\r\n");
            let authority = if port == 80 { host.clone() } else { format!("{host}:{port}") };
            forwarded.push_str(&format!("Host: {authority}\r\n"));
            for line in lines.filter(|l| !l.is_empty()) {
                let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "host" | "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive"
                ) {
                    forwarded.push_str(line);
                    forwarded.push_str("\r\n");
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            upstream.write_all(forwarded.as_bytes()).await?;
        }
    }
    if !rest.is_empty() {
        upstream.write_all(&rest).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// The most a ClientHello may take before the tunnel is refused.
const MAX_HELLO: usize = 32 * 1024;

/// Reads the tunnel's first bytes (after `already`) until they show a TLS
/// ClientHello for `host`; returns them to send on, or why the tunnel is
/// refused: not TLS, no server name, or another server name.
async fn tunnel_hello(
    client: &mut TcpStream,
    host: &str,
    already: Vec<u8>,
) -> std::io::Result<Result<Vec<u8>, String>> {
    use super::sni::{Hello, client_hello, names_match};
    let mut buf = already;
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        match client_hello(&buf) {
            Hello::Tls(Some(name)) if names_match(&name, host) => return Ok(Ok(buf)),
            Hello::Tls(Some(name)) => {
                return Ok(Err(format!("the TLS server name {name:?} is not the tunnel's host {host}")));
            }
            Hello::Tls(None) => return Ok(Err("the TLS handshake names no server (SNI)".to_owned())),
            Hello::NotTls => return Ok(Err("a tunnel carries TLS only".to_owned())),
            Hello::Incomplete if buf.len() > MAX_HELLO => {
                return Ok(Err("the TLS ClientHello is too large".to_owned()));
            }
            Hello::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(Err("no TLS ClientHello arrived".to_owned())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_of_decisions_is_bounded_and_says_how_many_it_dropped() {
        let log = EgressLog::default();
        let record = EgressRecord {
            at_ms: 0,
            method: "CONNECT".into(),
            host: "h".into(),
            port: 443,
            allowed: true,
            reason: None,
        };
        for _ in 0..MAX_EGRESS_RECORDS + 3 {
            log.push(record.clone());
        }
        let records = log.records();
        assert_eq!(records.len(), MAX_EGRESS_RECORDS + 1);
        assert_eq!(records.last().unwrap().host, "(3 more decisions)");
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("example.com:443", None), Some(("example.com".to_owned(), 443)));
        assert_eq!(split_authority("example.com", Some(80)), Some(("example.com".to_owned(), 80)));
        assert_eq!(split_authority("example.com", None), None);
        assert_eq!(split_authority("[::1]:443", None), Some(("[::1]".to_owned(), 443)));
        assert_eq!(split_authority("example.com:x", None), None);
    }
}
