//! Executes one claimed run: checkout, sandbox, agent, diff, artifacts.
//! Every path out of a run removes its sandbox and its host checkout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::config::{AgentConfig, Config};
use common::policy::SandboxPolicy;
use common::{ArtifactKind, ModelUse, RunFacts, RunId, StopReason};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use std::net::{IpAddr, SocketAddr};

use crate::audit_events;
use crate::leases::{LeaseGuard, Leases};
use forge::git::{self, GitError};
use forge::publish::{self, PublishError, Published, RunStory};
use forge::{ForgeError, GitHubApp, RUN_PERMISSIONS, RepoCredential};
use gateway::{CallRecord, GatewayServer, Redactor, Relay, RunGateway, mint_token, token_hash};
use objstore::S3Store;
use sandbox::egress::{EgressPolicy, EgressProxy, EgressRecord};
use sandbox::{Exec, Sandbox, SandboxDriver, SandboxError, tar_tree};
use store::{ClaimedRun, GatewayGrant, Outcome, RunQueue};

/// Everything a run needs, shared by all runs of a worker process.
pub struct Runtime {
    pub config: Config,
    pub worker: String,
    pub queue: RunQueue,
    pub store: S3Store,
    pub sandboxes: SandboxDriver,
    pub leases: Leases,
    /// Key of the short HMACs in redaction markers.
    pub redaction_key: Vec<u8>,
    /// Fires when the shutdown grace period is over: runs still going are
    /// stopped and handed back to the queue.
    pub grace_over: CancellationToken,
    /// The GitHub App, when configured: runs then push branches and open
    /// draft pull requests.
    pub github: Option<Arc<GitHubApp>>,
    /// This worker's stream of the audit trail.
    pub audit: Arc<audit_trail::AuditTrail>,
    /// Trust and proxy of Paddock's own calls out (`[tls]`, `[outbound]`).
    pub outbound: platform::outbound::Outbound,
    /// The one client to model providers, shared by every run's gateway.
    pub http: reqwest::Client,
    /// The standalone gateway runs' gateway addresses are relayed to.
    pub remote_gateway: Option<gateway::RemoteGateway>,
}

/// Why a run stopped before it could report an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    LeaseLost,
    Shutdown,
}

enum Ending {
    Outcome(Outcome),
    Interrupted(Interrupt),
}

/// The apalis task function.
pub async fn execute(
    run: ClaimedRun,
    runtime: apalis_core::task::data::Data<Arc<Runtime>>,
) -> Result<(), apalis_core::error::BoxDynError> {
    let runtime: Arc<Runtime> = (*runtime).clone();
    let span = tracing::info_span!("run", run_id = %run.id, attempt = run.attempt, epoch = run.epoch);
    let lease = runtime.leases.hold(&run);
    tracing::info!(parent: &span, repository = %run.spec.repository, "run claimed");
    // A panic anywhere in the run must not leak its sandbox: the locals
    // that own listeners are dropped by the unwind, and what lives outside
    // the process (container, network, firewall rules, volume, run token,
    // checkout) is removed here before the run is retried.
    let attempt = std::panic::AssertUnwindSafe(runtime.run(&run, &lease).instrument(span.clone())).catch_unwind();
    let ending = match attempt.await {
        Ok(ending) => ending,
        Err(panic) => {
            let what = panic_message(panic);
            runtime.after_panic(&run, what).await
        }
    };
    let outcome = match ending {
        Ending::Outcome(outcome) => outcome,
        Ending::Interrupted(Interrupt::LeaseLost) => {
            tracing::warn!(run_id = %run.id, "lease lost: result discarded, another worker owns the run");
            return Ok(());
        }
        Ending::Interrupted(Interrupt::Shutdown) => Outcome::Release,
    };
    runtime.report(&run, &outcome).await;
    drop(lease);
    Ok(())
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map_or_else(|| "a panic".to_owned(), |s| (*s).to_owned()),
    }
}

impl Runtime {
    /// Removes what a panicked attempt left outside the process, and asks
    /// for the run to be retried (the attempt counts).
    async fn after_panic(&self, run: &ClaimedRun, what: String) -> Ending {
        tracing::error!(run_id = %run.id, panic = %what, "the run panicked; removing its sandbox");
        self.sandboxes.remove_run(run.id).await;
        if let Err(error) = self.queue.revoke_run_gateway_token(run.id).await {
            tracing::warn!(run_id = %run.id, %error, "revoking the run token failed; it expires with its TTL");
        }
        let checkout = self.checkout_dir(run);
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        self.retry(run, format!("the worker panicked: {what}"))
    }

    /// Where an attempt's host checkout lives (one per epoch).
    fn checkout_dir(&self, run: &ClaimedRun) -> std::path::PathBuf {
        self.config.worker.work_dir.join(format!("{}-{}", run.id, run.epoch))
    }

