//! A TCP proxy in front of a real service, to take it away from one test's
//! deployment (and give it back) without stopping it for everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

pub struct Outage {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// Proxies to `target` (`host:port`), up at first.
    pub async fn proxy(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let (target, flag, tasks) = (target.to_owned(), up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound); // down: the connection is reset at once
                    continue;
                }
                let target = target.clone();
                tasks.lock().await.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { url, up, connections, accept }
    }

    /// The service is unreachable: open connections are cut, new ones reset.
    pub async fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
