//! One Redis connection type for a single server or a Cluster, so the queue
//! code is the same for both.

use std::time::Duration;

use common::config::RedisConfig;

use platform::outbound::Outbound;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub async fn open(config: &RedisConfig, outbound: &Outbound) -> RedisResult<Self> {
        // Long response timeouts: a slow Redis must delay a worker, never
        // kill it (apalis-redis#76 died on the 500 ms default).
        if config.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(vec![config.url.as_str()])
                .response_timeout(Duration::from_secs(10))
                .connection_timeout(Duration::from_secs(5));
            if let Some(certs) = certificates(outbound)
                && config.url.starts_with("rediss://")
            {
                builder = builder.certs(certs);
            }
            return Ok(Self::Cluster(builder.build()?.get_async_connection().await?));
        }
        let client = client(&config.url, outbound)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        Ok(Self::Single(ConnectionManager::new_with_config(client, manager_config).await?))
    }
}

/// A client for one server; `rediss://` verifies the server's certificate
/// against the operating system's store and `tls.extra_ca_files`.
pub fn client(url: &str, outbound: &Outbound) -> RedisResult<redis::Client> {
    match certificates(outbound) {
        Some(certs) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, certs),
        _ => redis::Client::open(url),
    }
}

/// The trust for `rediss://`: `None` leaves the redis crate on the
/// operating system's store.
fn certificates(outbound: &Outbound) -> Option<redis::TlsCertificates> {
    outbound.trust_bundle().map(|bundle| redis::TlsCertificates { client_tls: None, root_cert: Some(bundle) })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
