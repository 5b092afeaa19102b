//! Where a run executes: its sandbox (container, volume, network and its
//! firewall rules), its egress proxy and its model gateway, owned by one
//! guard. `close` is the normal way out and hands back what the run did;
//! if the guard is dropped instead (a panic, a cancelled task) its `Drop`
//! removes the sandbox and revokes the run token in the background.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::RunId;
use common::config::{AgentConfig, GatewayConfig};
use common::policy::SandboxPolicy;
use gateway::{CallRecord, GatewayServer, Relay, RunGateway, mint_token, token_hash};
use sandbox::egress::{EgressPolicy, EgressProxy, EgressRecord};
use sandbox::{Sandbox, SandboxDriver};
use store::{ClaimedRun, GatewayGrant, RunQueue};

use super::Runtime;
use super::error::RunError;
use super::log::Phases;

/// The sandbox, proxy and gateway of one run.
pub(super) struct Session {
    driver: SandboxDriver,
    queue: RunQueue,
    run: RunId,
    sandbox: Option<Sandbox>,
    proxy: Option<EgressProxy>,
    models: Option<RunModels>,
}

/// The run's model gateway and the token that opens it.
pub(super) struct RunModels {
    pub(super) token: String,
    hash: String,
    pub(super) address: SocketAddr,
    serving: Serving,
}

/// The gateway in this process, or a relay to the standalone one.
enum Serving {
    Local { gateway: Arc<RunGateway>, server: GatewayServer },
    Remote(Relay),
}

/// What the sandbox did through the proxy and the gateway.
#[derive(Default)]
pub(super) struct Used {
    pub(super) egress: Vec<EgressRecord>,
    pub(super) calls: Vec<CallRecord>,
    pub(super) transcript: Vec<serde_json::Value>,
}

impl Session {
    /// Creates the sandbox, then starts its egress proxy and model gateway
    /// on the sandbox network's gateway address. Whatever was created is
    /// removed again when a later step fails.
    pub(super) async fn open(
        runtime: &Runtime,
        run: &ClaimedRun,
        policy: &SandboxPolicy,
        agent: &AgentConfig,
        phases: &Phases,
    ) -> Result<Session, RunError> {
        let config = &runtime.config;
        let egress = EgressPolicy::for_run(&config.egress, policy.egress, &policy.egress_allow)
            .map_err(|e| RunError::Retry(format!("the run's egress policy is invalid: {e}")))?;
        let image = agent.image.as_deref();
        let sandbox = match runtime.warm.take(run.id, run.attempt, policy, image).await {
            Some(sandbox) => {
                phases.mark("sandbox_warm");
                sandbox
            }
            None => {
                let sandbox = runtime
                    .sandboxes
                    .create(run.id, run.attempt, policy, image)
                    .await
                    .map_err(|e| RunError::retry("creating the sandbox", e))?;
                phases.mark("sandbox");
                sandbox
            }
        };
        let mut session = Session {
            driver: runtime.sandboxes.clone(),
            queue: runtime.queue.clone(),
            run: run.id,
            sandbox: Some(sandbox),
            proxy: None,
            models: None,
        };
        match session.start_services(runtime, run, policy, egress).await {
            Ok(()) => {
                phases.mark("proxy_and_gateway");
                Ok(session)
            }
            Err(error) => {
                session.close().await;
                Err(error)
            }
        }
    }

    async fn start_services(
        &mut self,
        runtime: &Runtime,
        run: &ClaimedRun,
        policy: &SandboxPolicy,
        egress: EgressPolicy,
    ) -> Result<(), RunError> {
        let gateway_ip = IpAddr::V4(self.sandbox().network.gateway);
        let proxy_at = SocketAddr::new(gateway_ip, runtime.config.egress.proxy_port);
        let proxy = EgressProxy::start(proxy_at, Arc::new(egress), run.id)
            .await
            .map_err(|e| RunError::retry(&format!("starting the egress proxy on {proxy_at}"), e))?;
        self.proxy = Some(proxy);
        self.models = runtime.start_gateway(run, gateway_ip, policy).await?;
        Ok(())
    }

