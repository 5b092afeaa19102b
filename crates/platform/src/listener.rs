//! The accept loop every per-run listener shares (egress proxy, gateway,
//! relay, standalone gateway): one task per connection, and all of them end
//! when the listener's stop token fires, at most a bounded number at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts connections until `stop`, at most `bound` at once; `handle`
/// serves each in its own task.
pub fn accept_until<F, Fut>(listener: TcpListener, stop: CancellationToken, bound: Bound, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(tokio::sync::Semaphore::new(bound.connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            // Answers go out as they are written: a relay's small last
            // write (a chunked body's end) must not wait on Nagle for the
            // client's delayed acknowledgement.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "TCP_NODELAY could not be set");
            }
            // Over the bound, a connection is closed at once: one client
            // cannot take the descriptors this process needs for the rest.
            let Ok(permit) = open.clone().try_acquire_owned() else {
                let refused = bound.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, max = bound.connections, refused, what = bound.what, "connection over the bound closed");
                }
                drop(stream);
                continue;
            };
            let (work, stop) = (handle(stream), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = work => {}
                }
            });
        }
    });
}

/// How many connections a listener serves at once, and how many it has
/// closed for being over that.
#[derive(Clone)]
pub struct Bound {
    pub connections: usize,
    pub what: &'static str,
    pub refused: Arc<AtomicU64>,
}

impl Bound {
    pub fn new(what: &'static str, connections: usize) -> Self {
        Self { connections, what, refused: Arc::default() }
    }

    /// Connections closed for being over the bound, so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Concurrent connections one run's sandbox may hold to one of its
/// listeners (egress proxy, model gateway).
pub const RUN_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's head (and an idle
/// keep-alive connection may wait for its next request).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1.1 on one connection (plain or TLS) with `service`.
pub async fn serve_http<IO, S>(stream: IO, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .await;
}