    /// Tells the queue how the run ended, retrying briefly through a Redis
    /// blip; if Redis stays away the lease expires and the reaper takes over.
    async fn report(&self, run: &ClaimedRun, outcome: &Outcome) {
        for attempt in 0..5u32 {
            match self.queue.finish(run, outcome).await {
                Ok(Some(state)) => {
                    tracing::info!(run_id = %run.id, %state, ?outcome, "run finished");
                    return;
                }
                Ok(None) => {
                    tracing::warn!(run_id = %run.id, "lease lost before finishing; result discarded");
                    return;
                }
                Err(error) => {
                    tracing::warn!(run_id = %run.id, %error, "finishing the run failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// The policy recorded on the run, or the configured default for runs
    /// accepted before policies were recorded.
    fn policy_of(&self, run: &ClaimedRun) -> SandboxPolicy {
        run.spec.policy.clone().unwrap_or_else(|| self.config.default_policy())
    }

    fn retry(&self, run: &ClaimedRun, message: String) -> Ending {
        let base = self.config.worker.retry_base_seconds.max(1) * 1000;
        let exp = base.saturating_mul(1 << run.attempt.saturating_sub(1).min(10));
        let delay = Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2));
        tracing::warn!(run_id = %run.id, %message, ?delay, "infrastructure error");
        Ending::Outcome(Outcome::Retry { reason: StopReason::InfrastructureError { message }, delay })
    }

    /// Records `events` in the trail (the evidence; an error means they are
    /// not stored), then in the index behind `GET /v1/audit/events`.
    async fn record_audit(&self, events: &[common::audit::AuditEvent]) -> Result<(), audit_trail::AuditError> {
        self.audit.record(events).await?;
        if let Err(error) = self.queue.identity().index_audit(events).await {
            tracing::warn!(%error, "audit events are stored but not indexed for GET /v1/audit/events");
        }
        Ok(())
    }

    /// One attempt of a run: with a GitHub App, under a token for the one
    /// repository that is revoked when the attempt ends, whatever happens.
    async fn run(&self, run: &ClaimedRun, lease: &LeaseGuard) -> Ending {
        // Fail-closed: no credential, sandbox or push for a run whose start
        // is not in the audit trail.
        let claimed = audit_events::claimed(run, &self.worker, &self.policy_of(run));
        if let Err(e) = self.record_audit(&claimed).await {
            tracing::error!(run_id = %run.id, error = %e, "audit unavailable: run stopped");
            let reason = StopReason::AuditUnavailable { message: e.to_string() };
            return Ending::Outcome(Outcome::Done { reason, artifacts: Vec::new(), facts: None });
        }
        let checkout = self.checkout_dir(run);
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        let clone_url = git::clone_url(&self.config.git.base_url, &run.spec.repository);
        let credential = match &self.github {
            None => None,
            Some(app) => {
                match app.credential(&run.spec.repository, "clone, push and pull request", RUN_PERMISSIONS).await {
                    Ok(credential) => Some(credential),
                    Err(ForgeError::Unavailable(message)) => {
                        return self.retry(run, format!("minting the repository token failed: {message}"));
                    }
                    Err(e) => {
                        let forge = Forge {
                            app: self.github.as_deref(),
                            credential: None,
                            checkout: &checkout,
                            clone_url: &clone_url,
                        };
                        let message = e.to_string();
                        let log = RunLog::with_line(&format!("paddock: no credential for the repository: {message}"));
                        let reason = StopReason::CredentialError { message };
                        return self.done(run, reason, log, Vec::new(), None, &forge).await;
                    }
                }
            }
        };
        let forge = Forge {
            app: self.github.as_deref(),
            credential: credential.as_ref(),
            checkout: &checkout,
            clone_url: &clone_url,
        };
        let ending = self.attempt(run, lease, &forge).await;
        if let Some(credential) = &credential {
            credential.revoke().await;
        }
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        ending
    }

    async fn attempt(&self, run: &ClaimedRun, lease: &LeaseGuard, forge: &Forge<'_>) -> Ending {
        let Some(agent) = self.config.agents.get(run.spec.agent_profile.as_str()).cloned() else {
            let message =
                format!("agent profile `{}` is not configured on this worker", run.spec.agent_profile.as_str());
            let reason = StopReason::CheckoutFailed { message };
            return self.done(run, reason, RunLog::default(), Vec::new(), None, forge).await;
        };
        let checkout_dir = forge.checkout.to_path_buf();
        let auth = forge.credential.map(RepoCredential::git_env).unwrap_or_else(|| self.outbound.git_env());
        let phases = Phases::new();
        let checkout = git::checkout(forge.clone_url, &run.spec.base_ref, &checkout_dir, &auth).await;
        phases.mark("clone");
        let tree = match checkout {
            Ok(checkout) => {
                let (dir, uid, gid) = (checkout_dir.clone(), self.config.sandbox.uid, self.config.sandbox.gid);
                let tar = tokio::task::spawn_blocking(move || tar_tree(&dir, uid, gid)).await;
                match tar {
                    Ok(Ok(bytes)) => Ok((checkout, bytes)),
                    Ok(Err(e)) => Err(self.retry(run, format!("packing the checkout failed: {e}"))),
                    Err(e) => Err(self.retry(run, format!("packing the checkout panicked: {e}"))),
                }
            }
            Err(GitError::NotFound(message)) => {
                let log = RunLog::with_line(&format!("paddock: checkout failed: {message}"));
                Err(self.done(run, StopReason::CheckoutFailed { message }, log, Vec::new(), None, forge).await)
            }
            Err(GitError::Unavailable(message)) => Err(self.retry(run, format!("checkout failed: {message}"))),
        };
        let (checkout, tar) = match tree {
            Ok(ok) => ok,
            Err(ending) => return ending,
        };

        let policy = self.policy_of(run);
        let egress = match EgressPolicy::for_run(&self.config.egress, policy.egress, &policy.egress_allow) {
            Ok(egress) => Arc::new(egress),
            Err(e) => return self.retry(run, format!("the run's egress policy is invalid: {e}")),
        };
        phases.mark("tar");
        let sandbox = match self.sandboxes.create(run.id, run.attempt, &policy, agent.image.as_deref()).await {
            Ok(sandbox) => sandbox,
            Err(e) => return self.retry(run, format!("creating the sandbox failed: {e}")),
        };
        let proxy_at = SocketAddr::new(IpAddr::V4(sandbox.network.gateway), self.config.egress.proxy_port);
        phases.mark("sandbox");
        let proxy = match EgressProxy::start(proxy_at, egress, run.id).await {
            Ok(proxy) => proxy,
            Err(e) => {
                self.sandboxes.remove(&sandbox).await;
                return self.retry(run, format!("starting the egress proxy on {proxy_at} failed: {e}"));
            }
        };
        let models = match self.start_gateway(run, &sandbox, &policy).await {
            Ok(models) => models,
            Err(message) => {
                self.sandboxes.remove(&sandbox).await;
                return self.retry(run, message);
            }
        };
        phases.mark("proxy_and_gateway");
        let place = Place {
            phases: &phases,
            policy: &policy,
            sandbox: &sandbox,
            proxy: &proxy,
            models: models.as_ref(),
            base_commit: &checkout.commit,
        };
        // Tests prove that a panic here, with the sandbox, its network, the
        // egress proxy and the gateway all up, leaves nothing behind. Only
        // builds with the `fault-injection` feature (the test suite's) have it.
        #[cfg(feature = "fault-injection")]
        if agent.env.get("PADDOCK_FAULT").map(String::as_str) == Some("panic-in-sandbox") {
            panic!("fault injected: a panic while the sandbox runs");
        }
        let session = self.in_sandbox(run, &agent, place, Bytes::from(tar), lease).await;
        self.sandboxes.remove(&sandbox).await;
        let egress = proxy.log.records();
        drop(proxy);
        let (calls, transcript) = match models {
            Some(models) => self.close_gateway(run.id, models).await,
            None => (Vec::new(), Vec::new()),
        };
        match session {
            Ok(SessionEnd::Stopped(interrupt)) => Ending::Interrupted(interrupt),
            Ok(SessionEnd::Finished { reason, mut log, diff, files_changed }) => {
                for call in &calls {
                    let why = call.refusal.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    log.line(&format!(
                        "paddock: model call {} {} {} -> {} in {} ms, {} redaction(s){why}",
                        call.wire,
                        call.provider.as_deref().unwrap_or("-"),
                        call.model.as_deref().unwrap_or("-"),
                        call.status,
                        call.latency_ms,
                        call.redactions.values().sum::<u32>()
                    ));
                }
                for record in &egress {
                    let verdict = if record.allowed { "allowed" } else { "denied" };
                    let why = record.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    log.line(&format!(
                        "paddock: egress {verdict} {} {}:{}{why}",
                        record.method, record.host, record.port
                    ));
                }
                let facts = Facts {
                    commit: checkout.commit,
                    command: agent.command,
                    files_changed,
                    egress,
                    calls,
                    transcript,
                    phases: phases.take(),
                };
                self.done(run, reason, log, diff, Some(facts), forge).await
            }
            Err(e) => self.retry(run, format!("sandbox: {e}")),
        }
    }

    /// Mints the run's gateway token and serves the gateway on the sandbox
    /// network (or relays it to the standalone gateway), when any provider
    /// is allowed.
    async fn start_gateway(
        &self,
        run: &ClaimedRun,
        sandbox: &Sandbox,
        policy: &SandboxPolicy,
    ) -> Result<Option<RunModels>, String> {
        let remote = self.remote_gateway.clone();
        // The provider policy set through the API wins over the configured
        // one; if it cannot be read, no model call is allowed (fail closed).
        // A standalone gateway applies it itself.
        let config = match self.queue.llm_policy().await {
            Ok(Some(policy)) => policy.apply(&self.config.gateway),
            Ok(None) => self.config.gateway.clone(),
            Err(e) => return Err(format!("reading the provider policy failed: {e}")),
        };
        if remote.is_none() && config.allowed_providers.is_empty() {
            return Ok(None);
        }
        let token = mint_token().map_err(|e| format!("minting the run token failed: {e}"))?;
        let hash = token_hash(&token);
        let ttl = Duration::from_secs(policy.timeout_seconds + 300);
        let grant = GatewayGrant { run: run.id, tenant: run.spec.tenant.clone() };
        self.queue
            .put_gateway_token(&hash, &grant, ttl)
            .await
            .map_err(|e| format!("storing the run token failed: {e}"))?;
        let at = SocketAddr::new(IpAddr::V4(sandbox.network.gateway), config.port);
        let serving = match remote {
            Some(remote) => Relay::start(at, remote).await.map(Serving::Remote),
            None => {
                let redactor = self.redactor(&run.spec.tenant, Some(&token)).await?;
                let gateway = RunGateway::new(
                    run.id,
                    run.spec.tenant.clone(),
                    hash.clone(),
                    config,
                    self.queue.clone(),
                    redactor,
                    self.http.clone(),
                );
                let gateway = Arc::new(gateway);
                GatewayServer::start(at, gateway.clone()).await.map(|server| Serving::Local { gateway, server })
            }
        };
        match serving {
            Ok(serving) => Ok(Some(RunModels { token, hash, address: at, serving })),
            Err(e) => {
                let _ = self.queue.revoke_gateway_token(run.id, &hash).await;
                Err(format!("starting the model gateway on {at} failed: {e}"))
            }
        }
    }

    /// Revokes the run token and collects the run's calls and transcript.
    async fn close_gateway(&self, run: RunId, models: RunModels) -> (Vec<CallRecord>, Vec<serde_json::Value>) {
        if let Err(error) = self.queue.revoke_gateway_token(run, &models.hash).await {
            tracing::warn!(run_id = %run, %error, "revoking the run token failed; it expires with its TTL");
        }
        match models.serving {
            Serving::Local { gateway, server } => {
                drop(server);
                (gateway.calls(), gateway.transcript())
            }
            Serving::Remote(relay) => {
                drop(relay);
                let published = match self.queue.take_gateway_calls(run, Duration::from_secs(10)).await {
                    Ok(published) => published,
                    Err(error) => {
                        tracing::warn!(run_id = %run, %error, "collecting the run's model calls failed");
                        Vec::new()
                    }
                };
                let (mut calls, mut transcript) = (Vec::new(), Vec::new());
                for item in published {
                    let Ok(mut item) = serde_json::from_str::<serde_json::Value>(&item) else { continue };
                    match serde_json::from_value::<CallRecord>(item["call"].take()) {
                        Ok(call) => calls.push(call),
                        Err(error) => {
                            tracing::warn!(run_id = %run, %error, "a call from the standalone gateway is unreadable")
                        }
                    }
                    if !item["transcript"].is_null() {
                        transcript.push(item["transcript"].take());
                    }
                }
                calls.sort_by_key(|c| c.at_ms);
                (calls, transcript)
            }
        }
    }

    /// A redactor for every secret this worker knows, the tenant's and
    /// the run token.
    async fn redactor(&self, tenant: &str, run_token: Option<&str>) -> Result<Redactor, String> {
        let known = gateway::known_secrets(&self.config, &self.queue, tenant, run_token).await?;
        Ok(Redactor::new(&known, &self.redaction_key))
    }

    async fn in_sandbox(
        &self,
        run: &ClaimedRun,
        agent: &AgentConfig,
        place: Place<'_>,
        tar: Bytes,
        lease: &LeaseGuard,
    ) -> Result<SessionEnd, SandboxError> {
        let Place { phases, policy, sandbox, proxy, models, base_commit } = place;
        let limits = self.sandboxes.config().clone();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(policy.timeout_seconds);
        self.sandboxes.upload(sandbox, tar).await?;
        phases.mark("upload");

        let mut log = RunLog::new(limits.max_log_bytes);
        log.line(&format!(
            "paddock: run {} attempt {} on {} (image {}, memory {} B, cpus {:.2}, pids {}, timeout {} s)",
            run.id,
            run.attempt,
            self.worker,
            agent.image.as_deref().unwrap_or(&limits.image),
            policy.memory_bytes,
            policy.nano_cpus as f64 / 1e9,
            policy.pids_limit,
            policy.timeout_seconds
        ));
        log.line(&format!("$ {}", agent.command));
        let proxy_url = format!("http://{}", proxy.address);
        // The profile's own variables first: Paddock's below win.
        let mut env: Vec<String> = agent.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend([
            format!("PADDOCK_TASK={}\n\n{}", run.spec.task_title, run.spec.task_body),
            format!("PADDOCK_TASK_TITLE={}", run.spec.task_title),
            format!("PADDOCK_TASK_BODY={}", run.spec.task_body),
            format!("PADDOCK_RUN_ID={}", run.id),
            "HOME=/tmp".to_owned(),
            // The model gateway is on the sandbox's own gateway address.
            format!("NO_PROXY={}", sandbox.network.gateway),
            format!("no_proxy={}", sandbox.network.gateway),
        ]);
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push(format!("{name}={proxy_url}"));
        }
        if let Some(models) = models {
            // The only secret a sandbox ever holds: revoked when the run ends.
            let base = format!("http://{}", models.address);
            // The names the profile's agent reads (by default those of the
            // SDKs, LiteLLM, Codex CLI and Claude Code).
            env.extend(agent.openai_base_url_env.iter().map(|name| format!("{name}={base}/v1")));
            env.extend(agent.anthropic_base_url_env.iter().map(|name| format!("{name}={base}")));
            env.extend(agent.token_env.iter().map(|name| format!("{name}={}", models.token)));
            let serves = match &self.remote_gateway {
                Some(remote) => format!("relayed to the standalone gateway at {}", remote.describe()),
                None => format!("providers {:?}", self.config.gateway.allowed_providers),
            };
            log.line(&format!("paddock: model gateway at {base} ({serves})"));
        }
        log.line(&format!(
            "paddock: network {} (internal, no DNS); egress preset {:?} through {proxy_url}",
            sandbox.network.subnet, policy.egress
        ));
        let cmd = vec!["bash".to_owned(), "-c".to_owned(), agent.command.clone()];
        let mut exec = self.sandboxes.exec(sandbox, cmd, env).await?;
        phases.mark("exec_started");
        let streamed = self.stream_output(run.id, &mut exec, &mut log, deadline, lease).await;
        let reason = match streamed {
            StreamEnd::Exited => {
                let code = self.sandboxes.exit_code(&exec.id).await?;
                if code == 0 {
                    StopReason::Completed
                } else if self.sandboxes.oom_killed(sandbox).await? {
                    StopReason::OomKilled { limit_bytes: policy.memory_bytes }
                } else {
                    StopReason::AgentFailed { exit_code: code }
                }
            }
            StreamEnd::TimedOut => {
                self.sandboxes.kill(sandbox).await;
                log.line(&format!("paddock: wall-clock cap of {} s reached; sandbox killed", policy.timeout_seconds));
                self.flush_tail(run.id, &mut log).await;
                return Ok(SessionEnd::Finished {
                    reason: StopReason::Timeout { limit_seconds: policy.timeout_seconds },
                    log,
                    diff: Vec::new(),
                    files_changed: Vec::new(),
                });
            }
            StreamEnd::Stopped(interrupt) => {
                self.sandboxes.kill(sandbox).await;
                return Ok(SessionEnd::Stopped(interrupt));
            }
            StreamEnd::Cancelled => {
                self.sandboxes.kill(sandbox).await;
                let by = match self.queue.get(run.id).await {
                    Ok(Some(record)) => record.cancelled_by.unwrap_or_default(),
                    _ => String::new(),
                };
                log.line(&format!("paddock: cancelled by {by}; sandbox killed"));
                self.flush_tail(run.id, &mut log).await;
                return Ok(SessionEnd::Finished {
                    reason: StopReason::Cancelled { by },
                    log,
                    diff: Vec::new(),
                    files_changed: Vec::new(),
                });
            }
        };
        log.line(&format!("paddock: agent finished: {reason:?}"));
        self.flush_tail(run.id, &mut log).await;
        let (diff, files_changed) = self.collect_diff(sandbox, base_commit, deadline, limits.max_diff_bytes).await?;
        Ok(SessionEnd::Finished { reason, log, diff, files_changed })
    }

    /// Copies the agent's output into the log until the command exits, the
    /// wall clock runs out, someone cancels, the lease is lost or the
    /// shutdown grace period ends.
    async fn stream_output(
        &self,
        run: RunId,
        exec: &mut Exec,
        log: &mut RunLog,
        deadline: Instant,
        lease: &LeaseGuard,
    ) -> StreamEnd {
        let mut flush = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                chunk = exec.output.next() => match chunk {
                    Some(Ok(bytes)) => log.push(&bytes),
                    Some(Err(error)) => {
                        log.line(&format!("paddock: output stream broke: {error}"));
                        return StreamEnd::Exited;
                    }
                    None => return StreamEnd::Exited,
                },
                _ = flush.tick() => self.flush_tail(run, log).await,
                _ = tokio::time::sleep_until(deadline.into()) => return StreamEnd::TimedOut,
                _ = lease.lost().cancelled() => return StreamEnd::Stopped(Interrupt::LeaseLost),
                _ = lease.cancel_requested().cancelled() => return StreamEnd::Cancelled,
                _ = self.grace_over.cancelled() => return StreamEnd::Stopped(Interrupt::Shutdown),
            }
        }
    }

