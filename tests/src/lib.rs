//! Test harness shared by the integration tests (`tests/it`) and the demo.
//!
//! Everything runs against the real services that `cargo xtask setup`
//! started (Redis, Docker, Garage); each test isolates itself with a unique
//! Redis namespace, repository and worker, never by flushing shared state.
//! A missing service fails loudly.

#![allow(clippy::unwrap_used)]

pub mod agents;
pub mod apps;
pub mod connect_proxy;
pub mod fixtures;
pub mod git_server;
pub mod github;
pub mod oidc;
pub mod otlp;
pub mod outage;
pub mod providers;
pub mod redis_server;
pub mod scripted;
pub mod services;
pub mod tls;
pub mod units;

pub use apps::{TEST_AUDIT_KEY, TestApp, WorkerHandle, WorkerProcess, spawn_app};
pub use git_server::GitServer;

/// A loopback port nobody listens on now, for a process the test starts
/// later. Drawn below Linux's ephemeral range (32768 and up), which every
/// `bind(":0")` in this suite draws from: a port taken from there and let
/// go can be handed to another test's server before ours binds it, and a
/// health check would then be answered by the wrong process.
pub fn free_port() -> u16 {
    loop {
        let port = 20000 + (ulid::Ulid::new().random() % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it answers `Ok`, for at most `limit`; then fails the
/// test saying `what` did not happen and what `check` saw last. The one
/// waiting loop of the harness: no fixed sleeps in tests.
pub async fn eventually<T, E, F, Fut>(limit: std::time::Duration, what: &str, mut check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= limit => panic!("{what} within {limit:?}; last seen: {last}"),
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}

/// Asserts that `text` (usually a run's log) holds every one of `needles`,
/// naming the first one missing.
pub fn assert_contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
}

/// Writes a new 2048-bit RSA private key (PEM) to `private` with openssl and
/// returns its public key (PEM): for emulated identity providers.
pub fn rsa_key_pair(private: &std::path::Path) -> Vec<u8> {
    let quiet = || std::process::Stdio::null();
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(private)
        .stderr(quiet())
        .status()
        .expect("openssl runs");
    assert!(made.success(), "openssl genpkey failed");
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(private)
        .output()
        .expect("openssl runs");
    assert!(public.status.success(), "openssl pkey failed");
    public.stdout
}

/// A stand-in for a host a sandbox is allowed to reach: plain HTTP on ports
/// 80 and 443 of a loopback address of its own, answering `hello from
/// upstream <port>`.
async fn hello_from_upstream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S, port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let body = format!("hello from upstream {port}\n");
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub async fn allowed_upstream() -> std::net::Ipv4Addr {
    let byte = || (ulid::Ulid::new().random() % 250) as u8 + 1;
    loop {
        let ip = std::net::Ipv4Addr::new(127, byte(), byte(), byte().max(2));
        let (Ok(http), Ok(https)) =
            (tokio::net::TcpListener::bind((ip, 80)).await, tokio::net::TcpListener::bind((ip, 443)).await)
        else {
            continue;
        };
        // Port 80 speaks HTTP, port 443 HTTPS (with the test CA's certificate).
        let tls = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(crate::tls::server_config()));
        for (listener, port) in [(http, 80), (https, 443)] {
            let tls = tls.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if port == 443 {
                            if let Ok(stream) = tls.accept(stream).await {
                                hello_from_upstream(stream, port).await;
                            }
                        } else {
                            hello_from_upstream(stream, port).await;
                        }
                    });
                }
            });
        }
        return ip;
    }
}