    pub(super) fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("a session has its sandbox until it is closed")
    }

    pub(super) fn proxy(&self) -> &EgressProxy {
        self.proxy.as_ref().expect("an open session has its proxy")
    }

    pub(super) fn models(&self) -> Option<&RunModels> {
        self.models.as_ref()
    }

    /// The model calls finished since the `from`-th, in the order they
    /// finished: from this process's gateway, or as the standalone gateway
    /// handed them over so far.
    pub(super) async fn calls_since(&self, from: usize) -> Vec<CallRecord> {
        match self.models.as_ref().map(|m| &m.serving) {
            Some(Serving::Local { gateway, .. }) => gateway.calls().get(from..).unwrap_or_default().to_vec(),
            Some(Serving::Remote(_)) => match self.queue.gateway_calls_from(self.run, from).await {
                Ok(published) => {
                    published.iter().filter_map(|item| published_call(self.run, item).map(|c| c.0)).collect()
                }
                Err(error) => {
                    tracing::debug!(run_id = %self.run, %error, "reading the standalone gateway's calls failed");
                    Vec::new()
                }
            },
            None => Vec::new(),
        }
    }

    /// Removes the sandbox, stops the proxy, revokes the run token and
    /// collects the run's egress decisions, model calls and transcript.
    pub(super) async fn close(mut self) -> Used {
        if let Some(sandbox) = self.sandbox.take() {
            self.driver.remove(&sandbox).await;
        }
        let egress = self.proxy.take().map(|proxy| proxy.log.records()).unwrap_or_default();
        let (calls, transcript) = match self.models.take() {
            Some(models) => close_gateway(&self.queue, self.run, models).await,
            None => (Vec::new(), Vec::new()),
        };
        Used { egress, calls, transcript }
    }
}

impl Drop for Session {
    /// Reached with something left only when `close` did not run. The proxy
    /// and gateway listeners stop as their fields drop; the sandbox and the
    /// run token outlive the process unless removed, so that is spawned.
    fn drop(&mut self) {
        let (sandbox, models) = (self.sandbox.take(), self.models.take());
        if sandbox.is_none() && models.is_none() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (driver, queue, run) = (self.driver.clone(), self.queue.clone(), self.run);
        tracing::warn!(run_id = %run, "a run's session was dropped without closing; removing its sandbox");
        handle.spawn(async move {
            if let Some(sandbox) = sandbox {
                driver.remove(&sandbox).await;
            }
            if let Some(models) = models
                && let Err(error) = queue.revoke_gateway_token(run, &models.hash).await
            {
                tracing::warn!(run_id = %run, %error, "revoking the run token failed; it expires with its TTL");
            }
        });
    }
}

impl Runtime {
    /// Mints the run's gateway token and serves the gateway on the sandbox
    /// network (or relays it to the standalone gateway), when any provider
    /// is allowed.
    async fn start_gateway(
        &self,
        run: &ClaimedRun,
        gateway_ip: IpAddr,
        policy: &SandboxPolicy,
    ) -> Result<Option<RunModels>, RunError> {
        let Some(config) = self.gateway_config().await? else { return Ok(None) };
        let token = mint_token().map_err(|e| RunError::retry("minting the run token", e))?;
        let hash = token_hash(&token);
        let ttl = Duration::from_secs(policy.timeout_seconds + 300);
        let grant = GatewayGrant { run: run.id, tenant: run.spec.tenant.clone(), trace_parent: run.trace.clone() };
        self.queue
            .put_gateway_token(&hash, &grant, ttl)
            .await
            .map_err(|e| RunError::retry("storing the run token", e))?;
        let at = SocketAddr::new(gateway_ip, config.port);
        let serving = match self.remote_gateway.clone() {
            Some(remote) => Relay::start(at, remote).await.map(Serving::Remote),
            None => {
                let redactor = self.redactor(&run.spec.tenant, Some(&token)).await.map_err(RunError::Retry)?;
                let (tenant, queue, http) = (run.spec.tenant.clone(), self.queue.clone(), self.http.clone());
                let gateway = RunGateway::new(run.id, tenant, hash.clone(), config, queue, redactor, http);
                let gateway = Arc::new(gateway.with_trace_parent(run.trace.clone()));
                GatewayServer::start(at, gateway.clone()).await.map(|server| Serving::Local { gateway, server })
            }
        };
        match serving {
            Ok(serving) => Ok(Some(RunModels { token, hash, address: at, serving })),
            Err(e) => {
                let _ = self.queue.revoke_gateway_token(run.id, &hash).await;
                Err(RunError::retry(&format!("starting the model gateway on {at}"), e))
            }
        }
    }