    async fn flush_tail(&self, run: RunId, log: &mut RunLog) {
        let pending = log.take_pending();
        if pending.is_empty() {
            return;
        }
        if let Err(error) = self.queue.append_log(run, &pending).await {
            tracing::debug!(%error, "log tail not updated");
        }
    }

    /// Stages everything the agent changed and takes the binary diff out,
    /// inside the sandbox: host git never touches the agent's tree.
    /// The diff is against the checked-out commit, in the standard format
    /// whatever the agent set in `.git/config` (prefixes, external diff,
    /// textconv); it is data to the worker either way.
    async fn collect_diff(
        &self,
        sandbox: &Sandbox,
        base_commit: &str,
        deadline: Instant,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, Vec<String>), SandboxError> {
        const GIT: &str = "git -c core.hooksPath=/dev/null -c core.fsmonitor= -c safe.directory='*'";
        if base_commit.is_empty() || !base_commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SandboxError::Other(format!("unexpected base commit {base_commit:?}")));
        }
        let script = format!(
            "{GIT} add -A >/dev/null && {GIT} diff --cached --binary --no-ext-diff --no-textconv --no-relative \
             --src-prefix=a/ --dst-prefix=b/ {base_commit}"
        );
        let diff = self.capture(sandbox, script, deadline, max_bytes).await?;
        let names = format!("{GIT} diff --cached --name-only -z {base_commit}");
        let names = self.capture(sandbox, names, deadline, 1 << 20).await?;
        let files = names
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        Ok((diff, files))
    }

    async fn capture(
        &self,
        sandbox: &Sandbox,
        script: String,
        deadline: Instant,
        max_bytes: usize,
    ) -> Result<Vec<u8>, SandboxError> {
        let cmd = vec!["bash".to_owned(), "-c".to_owned(), script];
        let mut exec = self.sandboxes.exec(sandbox, cmd, vec!["HOME=/tmp".to_owned()]).await?;
        let mut out = Vec::new();
        let limit = deadline.max(Instant::now() + Duration::from_secs(60));
        loop {
            match tokio::time::timeout_at(limit.into(), exec.output.next()).await {
                Ok(Some(chunk)) => {
                    let chunk = chunk?;
                    if out.len() + chunk.len() > max_bytes {
                        return Err(SandboxError::Other(format!("diff is larger than {max_bytes} bytes")));
                    }
                    out.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Err(SandboxError::Other("taking the diff out timed out".to_owned())),
            }
        }
        match self.sandboxes.exit_code(&exec.id).await? {
            0 => Ok(out),
            code => Err(SandboxError::Other(format!(
                "git in the sandbox exited {code}: {}",
                String::from_utf8_lossy(&out).chars().take(300).collect::<String>()
            ))),
        }
    }

    /// Uploads the evidence and reports the run done. If storage fails the
    /// run is retried: a run without its evidence is not finished.
    async fn done(
        &self,
        run: &ClaimedRun,
        reason: StopReason,
        log: RunLog,
        diff: Vec<u8>,
        facts: Option<Facts>,
        forge: &Forge<'_>,
    ) -> Ending {
        // Nothing is stored unredacted: without the tenant's secrets, retry.
        let redactor = match self.redactor(&run.spec.tenant, None).await {
            Ok(redactor) => redactor,
            Err(message) => return self.retry(run, message),
        };
        let mut log = log;
        let mut record = RunFacts {
            base_commit: facts.as_ref().map(|f| f.commit.clone()),
            models: facts.as_ref().map(|f| models_used(&f.calls)).unwrap_or_default(),
            commands: facts.as_ref().map(|f| commands_run(&f.command, &log, &f.transcript)).unwrap_or_default(),
            files_changed: facts.as_ref().map(|f| f.files_changed.clone()).unwrap_or_default(),
            ..RunFacts::default()
        };
        // What the agent did is in the trail before anything is pushed.
        let (egress, calls) = facts.as_ref().map(|f| (f.egress.as_slice(), f.calls.as_slice())).unwrap_or_default();
        let activity = audit_events::agent_activity(run, &self.worker, &record, egress, calls);
        let reason = match self.record_audit(&activity).await {
            Ok(()) => reason,
            Err(e) => {
                log.line(&format!("paddock: the audit trail is unavailable ({e}); nothing is pushed"));
                StopReason::AuditUnavailable { message: e.to_string() }
            }
        };
        let reason = match self.publish(run, reason, &diff, forge, &mut record, &mut log).await {
            Ok(reason) => reason,
            Err(message) => return self.retry(run, message),
        };
        if let Err(e) = self.record_audit(&audit_events::outcome(run, &self.worker, &record, &reason)).await {
            // The branch and pull request exist; the events before them stand.
            tracing::error!(run_id = %run.id, error = %e, "the run's outcome could not be audited");
            log.line(&format!("paddock: recording the outcome in the audit trail failed: {e}"));
        }
        let transcript = facts.as_ref().map(|f| transcript_jsonl(&redactor, &f.transcript)).unwrap_or_default();
        let model_calls: String = facts
            .as_ref()
            .map(|f| f.calls.iter().filter_map(|c| serde_json::to_string(c).ok()).map(|l| l + "\n").collect())
            .unwrap_or_default();
        let mut kinds = vec![ArtifactKind::Logs, ArtifactKind::Diff, ArtifactKind::Summary];
        if !transcript.is_empty() {
            kinds.push(ArtifactKind::Transcript);
        }
        if !model_calls.is_empty() {
            kinds.push(ArtifactKind::ModelCalls);
        }
        let keys: Vec<String> = kinds.iter().map(|k| run.id.artifact_key(*k)).collect();
        let image = self
            .config
            .agents
            .get(run.spec.agent_profile.as_str())
            .and_then(|a| a.image.clone())
            .unwrap_or_else(|| self.config.sandbox.image.clone());
        let summary = Summary {
            run_id: run.id,
            attempt: run.attempt,
            worker: &self.worker,
            tenant: &run.spec.tenant,
            repository: run.spec.repository.to_string(),
            base_ref: &run.spec.base_ref,
            base_commit: record.base_commit.as_deref(),
            issue: run.spec.issue,
            agent_profile: run.spec.agent_profile.as_str(),
            command: facts.as_ref().map(|f| f.command.as_str()),
            requested_by: &run.spec.requested_by,
            via: run.spec.via.as_deref(),
            image: &image,
            policy: &self.policy_of(run),
            stop_reason: &reason,
            files_changed: &record.files_changed,
            commands: &record.commands,
            credentials: &record.credentials,
            branch: record.branch.as_deref(),
            pull_request: record.pull_request.as_ref(),
            egress: facts.as_ref().map(|f| f.egress.as_slice()).unwrap_or_default(),
            model_calls: facts.as_ref().map(|f| f.calls.as_slice()).unwrap_or_default(),
            phases_ms: facts.as_ref().map(|f| f.phases.clone()).unwrap_or_default(),
            diff_bytes: diff.len(),
            log_bytes: log.data.len(),
            log_truncated: log.truncated,
            artifacts: &keys,
        };
        let summary = match serde_json::to_vec_pretty(&summary) {
            Ok(json) => json,
            Err(e) => return self.retry(run, format!("encoding the summary failed: {e}")),
        };
        // Logs pass redaction before they reach storage.
        let (log_text, _) = redactor.redact(&String::from_utf8_lossy(&log.data));
        let (log_text, diff, summary) = (Bytes::from(log_text), Bytes::from(diff), Bytes::from(summary));
        let (transcript, model_calls) = (Bytes::from(transcript), Bytes::from(model_calls));
        let bodies = kinds.iter().map(|kind| match kind {
            ArtifactKind::Logs => (log_text.clone(), "text/plain; charset=utf-8"),
            ArtifactKind::Diff => (diff.clone(), "text/x-diff"),
            ArtifactKind::Summary => (summary.clone(), "application/json"),
            ArtifactKind::Transcript => (transcript.clone(), "application/x-ndjson"),
            ArtifactKind::ModelCalls => (model_calls.clone(), "application/x-ndjson"),
        });
        for ((kind, key), (body, content_type)) in kinds.iter().zip(&keys).zip(bodies) {
            // The sweeper reads the tenant back when Redis has forgotten the run.
            let metadata = [("tenant", run.spec.tenant.as_str()), ("retention-class", kind.class().as_str())];
            if let Err(e) = self.store.put_with_metadata(key, body, content_type, &metadata).await {
                return self.retry(run, format!("uploading {key} failed: {e}"));
            }
        }
        Ending::Outcome(Outcome::Done { reason, artifacts: keys, facts: Some(Box::new(record)) })
    }

    /// With a GitHub App: turns a completed run's diff into a pushed branch
    /// and a draft pull request (or says on the issue that nothing changed),
    /// then revokes the run's token. Returns the final stop reason; `Err`
    /// when the forge failed in a way worth a retry.
    async fn publish(
        &self,
        run: &ClaimedRun,
        reason: StopReason,
        diff: &[u8],
        forge: &Forge<'_>,
        record: &mut RunFacts,
        log: &mut RunLog,
    ) -> Result<StopReason, String> {
        let (Some(app), Some(credential)) = (forge.app, forge.credential) else { return Ok(reason) };
        let mut reason = reason;
        let mut note = None;
        if reason == StopReason::Completed {
            let command = record.commands.first().cloned().unwrap_or_default();
            let story = RunStory {
                run: run.id,
                spec: &run.spec,
                command: &command,
                models: &record.models,
                commands: &record.commands[1.min(record.commands.len())..],
                link: format!("{}/v1/runs/{}", app.config.run_link_base.trim_end_matches('/'), run.id),
            };
            match publish::publish(app, credential, forge.checkout, forge.clone_url, diff, &story).await {
                Ok(Published::NoChanges) => {
                    log.line("paddock: the agent changed nothing; no branch, no pull request");
                    note = Some(format!(
                        "Paddock run [`{}`]({}) finished without changing anything, so no pull request was opened.",
                        run.id, story.link
                    ));
                }
                Ok(Published::PullRequest { branch, pull_request, files }) => {
                    log.line(&format!("paddock: pushed {branch}; draft pull request {}", pull_request.url));
                    note = Some(format!(
                        "Paddock opened draft pull request #{} for this issue (run [`{}`]({}), requested by {}).",
                        pull_request.number, run.id, story.link, run.spec.requested_by
                    ));
                    record.files_changed = files;
                    record.branch = Some(branch);
                    record.pull_request = Some(pull_request);
                }
                Err(PublishError::Protected(branch)) => {
                    log.line(&format!("paddock: refusing to push {branch}: default or protected branch"));
                    reason = StopReason::ProtectedBranchRefused { branch };
                }
                Err(PublishError::Patch(e)) => {
                    log.line(&format!("paddock: {e}"));
                    reason = StopReason::AgentFailed { exit_code: -1 };
                    record.files_changed.clear();
                }
                Err(PublishError::Forge(ForgeError::Refused(message))) => {
                    log.line(&format!("paddock: GitHub refused: {message}"));
                    reason = StopReason::CredentialError { message };
                }
                Err(e) => return Err(format!("publishing failed: {e}")),
            }
        }
        credential.revoke().await;
        record.credentials.push(credential.grant());
        if let (Some(issue), Some(note)) = (run.spec.issue, note) {
            match publish::comment_on_issue(app, &run.spec.repository, issue, run.id, &note).await {
                Ok(grant) => record.credentials.push(grant),
                Err(error) => log.line(&format!("paddock: commenting on issue #{issue} failed: {error}")),
            }
        }
        Ok(reason)
    }
}

