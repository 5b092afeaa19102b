//! The accept loop every per-run listener shares (egress proxy, gateway,
//! relay, standalone gateway): one task per connection, and all of them end
//! when the listener's stop token fires.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts connections until `stop`; `handle` serves each in its own task.
pub fn accept_until<F, Fut>(listener: TcpListener, stop: CancellationToken, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (work, stop) = (handle(stream), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = work => {}
                }
            });
        }
    });
}

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
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}