    /// The gateway settings a run gets, or `None` when it may call no model.
    /// The provider policy set through the API wins over the configured one;
    /// if it cannot be read, no model call is allowed (fail closed). A
    /// standalone gateway applies it itself.
    async fn gateway_config(&self) -> Result<Option<GatewayConfig>, RunError> {
        let config = match self.queue.llm_policy().await {
            Ok(Some(policy)) => policy.apply(&self.config.gateway),
            Ok(None) => self.config.gateway.clone(),
            Err(e) => return Err(RunError::retry("reading the provider policy", e)),
        };
        let serves = self.remote_gateway.is_some() || !config.allowed_providers.is_empty();
        Ok(serves.then_some(config))
    }
}

/// Revokes the run token and collects the run's calls and transcript.
async fn close_gateway(queue: &RunQueue, run: RunId, models: RunModels) -> (Vec<CallRecord>, Vec<serde_json::Value>) {
    if let Err(error) = queue.revoke_gateway_token(run, &models.hash).await {
        tracing::warn!(run_id = %run, %error, "revoking the run token failed; it expires with its TTL");
    }
    match models.serving {
        Serving::Local { gateway, server } => {
            drop(server);
            // Calls are booked just after their answers go out.
            if tokio::time::timeout(Duration::from_secs(10), gateway.settled()).await.is_err() {
                tracing::warn!(run_id = %run, "model calls still being booked after 10 s; the record goes without them");
            }
            (gateway.calls(), gateway.transcript())
        }
        Serving::Remote(relay) => {
            drop(relay);
            remote_calls(queue, run).await
        }
    }
}

/// The calls the standalone gateway handed over through Redis, in order.
async fn remote_calls(queue: &RunQueue, run: RunId) -> (Vec<CallRecord>, Vec<serde_json::Value>) {
    let published = match queue.take_gateway_calls(run, Duration::from_secs(10)).await {
        Ok(published) => published,
        Err(error) => {
            tracing::warn!(run_id = %run, %error, "collecting the run's model calls failed");
            Vec::new()
        }
    };
    let (mut calls, mut transcript) = (Vec::new(), Vec::new());
    // In the order they finished, as a local gateway keeps them: the trail
    // counts what it already has by position.
    for item in &published {
        if let Some((call, part)) = published_call(run, item) {
            calls.push(call);
            transcript.extend(part);
        }
    }
    (calls, transcript)
}

/// One call the standalone gateway handed over, and its transcript part.
fn published_call(run: RunId, item: &str) -> Option<(CallRecord, Option<serde_json::Value>)> {
    let mut item = serde_json::from_str::<serde_json::Value>(item).ok()?;
    match serde_json::from_value::<CallRecord>(item["call"].take()) {
        Ok(call) => {
            let part = Some(item["transcript"].take()).filter(|t| !t.is_null());
            Some((call, part))
        }
        Err(error) => {
            tracing::warn!(run_id = %run, %error, "a call from the standalone gateway is unreadable");
            None
        }
    }
}