/// Models called successfully, with how often.
fn models_used(calls: &[CallRecord]) -> Vec<ModelUse> {
    let mut used: Vec<ModelUse> = Vec::new();
    for call in calls.iter().filter(|c| c.status < 400) {
        let (Some(provider), Some(model)) = (&call.provider, &call.model) else { continue };
        match used.iter_mut().find(|u| &u.provider == provider && &u.model == model) {
            Some(entry) => entry.calls += 1,
            None => used.push(ModelUse { provider: provider.clone(), model: model.clone(), calls: 1 }),
        }
    }
    used
}

/// The agent's command, then every command it reported (`paddock-exec:`
/// lines, JSON strings) or, when it reports none, every `bash` tool call
/// the model made (from the transcript, when content is kept).
fn commands_run(command: &str, log: &RunLog, transcript: &[serde_json::Value]) -> Vec<String> {
    let text = String::from_utf8_lossy(&log.data);
    let mut reported: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("paddock-exec: "))
        .map(|c| serde_json::from_str::<String>(c).unwrap_or_else(|_| c.to_owned()))
        .collect();
    if reported.is_empty() {
        reported = transcript.iter().flat_map(tool_commands).collect();
    }
    std::iter::once(command.to_owned()).chain(reported).collect()
}

/// Commands in a transcript line's answer: OpenAI `tool_calls` with a
/// `command` argument, Anthropic `tool_use` blocks with a `command` input.
fn tool_commands(line: &serde_json::Value) -> Vec<String> {
    let Some(answer) = line["response"].as_str().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()) else {
        return Vec::new();
    };
    let openai = answer["choices"].as_array().into_iter().flatten().flat_map(|choice| {
        choice["message"]["tool_calls"].as_array().into_iter().flatten().filter_map(|call| {
            let arguments = call["function"]["arguments"].as_str()?;
            serde_json::from_str::<serde_json::Value>(arguments).ok()?["command"].as_str().map(str::to_owned)
        })
    });
    let anthropic = answer["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "tool_use")
        .filter_map(|block| block["input"]["command"].as_str().map(str::to_owned));
    openai.chain(anthropic).collect()
}

