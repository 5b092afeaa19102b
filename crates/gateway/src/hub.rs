//! The standalone gateway (`worker gateway`), for deployments that keep
//! provider keys off worker hosts. It serves every run: the token a request
//! presents names its run and tenant (in Redis), and the hub keeps one
//! [`RunGateway`] per live run, which books each finished call in Redis for
//! the run's worker. Workers then only [`Relay`] each run's gateway address
//! to the hub.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::RunId;
use common::config::Config;
use common::config::GatewayConfig;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use platform::outbound::{Outbound, OutboundError};

use super::server::{
    Body, CountedCall, RunGateway, Wire, error, json_ok, presented_token, route, tokens_unavailable, unauthorized,
};
use super::{Redactor, token_hash};
use store::{GatewayGrant, RunQueue};

pub struct GatewayHub {
    config: Config,
    queue: RunQueue,
    /// The one client to the providers, shared by every run's gateway.
    http: reqwest::Client,
    /// TLS for workers' relays, when `gateway.tls_cert_file` is set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    redaction_key: Vec<u8>,
    runs: Mutex<HashMap<RunId, Arc<RunGateway>>>,
}

impl GatewayHub {
    pub fn new(
        config: Config,
        queue: RunQueue,
        http: reqwest::Client,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            config,
            queue,
            http,
            tls,
            redaction_key: super::mint_token()?.into_bytes(),
            runs: Mutex::new(HashMap::new()),
        })
    }

    /// Serves until `stop`; forgets the gateways of ended runs every minute.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let hub = self.clone();
        // Every run's calls through one listener: bounded for the process.
        let bound = platform::listener::Bound::new("standalone gateway", HUB_CONNECTIONS);
        platform::listener::accept_until(listener, stop.clone(), bound, move |stream| {
            let hub = hub.clone();
            async move {
                let service = hyper::service::service_fn({
                    let hub = hub.clone();
                    move |req| {
                        let hub = hub.clone();
                        async move { Ok::<_, Infallible>(hub.handle(req).await) }
                    }
                });
                match &hub.tls {
                    None => platform::listener::serve_http(stream, service).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => platform::listener::serve_http(stream, service).await,
                        Err(error) => tracing::warn!(%error, "a TLS handshake with the gateway failed"),
                    },
                }
            }
        });
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweep.tick() => self.forget_ended().await,
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/healthz" {
            return match self.queue.ping().await {
                Ok(()) => json_ok(&serde_json::json!({"status": "ok"})),
                Err(_) => error(Wire::OpenAi, StatusCode::SERVICE_UNAVAILABLE, "unavailable", "redis is unreachable"),
            };
        }
        let Some((wire, suffix)) = route(&req) else {
            return error(Wire::OpenAi, StatusCode::NOT_FOUND, "not_found", "no such endpoint on the Paddock gateway");
        };
        let Some(token) = presented_token(&req).map(str::to_owned) else {
            return unauthorized(wire);
        };
        let hash = token_hash(&token);
        // A call is counted in flight for the run's worker in the same
        // round trip as its token is looked up.
        let call = suffix.is_some();
        let looked_up =
            if call { self.queue.open_gateway_call(&hash).await } else { self.queue.gateway_token(&hash).await };
        let grant = match looked_up {
            Ok(Some(grant)) => grant,
            Ok(None) => return unauthorized(wire),
            Err(e) => return tokens_unavailable(wire, &e),
        };
        // Taken off the count again if the call ends unbooked, here or in
        // the run's gateway.
        let counted = call.then(|| CountedCall::new(self.queue.clone(), grant.run));
        match self.gateway_for(grant, hash, &token).await {
            Ok(gateway) => gateway.handle(req, true, counted).await,
            Err(message) => {
                tracing::warn!(%message, "refusing: the run's gateway cannot be set up");
                error(wire, StatusCode::SERVICE_UNAVAILABLE, "gateway_unavailable", &message)
            }
        }
    }

    /// The run's gateway, made on its first call under the provider policy
    /// in force then (as a worker's gateway is made when its run starts).
    async fn gateway_for(&self, grant: GatewayGrant, hash: String, token: &str) -> Result<Arc<RunGateway>, String> {
        // One per attempt: a retried run has a new token (and span).
        if let Some(gateway) = self.lock().get(&grant.run).filter(|g| g.token_hash == hash) {
            return Ok(gateway.clone());
        }
        let config = match self.queue.llm_policy().await {
            Ok(Some(policy)) => policy.apply(&self.config.gateway),
            Ok(None) => self.config.gateway.clone(),
            Err(e) => return Err(format!("reading the provider policy failed: {e}")),
        };
        let known = super::known_secrets(&self.config, &self.queue, &grant.tenant, Some(token)).await?;
        let redactor = Redactor::new(&known, &self.redaction_key);
        let trace_parent = grant.trace_parent.clone();
        let gateway =
            RunGateway::new(grant.run, grant.tenant, hash, config, self.queue.clone(), redactor, self.http.clone());
        let gateway = Arc::new(gateway.publishing().with_trace_parent(trace_parent));
        let mut gateways = self.lock();
        let kept = gateways.entry(grant.run).or_insert_with(|| gateway.clone());
        if kept.token_hash != gateway.token_hash {
            *kept = gateway;
        }
        Ok(kept.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Arc<RunGateway>>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the gateways of runs whose token is gone and that have no call
    /// in flight.
    async fn forget_ended(&self) {
        let held: Vec<(RunId, String)> = self.lock().values().map(|g| (g.run, g.token_hash.clone())).collect();
        for (run, hash) in held {
            if matches!(self.queue.gateway_token(&hash).await, Ok(None)) {
                let mut runs = self.lock();
                if runs.get(&run).is_some_and(|g| Arc::strong_count(g) == 1) {
                    runs.remove(&run);
                }
            }
        }
    }
}

/// Relays a run's gateway address to the standalone gateway, byte for byte.
pub struct Relay {
    pub address: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where the standalone gateway is and how to reach it.
#[derive(Clone)]
pub struct RemoteGateway {
    pub address: SocketAddr,
    /// TLS to the gateway, checking its certificate for this name.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl RemoteGateway {
    /// From `gateway.remote`, `gateway.remote_tls` and
    /// `gateway.remote_server_name`; `None` when workers run their own
    /// gateways.
    pub fn from_config(config: &GatewayConfig, outbound: &Outbound) -> Result<Option<Self>, OutboundError> {
        let invalid = |key, message: String| OutboundError::Config { key, message };
        let Some(remote) = &config.remote else { return Ok(None) };
        let address: SocketAddr =
            remote.parse().map_err(|e| invalid("gateway.remote", format!("is not an address: {e}")))?;
        let tls = match (config.remote_tls, &config.remote_server_name) {
            (false, _) => None,
            (true, name) => {
                let name = name.clone().unwrap_or_else(|| address.ip().to_string());
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| invalid("gateway.remote_server_name", format!("`{name}` is not a host name: {e}")))?;
                Some((outbound.tls_connector(), name))
            }
        };
        Ok(Some(Self { address, tls }))
    }

    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "over TLS" } else { "in plain text" };
        format!("{} ({scheme})", self.address)
    }
}

/// Connections the standalone gateway serves at once, across all runs.
const HUB_CONNECTIONS: usize = 4096;

impl Relay {
    pub async fn start(bind: SocketAddr, remote: RemoteGateway) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let bound = platform::listener::Bound::new("gateway relay", platform::listener::RUN_CONNECTIONS);
        platform::listener::accept_until(listener, stop.clone(), bound, move |mut inbound| {
            let remote = remote.clone();
            async move {
                let to = remote.address;
                let outbound = match TcpStream::connect(to).await {
                    Ok(outbound) => outbound,
                    Err(error) => return tracing::warn!(%to, %error, "the standalone gateway is unreachable"),
                };
                let Some((connector, name)) = remote.tls else {
                    let mut outbound = outbound;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                };
                match connector.connect(name, outbound).await {
                    Ok(mut tls) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut tls).await;
                    }
                    Err(error) => {
                        let why = platform::outbound::describe_failure(&error, &to.to_string());
                        tracing::warn!(%to, %why, "the standalone gateway's TLS failed; nothing was relayed");
                    }
                }
            }
        });
        Ok(Self { address, stop })
    }
}
