//! A corporate egress proxy as Paddock meets it: HTTP `CONNECT` tunnels,
//! `Proxy-Authorization: Basic` required, every tunnel recorded. It never
//! sees inside a tunnel (TLS runs end to end through it).

use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One `CONNECT` the proxy was asked for.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// `host:port` as asked.
    pub target: String,
    /// Whether the request carried the proxy's credentials.
    pub authorized: bool,
}

pub struct ConnectProxy {
    /// `http://user:password@127.0.0.1:<port>`: what `outbound.https_proxy` takes.
    pub url: String,
    pub user: String,
    pub password: String,
    tunnels: Arc<Mutex<Vec<Tunnel>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (user, password) = ("paddock".to_owned(), format!("proxy-pass-{}", ulid::Ulid::new()));
        let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let recorded = tunnels.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (recorded, expected) = (recorded.clone(), expected.clone());
                tokio::spawn(async move { tunnel(inbound, &recorded, &expected).await });
            }
        });
        Self { url: format!("http://{user}:{password}@127.0.0.1:{port}"), user, password, tunnels, accept }
    }

    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn tunnel(mut inbound: TcpStream, recorded: &Mutex<Vec<Tunnel>>, expected: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match inbound.read(&mut byte).await {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_owned();
    let authorized = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            let credentials = value.trim().split_once(' ');
            name.trim().eq_ignore_ascii_case("proxy-authorization")
                && credentials.is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("basic") && token == expected)
        })
    });
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_owned());
    if method != "CONNECT" {
        let _ = inbound.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n").await;
        return;
    }
    recorded
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Tunnel { target: target.clone(), authorized });
    if !authorized {
        let refusal = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n";
        let _ = inbound.write_all(refusal.as_bytes()).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
        return;
    };
    if inbound.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
