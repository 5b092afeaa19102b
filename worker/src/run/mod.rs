//! Executes one claimed run: checkout, sandbox, agent, diff, publishing,
//! evidence. `execute` is the apalis task function; an attempt reads as its
//! steps (`Runtime::attempt`), each failing with a [`RunError`]. The
//! sandbox, proxy and gateway belong to a [`session::Session`] guard, and
//! the host checkout is removed on every path out.

mod agent;
mod env;
mod error;
mod events;
mod evidence;
mod log;
mod publish;
mod session;

use platform::metrics;
use std::sync::Arc;
use std::time::Duration;

use common::config::{AgentConfig, Config};
use common::policy::SandboxPolicy;
use common::{RunFacts, StopReason};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit_events;
use crate::leases::{LeaseGuard, Leases};
use agent::{Finished, Stage};
use evidence::{Ended, Facts};
use forge::git::{self, Checkout, CheckoutLimits, GitError};
use forge::{FORK_MODE_RUN_PERMISSIONS, ForgeError, GitHubApp, RUN_PERMISSIONS, RepoCredential};
use gateway::Redactor;
use objstore::S3Store;
use publish::Forge;
use sandbox::SandboxDriver;
use session::Session;
use store::{ClaimedRun, Outcome, RunQueue};

pub use error::{Interrupt, RunError};
use log::{Phases, RunLog};

/// Everything a run needs, shared by all runs of a worker process.
pub struct Runtime {
    pub config: Config,
    pub worker: String,
    pub queue: RunQueue,
    pub store: S3Store,
    pub sandboxes: SandboxDriver,
    /// Sandboxes made and started ahead of the runs that take them.
    pub warm: sandbox::WarmPool,
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
    /// Seals the run's audit events for the pending log in Redis.
    pub sealer: audit_trail::Sealer,
    /// Trust and proxy of Paddock's own calls out (`[tls]`, `[outbound]`).
    pub outbound: platform::outbound::Outbound,
    /// The one client to model providers, shared by every run's gateway.
    pub http: reqwest::Client,
    /// The standalone gateway runs' gateway addresses are relayed to.
    pub remote_gateway: Option<gateway::RemoteGateway>,
}

/// How an attempt ended, for the queue.
enum Ending {
    Outcome(Outcome),
    Interrupted(Interrupt),
}