/// What publishing needs: the App and the run's token (when GitHub is
/// configured), the host checkout and where it came from.
struct Forge<'a> {
    app: Option<&'a GitHubApp>,
    credential: Option<&'a RepoCredential>,
    checkout: &'a std::path::Path,
    clone_url: &'a str,
}

/// The transcript as JSON Lines: call metadata always, prompt and
/// completion redacted (or omitted, by policy), as the gateway kept them;
/// one more redaction pass with every secret this worker knows.
fn transcript_jsonl(redactor: &Redactor, lines: &[serde_json::Value]) -> String {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    redactor.redact(&text).0
}

/// Where a run executes: its sandbox, its egress proxy, its model gateway
/// and the policy they were set up under.
#[derive(Clone, Copy)]
struct Place<'a> {
    phases: &'a Phases,
    policy: &'a SandboxPolicy,
    sandbox: &'a Sandbox,
    proxy: &'a EgressProxy,
    models: Option<&'a RunModels>,
    /// The commit the tree was checked out at: the diff is taken against
    /// it, so an agent that commits its work loses nothing.
    base_commit: &'a str,
}

/// The run's model gateway and the token that opens it.
struct RunModels {
    token: String,
    hash: String,
    address: SocketAddr,
    serving: Serving,
}

/// The gateway in this process, or a relay to the standalone one.
enum Serving {
    Local { gateway: Arc<RunGateway>, server: GatewayServer },
    Remote(Relay),
}