/// The apalis task function.
pub async fn execute(
    mut run: ClaimedRun,
    runtime: apalis_core::task::data::Data<Arc<Runtime>>,
) -> Result<(), apalis_core::error::BoxDynError> {
    let runtime: Arc<Runtime> = (*runtime).clone();
    let _slot = Slot::taken(&run.spec.tenant);
    let span = tracing::info_span!(
        "run",
        run_id = %run.id,
        tenant = %run.spec.tenant,
        attempt = run.attempt,
        epoch = run.epoch,
        // How long it waited for a worker (approval included).
        queued_ms = common::audit::now_ms().saturating_sub(run.id.created_ms())
    );
    // One trace from the API request through the queue to this attempt.
    if let Some(parent) = &run.spec.trace_parent {
        platform::telemetry::follow(&span, parent);
    }
    run.trace = platform::telemetry::traceparent(&span);
    let lease = runtime.leases.hold(&run);
    tracing::info!(parent: &span, repository = %run.spec.repository, "run claimed");
    // A panic anywhere in the run must not leak its sandbox: the session
    // guard's drop removes what it owns, and what was made outside it is
    // found by its labels and removed here before the run is retried.
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

/// A worker slot a run holds, in the metrics (running runs, free slots).
struct Slot;

impl Slot {
    fn taken(tenant: &str) -> Self {
        let metrics = metrics::global();
        metrics.claims.get_or_create(&metrics::labels([("tenant", tenant)])).inc();
        metrics.runs_running.inc();
        metrics.slots_free.dec();
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let metrics = metrics::global();
        metrics.runs_running.dec();
        metrics.slots_free.inc();
    }
}

/// Counts how the run ended, once the queue took it (`state`: the run's
/// state after `finish`).
fn count_outcome(run: &ClaimedRun, outcome: &Outcome, state: common::RunState) {
    let metrics = metrics::global();
    let tenant = metrics::labels([("tenant", &run.spec.tenant)]);
    let reason = match outcome {
        Outcome::Done { reason, .. } if state.is_terminal() => reason.kind(),
        // Cancelled meanwhile: the queue ended it so.
        Outcome::Done { .. } | Outcome::Release => "cancelled",
        Outcome::Retry { .. } if state == common::RunState::Failed => {
            metrics.dead_lettered.get_or_create(&tenant).inc();
            "infrastructure_error"
        }
        Outcome::Retry { .. } => {
            metrics.retries.get_or_create(&tenant).inc();
            return;
        }
    };
    if state.is_terminal() {
        let labels = metrics::labels([("tenant", &run.spec.tenant), ("state", state.as_str()), ("reason", reason)]);
        metrics.runs_finished.get_or_create(&labels).inc();
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map_or_else(|| "a panic".to_owned(), |s| (*s).to_owned()),
    }
}

impl Runtime {
    /// One attempt: fail-closed on the audit trail, then under a GitHub
    /// token for the one repository (revoked when the attempt ends,
    /// whatever happens) in a fresh host checkout (removed likewise).
    async fn run(&self, run: &ClaimedRun, lease: &LeaseGuard) -> Ending {
        // No credential, sandbox or push for a run whose start is not in the trail.
        let claimed = audit_events::claimed(run, &self.worker, &self.policy_of(run));
        if let Err(e) = self.record_audit(&claimed).await {
            tracing::error!(run_id = %run.id, error = %e, "audit unavailable: run stopped");
            let reason = StopReason::AuditUnavailable { message: e.to_string() };
            return Ending::Outcome(Outcome::Done { reason, artifacts: Vec::new(), facts: None });
        }
        let checkout = self.checkout_dir(run);
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        let clone_url = git::clone_url(&self.config.git.base_url, &run.spec.repository);
        let (credential, refused) = match self.credential(run).await {
            Ok(credential) => (credential, None),
            Err(error) => (None, Some(error)),
        };
        let forge = Forge {
            app: self.github.as_deref(),
            credential: credential.as_ref(),
            checkout: &checkout,
            clone_url: &clone_url,
        };
        let result = match refused {
            Some(error) => Err(error),
            None => self.attempt(run, lease, &forge).await,
        };
        // A run that stops before its agent ran still leaves its evidence.
        let result = match result {
            Err(RunError::Stop { reason, line }) => {
                self.done(run, reason, RunLog::with_line(&line), Vec::new(), None, &forge).await
            }
            other => other,
        };
        if let Some(credential) = &credential {
            credential.revoke().await;
        }
        let _ = tokio::fs::remove_dir_all(&checkout).await;
        self.conclude(run, result)
    }

    /// The steps of an attempt once the run has its credential.
    async fn attempt(&self, run: &ClaimedRun, lease: &LeaseGuard, forge: &Forge<'_>) -> Result<Outcome, RunError> {
        let agent = self.agent_of(run)?;
        let phases = Phases::new();
        let policy = self.policy_of(run);
        let checkout =
            self.check_out(run, forge, &policy, &phases).instrument(self.step(run, "checkout").await).await?;
        let session =
            Session::open(self, run, &policy, &agent, &phases).instrument(self.step(run, "sandbox").await).await?;
        // Tests prove that a panic here, with the sandbox, its network, the
        // egress proxy and the gateway all up, leaves nothing behind. Only
        // builds with the `fault-injection` feature (the test suite's) have it.
        #[cfg(feature = "fault-injection")]
        if agent.env.get("PADDOCK_FAULT").map(String::as_str) == Some("panic-in-sandbox") {
            panic!("fault injected: a panic while the sandbox runs");
        }
        let stage = Stage {
            session: &session,
            policy: &policy,
            base_commit: &checkout.commit,
            tree_bytes: checkout.bytes,
            phases: &phases,
        };
        let finished =
            self.in_sandbox(run, &agent, stage, forge.checkout, lease).instrument(self.step(run, "agent").await).await;
        let used = session.close().await;
        let Finished { reason, mut log, diff, files_changed } = finished?;
        log_activity(&mut log, &used);
        let phases = phases.take();
        count_activity(&policy, &phases, &used);
        let facts = Facts {
            agent: self.agent_identity(run).await,
            commit: checkout.commit,
            command: agent.command,
            files_changed,
            egress: used.egress,
            calls: used.calls,
            transcript: used.transcript,
            phases,
        };
        self.done(run, reason, log, diff, Some(facts), forge).await
    }

    /// The run's repository credential: `None` without a GitHub App. A
    /// refusal stops the run (its evidence says why); GitHub being away is
    /// retried.
    async fn credential(&self, run: &ClaimedRun) -> Result<Option<RepoCredential>, RunError> {
        let Some(app) = &self.github else { return Ok(None) };
        let (purpose, permissions) = match self.config.publish.fork_of(&run.spec.repository) {
            None => ("clone, push and pull request", RUN_PERMISSIONS),
            Some(_) => ("clone and pull request (the branch goes to the fork)", FORK_MODE_RUN_PERMISSIONS),
        };
        match app.credential(&run.spec.repository, purpose, permissions).await {
            Ok(credential) => Ok(Some(credential)),
            Err(ForgeError::Unavailable(message)) => {
                Err(RunError::Retry(format!("minting the repository token failed: {message}")))
            }
            Err(e) => {
                let message = e.to_string();
                let line = format!("paddock: no credential for the repository: {message}");
                Err(RunError::Stop { reason: StopReason::CredentialError { message }, line })
            }
        }
    }

    /// The run's agent profile, which this worker must have.
    fn agent_of(&self, run: &ClaimedRun) -> Result<AgentConfig, RunError> {
        let profile = run.spec.agent_profile.as_str();
        self.config.agents.get(profile).cloned().ok_or_else(|| {
            let message = format!("agent profile `{profile}` is not configured on this worker");
            RunError::Stop { line: format!("paddock: {message}"), reason: StopReason::CheckoutFailed { message } }
        })
    }

    /// Begins step `name` of a run (`checkout`, `sandbox`, `agent`, `diff`,
    /// `publish`, `upload`): live readers of its log see the step start, and
    /// the returned span (a child of the run's) times it.
    async fn step(&self, run: &ClaimedRun, name: &'static str) -> tracing::Span {
        if let Err(error) = self.queue.append_phase(run.id, name).await {
            tracing::debug!(run_id = %run.id, %error, step = name, "the live log misses a step");
        }
        // The run's names again: a line logged inside a step shows this span.
        tracing::info_span!("step", step = name, run_id = %run.id, tenant = %run.spec.tenant, otel.name = name)
    }

    /// Clones the base ref on the host, once its tree is known to fit the
    /// run's workspace (and the file cap): a tiny pack can name gigabytes.
    async fn check_out(
        &self,
        run: &ClaimedRun,
        forge: &Forge<'_>,
        policy: &SandboxPolicy,
        phases: &Phases,
    ) -> Result<Checkout, RunError> {
        let dir = forge.checkout.to_path_buf();
        let auth = forge.credential.map(RepoCredential::git_env).unwrap_or_else(|| self.outbound.git_env());
        let limits =
            CheckoutLimits { max_bytes: policy.workspace_bytes, max_files: self.config.sandbox.max_checkout_files };
        let checkout = git::checkout(forge.clone_url, &run.spec.base_ref, &dir, &auth, limits).await;
        phases.mark("clone");
        match checkout {
            Ok(checkout) => Ok(checkout),
            Err(GitError::NotFound(message)) => {
                let line = format!("paddock: checkout failed: {message}");
                Err(RunError::Stop { reason: StopReason::CheckoutFailed { message }, line })
            }
            Err(GitError::TooLarge { what, limit }) => {
                let line = format!("paddock: {what} is over its bound of {limit}; nothing was checked out");
                Err(RunError::Stop { reason: StopReason::LimitExceeded { what: what.to_owned(), limit }, line })
            }
            Err(GitError::Unavailable(message)) => Err(RunError::Retry(format!("checkout failed: {message}"))),
        }
    }

    /// Audits what the agent did, publishes, audits the outcome, and stores
    /// the evidence. If storage fails the run is retried: a run without its
    /// evidence is not finished.
    async fn done(
        &self,
        run: &ClaimedRun,
        reason: StopReason,
        mut log: RunLog,
        diff: Vec<u8>,
        facts: Option<Facts>,
        forge: &Forge<'_>,
    ) -> Result<Outcome, RunError> {
        // Nothing is stored unredacted: without the tenant's secrets, retry.
        let redactor = self.redactor(&run.spec.tenant, None).await.map_err(RunError::Retry)?;
        let mut record = evidence::run_facts(facts.as_ref(), &log);
        // Commands go into the trail and the record: redacted like the log.
        for command in &mut record.commands {
            *command = redactor.redact(command).0;
        }
        let reason = self.audit_activity(run, reason, &record, facts.as_ref(), &mut log).await;
        let publishing = self.step(run, "publish").await;
        let reason = self.publish(run, reason, &diff, forge, &mut record, &mut log).instrument(publishing).await?;
        if let Err(e) = self.record_audit(&audit_events::outcome(run, &self.worker, &record, &reason)).await {
            // The branch and pull request exist; the events before them stand.
            tracing::error!(run_id = %run.id, error = %e, "the run's outcome could not be audited");
            log.line(&format!("paddock: recording the outcome in the audit trail failed: {e}"));
        }
        let (image, policy) = (self.image_of(run), self.policy_of(run));
        let ended = Ended {
            run,
            worker: &self.worker,
            image: &image,
            policy: &policy,
            reason: &reason,
            record: &record,
            facts: facts.as_ref(),
            log: &log,
            diff: &diff,
        };
        let artifacts = evidence::assemble(&ended, &redactor)?;
        self.upload(run, &artifacts).instrument(self.step(run, "upload").await).await?;
        let keys = artifacts.into_iter().map(|a| a.key).collect();
        Ok(Outcome::Done { reason, artifacts: keys, facts: Some(Box::new(record)) })
    }

    /// What the agent did goes into the trail before anything is pushed;
    /// when it cannot, nothing is pushed.
    async fn audit_activity(
        &self,
        run: &ClaimedRun,
        reason: StopReason,
        record: &RunFacts,
        facts: Option<&Facts>,
        log: &mut RunLog,
    ) -> StopReason {
        let (egress, calls) = facts.map(|f| (f.egress.as_slice(), f.calls.as_slice())).unwrap_or_default();
        let activity = audit_events::agent_activity(run, &self.worker, record, egress, calls, &log.audited);
        match self.record_audit(&activity).await {
            Ok(()) => reason,
            Err(e) => {
                log.line(&format!("paddock: the audit trail is unavailable ({e}); nothing is pushed"));
                StopReason::AuditUnavailable { message: e.to_string() }
            }
        }
    }

    /// The queue's view of a step's result.
    fn conclude(&self, run: &ClaimedRun, result: Result<Outcome, RunError>) -> Ending {
        match result {
            Ok(outcome) => Ending::Outcome(outcome),
            Err(RunError::Retry(message)) => self.retry(run, message),
            Err(RunError::Interrupted(interrupt)) => Ending::Interrupted(interrupt),
            // `done` settles every stop; one reaching here is reported as is.
            Err(RunError::Stop { reason, .. }) => {
                Ending::Outcome(Outcome::Done { reason, artifacts: Vec::new(), facts: None })
            }
        }
    }

    /// Removes what a panicked attempt left outside the process, and asks
    /// for the run to be retried (the attempt counts).
    async fn after_panic(&self, run: &ClaimedRun, what: String) -> Ending {
        tracing::error!(run_id = %run.id, panic = %what, "the run panicked; removing its sandbox");
        self.sandboxes.remove_run(run.id).await;
        if let Err(error) = self.queue.revoke_run_gateway_token(run.id).await {
            tracing::warn!(run_id = %run.id, %error, "revoking the run token failed; it expires with its TTL");
        }
        let _ = tokio::fs::remove_dir_all(self.checkout_dir(run)).await;
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
                    count_outcome(run, outcome, state);
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

    /// The agent the run's image holds, by its labels (or the profile's
    /// name when the image has none or cannot be read).
    async fn agent_identity(&self, run: &ClaimedRun) -> common::AgentIdentity {
        let image = self.image_of(run);
        let (name, version) = match self.sandboxes.agent_labels(&image).await {
            Ok(labels) => labels,
            Err(error) => {
                tracing::warn!(run_id = %run.id, %error, image, "reading the image's agent labels failed");
                (None, None)
            }
        };
        let name = name.unwrap_or_else(|| run.spec.agent_profile.as_str().to_owned());
        common::AgentIdentity { name, version, image }
    }

    /// The image the run's sandbox uses: its profile's, or the default.
    fn image_of(&self, run: &ClaimedRun) -> String {
        let profile = self.config.agents.get(run.spec.agent_profile.as_str());
        profile.and_then(|a| a.image.clone()).unwrap_or_else(|| self.config.sandbox.image.clone())
    }

    /// An infrastructure failure: retried after exponential backoff with jitter.
    fn retry(&self, run: &ClaimedRun, message: String) -> Ending {
        let base = self.config.worker.retry_base_seconds.max(1) * 1000;
        let exp = base.saturating_mul(1 << run.attempt.saturating_sub(1).min(10));
        let delay = Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2));
        tracing::warn!(run_id = %run.id, %message, ?delay, "infrastructure error");
        Ending::Outcome(Outcome::Retry { reason: StopReason::InfrastructureError { message }, delay })
    }

    /// Records `events`, sealed, in the pending log in Redis, durable before
    /// it returns (an error means they are not recorded), and in the index
    /// behind `GET /v1/audit/events`; the API's shipper moves them into the
    /// signed trail. No write to the bucket on a run's path.
    async fn record_audit(&self, events: &[common::audit::AuditEvent]) -> Result<(), audit_trail::AuditError> {
        let sealed = events.iter().map(|e| self.sealer.seal(e)).collect::<Result<Vec<_>, _>>()?;
        // Every event here is about one run: its share of the index is capped.
        let run = events.first().filter(|e| e.object.kind == "run").map(|e| e.object.id.clone());
        let cap = self.config.audit.max_indexed_events_per_run;
        let (metrics, started) = (platform::metrics::global(), std::time::Instant::now());
        let writer = platform::metrics::labels([("writer", "worker")]);
        let appended = self.queue.append_audit(run.as_deref(), &sealed, cap).await;
        metrics.audit_write.get_or_create(&writer).observe(started.elapsed().as_secs_f64());
        let left_out = appended.map_err(|e| {
            metrics.audit_failures.get_or_create(&writer).inc();
            audit_trail::AuditError::Unavailable(objstore::StoreError::new(format!("the pending audit log: {e}")))
        })?;
        if left_out > 0 {
            tracing::warn!(
                run_id = ?run, left_out, cap,
                "a run's audit events past its index cap are in the trail only"
            );
        }
        Ok(())
    }

    /// A redactor for every secret this worker knows, the tenant's and
    /// the run token.
    async fn redactor(&self, tenant: &str, run_token: Option<&str>) -> Result<Redactor, String> {
        let known = gateway::known_secrets(&self.config, &self.queue, tenant, run_token).await?;
        Ok(Redactor::new(&known, &self.redaction_key))
    }
}

/// One log line per model call and egress decision, after the agent's output.
/// The run's start-up steps and egress decisions, in the metrics.
fn count_activity(policy: &SandboxPolicy, phases: &[(&'static str, u64)], used: &session::Used) {
    let metrics = metrics::global();
    for (step, ms) in phases {
        metrics.sandbox_start.get_or_create(&metrics::labels([("step", step)])).observe(*ms as f64 / 1000.0);
    }
    for record in &used.egress {
        let decision = if record.allowed { "allow" } else { "deny" };
        let labels = metrics::labels([("preset", policy.egress.as_str()), ("decision", decision)]);
        metrics.egress.get_or_create(&labels).inc();
    }
}

fn log_activity(log: &mut RunLog, used: &session::Used) {
    for call in &used.calls {
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
    for record in &used.egress {
        let verdict = if record.allowed { "allowed" } else { "denied" };
        let why = record.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        log.line(&format!("paddock: egress {verdict} {} {}:{}{why}", record.method, record.host, record.port));
    }
}