enum StreamEnd {
    Exited,
    TimedOut,
    Cancelled,
    Stopped(Interrupt),
}

enum SessionEnd {
    Finished { reason: StopReason, log: RunLog, diff: Vec<u8>, files_changed: Vec<String> },
    Stopped(Interrupt),
}

/// How long each step of a run's start took, in order (ms since the
/// previous mark): where start-up time goes.
struct Phases(std::sync::Mutex<(Instant, Vec<(&'static str, u64)>)>);

impl Phases {
    fn new() -> Self {
        Self(std::sync::Mutex::new((Instant::now(), Vec::new())))
    }

    fn mark(&self, phase: &'static str) {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let took = inner.0.elapsed().as_millis() as u64;
        inner.1.push((phase, took));
        inner.0 = Instant::now();
    }

    fn take(&self) -> Vec<(&'static str, u64)> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1)
    }
}

struct Facts {
    phases: Vec<(&'static str, u64)>,
    commit: String,
    command: String,
    files_changed: Vec<String>,
    egress: Vec<EgressRecord>,
    calls: Vec<CallRecord>,
    transcript: Vec<serde_json::Value>,
}

/// The run summary stored as `summary.json`.
#[derive(Serialize)]
struct Summary<'a> {
    run_id: RunId,
    attempt: u32,
    worker: &'a str,
    tenant: &'a str,
    repository: String,
    base_ref: &'a str,
    base_commit: Option<&'a str>,
    issue: Option<u64>,
    agent_profile: &'a str,
    command: Option<&'a str>,
    requested_by: &'a str,
    via: Option<&'a str>,
    image: &'a str,
    /// The sandbox policy the run executed under.
    policy: &'a SandboxPolicy,
    stop_reason: &'a StopReason,
    files_changed: &'a [String],
    /// The agent's command, then each command it reported running.
    commands: &'a [String],
    /// Credentials granted for the run: fingerprints, permissions, expiry.
    credentials: &'a [common::CredentialGrant],
    branch: Option<&'a str>,
    pull_request: Option<&'a common::PullRequestRef>,
    /// Every request the sandbox made through the egress proxy.
    egress: &'a [EgressRecord],
    /// Metadata of every model call through the gateway.
    model_calls: &'a [CallRecord],
    /// Milliseconds each start-up step took, in order.
    phases_ms: Vec<(&'a str, u64)>,
    diff_bytes: usize,
    log_bytes: usize,
    log_truncated: bool,
    artifacts: &'a [String],
}

/// A run's output, capped; `pending` is what the Redis tail has not seen.
#[derive(Default)]
struct RunLog {
    data: Vec<u8>,
    pending: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl RunLog {
    fn new(cap: usize) -> Self {
        Self { cap, ..Self::default() }
    }

    fn with_line(line: &str) -> Self {
        let mut log = Self::new(line.len() + 1);
        log.line(line);
        log
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.data.len());
        let kept = &bytes[..bytes.len().min(room)];
        self.data.extend_from_slice(kept);
        self.pending.extend_from_slice(kept);
        if kept.len() < bytes.len() {
            self.truncated = true;
            let marker = b"\n[paddock: log truncated at the configured cap]\n";
            self.data.extend_from_slice(marker);
            self.pending.extend_from_slice(marker);
        }
    }

    fn line(&mut self, line: &str) {
        // Paddock's own lines are never dropped by the cap.
        let text = format!("{line}\n");
        self.data.extend_from_slice(text.as_bytes());
        self.pending.extend_from_slice(text.as_bytes());
    }

    fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::RunLog;

    #[test]
    fn the_log_stops_at_its_cap_and_says_so() {
        let mut log = RunLog::new(10);
        log.push(b"0123456789abcdef");
        log.push(b"more");
        assert!(log.truncated);
        assert!(log.data.starts_with(b"0123456789\n[paddock: log truncated"));
        assert!(!log.data.windows(4).any(|w| w == b"more"));
        assert_eq!(log.take_pending(), log.data);
        assert!(log.take_pending().is_empty());
    }
}
