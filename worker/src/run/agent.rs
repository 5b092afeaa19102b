//! The agent's part of a run, inside its sandbox: the tree goes in, the
//! command runs under the run's caps until it ends, the diff comes out.

use std::time::{Duration, Instant};
use tracing::Instrument;

use common::config::AgentConfig;
use common::policy::SandboxPolicy;
use common::{RunId, StopReason};
use futures::StreamExt;
use sandbox::{Exec, Sandbox, SandboxError};
use store::ClaimedRun;

use super::Runtime;
use super::env::{Reach, agent_env};
use super::error::{Interrupt, RunError};
use super::log::{Phases, RunLog};
use super::session::Session;
use crate::leases::LeaseGuard;

/// What the agent left: why it stopped, its output and its change.
pub(super) struct Finished {
    pub(super) reason: StopReason,
    pub(super) log: RunLog,
    pub(super) diff: Vec<u8>,
    pub(super) files_changed: Vec<String>,
}

/// How much of an agent's events file is read.
const MAX_EVENTS_FILE: usize = 8 << 20;

/// How often a run's activity so far is written to the trail.
const AUDIT_EVERY: Duration = Duration::from_secs(5);

/// The sandbox, and what the agent's command runs against inside it.
pub(super) struct Stage<'a> {
    pub(super) session: &'a Session,
    pub(super) policy: &'a SandboxPolicy,
    /// The commit the tree was checked out at: the diff is taken against
    /// it, so an agent that commits its work loses nothing.
    pub(super) base_commit: &'a str,
    /// The checkout's bytes (tree and `.git`), as checked against its bound.
    pub(super) tree_bytes: u64,
    pub(super) phases: &'a Phases,
}

enum StreamEnd {
    Exited,
    /// The container itself stopped under the command (under runsc, the
    /// OOM killer takes gVisor's whole kernel).
    SandboxStopped(sandbox::Stopped),
    TimedOut,
    Cancelled,
    Stopped(Interrupt),
}

impl Runtime {
    /// Uploads the tree (packed as it is sent), runs the agent's command
    /// until it ends, and takes the diff out.
    pub(super) async fn in_sandbox(
        &self,
        run: &ClaimedRun,
        agent: &AgentConfig,
        stage: Stage<'_>,
        tree: &std::path::Path,
        lease: &LeaseGuard,
    ) -> Result<Finished, RunError> {
        let (sandbox, policy) = (stage.session.sandbox(), stage.policy);
        let deadline = Instant::now() + Duration::from_secs(policy.timeout_seconds);
        let (uid, gid) = (self.config.sandbox.uid, self.config.sandbox.gid);
        let mut log = self.opening_log(run, agent, &stage);
        // Fails closed: without the tenant's secrets nothing is shown live.
        let token = stage.session.models().map(|m| m.token.as_str());
        let redactor = self.redactor(&run.spec.tenant, token).await.map_err(RunError::Retry)?;
        log.redact_tail(std::sync::Arc::new(redactor));
        let proxy_url = format!("http://{}", stage.session.proxy().address);
        let base = stage.session.models().map(|m| format!("http://{}", m.address));
        let models = base.as_deref().zip(stage.session.models().map(|m| m.token.as_str()));
        let reach = Reach { gateway_ip: sandbox.network.gateway, proxy_url: &proxy_url, models };
        let mut env = agent_env(&run.id, &run.spec, agent, &reach);
        // The report key goes on stdin, which the agent's own processes do
        // not share, never in the environment they inherit.
        let report_key = match agent.reports_commands {
            true => Some(gateway::mint_token().map_err(|e| RunError::retry("minting the report key", e))?),
            false => None,
        };
        let input = report_key.as_ref().map(|key| {
            env.push("PADDOCK_REPORT_KEY_ON_STDIN=1".to_owned());
            log.expect_reports_signed_with(key.as_bytes().to_vec());
            bytes::Bytes::from(format!("{key}\n"))
        });
        if let Some(format) = agent.events {
            log.read_events(format, agent.events_file.is_some());
        }
        // A small checkout is unpacked by the same exec that then becomes
        // the agent, as it is packed: one container-runtime round, not two.
        let tree = sandbox::stream_tree(tree.to_path_buf(), uid, gid);
        let unpacks_in_exec = sandbox::unpacks_in_exec(stage.tree_bytes, policy);
        let mut exec = if unpacks_in_exec {
            self.sandboxes.start_in_tree(sandbox, tree, &agent.command, env, input).await?
        } else {
            self.sandboxes.upload(sandbox, tree).await?;
            stage.phases.mark("upload");
            let cmd = vec!["bash".to_owned(), "-c".to_owned(), agent.command.clone()];
            self.sandboxes.exec_with_input(sandbox, cmd, env, input).await?
        };
        stage.phases.mark("exec_started");
        let streamed = self.stream_output(run, stage.session, &mut exec, &mut log, deadline, lease).await;
        log.end_output();
        // A command that ended on its own had all its input, or the worker
        // failed to pack or send the checkout (retried, not the agent's).
        if matches!(streamed, StreamEnd::Exited)
            && let Err(error) = exec.input_sent().await
        {
            return Err(RunError::retry("sending the checkout into the sandbox", error));
        }
        let reason = match self.why_it_ended(run, streamed, &exec.id, sandbox, policy, &mut log).await? {
            Ok(reason) => reason,
            Err(early) => return Ok(Finished { reason: early, log, diff: Vec::new(), files_changed: Vec::new() }),
        };
        // The checkout never reached the workspace: the agent did not run,
        // so this is retried as the archive upload's failure would be.
        if unpacks_in_exec && reason == (StopReason::AgentFailed { exit_code: sandbox::UNPACK_FAILED }) {
            let error = "the sandbox's tar stopped (a workspace too small for its files, or an image without tar)";
            return Err(RunError::retry("unpacking the checkout in the sandbox", error));
        }
        log.line(&format!("paddock: agent finished: {reason:?}"));
        self.flush_tail_end(run.id, &mut log).await;
        if let Some(path) = &agent.events_file {
            self.read_events_file(sandbox, path, deadline, &mut log).await;
        }
        let limits = self.sandboxes.config();
        let collected = self
            .collect_diff(sandbox, stage.base_commit, deadline, limits.max_diff_bytes)
            .instrument(self.step(run, "diff").await)
            .await;
        let over = |what: &str, limit: u64, mut log: RunLog| {
            log.line(&format!("paddock: {what} is over its bound of {limit} bytes; nothing is kept or pushed"));
            let reason = StopReason::LimitExceeded { what: what.to_owned(), limit };
            Ok(Finished { reason, log, diff: Vec::new(), files_changed: Vec::new() })
        };
        let (diff, files_changed) = match collected {
            Err(SandboxError::OverLimit { what, limit }) => return over(what, limit, log),
            other => other?,
        };
        // Inflated on the host only when published: checked here, before.
        let (largest, total) = forge::git::inflated_sizes(&diff);
        if largest > limits.max_inflated_file_bytes {
            return over("a file of the diff, inflated", limits.max_inflated_file_bytes, log);
        }
        if total > limits.max_inflated_diff_bytes {
            return over("the diff, inflated", limits.max_inflated_diff_bytes, log);
        }
        Ok(Finished { reason, log, diff, files_changed })
    }

    /// The log's first lines: where the run executes and under which caps.
    fn opening_log(&self, run: &ClaimedRun, agent: &AgentConfig, stage: &Stage<'_>) -> RunLog {
        let (limits, policy, session) = (self.sandboxes.config(), stage.policy, stage.session);
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
        if let Some(models) = session.models() {
            let serves = match &self.remote_gateway {
                Some(remote) => format!("relayed to the standalone gateway at {}", remote.describe()),
                None => format!("providers {:?}", self.config.gateway.allowed_providers),
            };
            log.line(&format!("paddock: model gateway at http://{} ({serves})", models.address));
        }
        log.line(&format!(
            "paddock: network {} (internal, no DNS); egress preset {:?} through http://{}",
            session.sandbox().network.subnet,
            policy.egress,
            session.proxy().address
        ));
        log
    }

    /// The agent's stop reason (`Ok`), or one that leaves no diff to take
    /// (`Err`: the wall clock ran out or someone cancelled). A lost lease
    /// or the end of the shutdown grace interrupts the run.
    async fn why_it_ended(
        &self,
        run: &ClaimedRun,
        streamed: StreamEnd,
        exec_id: &str,
        sandbox: &Sandbox,
        policy: &SandboxPolicy,
        log: &mut RunLog,
    ) -> Result<Result<StopReason, StopReason>, RunError> {
        if !matches!(streamed, StreamEnd::Exited) {
            self.sandboxes.kill(sandbox).await;
        }
        let early = match streamed {
            StreamEnd::Exited => {
                let code = self.sandboxes.exit_code(exec_id).await?;
                return Ok(Ok(if code == 0 {
                    StopReason::Completed
                } else if self.sandboxes.oom_killed(sandbox).await? {
                    StopReason::OomKilled { limit_bytes: policy.memory_bytes }
                } else {
                    StopReason::AgentFailed { exit_code: code }
                }));
            }
            StreamEnd::Stopped(interrupt) => return Err(RunError::Interrupted(interrupt)),
            StreamEnd::SandboxStopped(sandbox::Stopped { oom_killed: true, .. }) => {
                log.line(&format!(
                    "paddock: the sandbox reached its memory cap of {} B and was stopped by the kernel",
                    policy.memory_bytes
                ));
                StopReason::OomKilled { limit_bytes: policy.memory_bytes }
            }
            StreamEnd::SandboxStopped(sandbox::Stopped { exit_code, .. }) => {
                let code = exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                log.line(&format!("paddock: the sandbox stopped under the agent (exit code {code})"));
                self.flush_tail_end(run.id, log).await;
                return Err(RunError::Retry(format!("the sandbox stopped under the agent (exit code {code})")));
            }
            StreamEnd::TimedOut => {
                log.line(&format!("paddock: wall-clock cap of {} s reached; sandbox killed", policy.timeout_seconds));
                StopReason::Timeout { limit_seconds: policy.timeout_seconds }
            }
            StreamEnd::Cancelled => {
                let by = match self.queue.get(run.id).await {
                    Ok(Some(record)) => record.cancelled_by.unwrap_or_default(),
                    _ => String::new(),
                };
                log.line(&format!("paddock: cancelled by {by}; sandbox killed"));
                StopReason::Cancelled { by }
            }
        };
        self.flush_tail_end(run.id, log).await;
        Ok(Err(early))
    }

    /// Copies the agent's output into the log until the command exits, the
    /// wall clock runs out, someone cancels, the lease is lost or the
    /// shutdown grace period ends.
    async fn stream_output(
        &self,
        claimed: &ClaimedRun,
        session: &Session,
        exec: &mut Exec,
        log: &mut RunLog,
        deadline: Instant,
        lease: &LeaseGuard,
    ) -> StreamEnd {
        let run = claimed.id;
        let stopped = self.sandboxes.stopped(session.sandbox());
        tokio::pin!(stopped);
        let mut flush = tokio::time::interval(Duration::from_millis(500));
        let mut audit = tokio::time::interval(AUDIT_EVERY);
        audit.tick().await;
        loop {
            tokio::select! {
                chunk = exec.output.next() => match chunk {
                    Some(Ok((stream, bytes))) => log.output(stream, &bytes),
                    Some(Err(error)) => {
                        log.line(&format!("paddock: output stream broke: {error}"));
                        return StreamEnd::Exited;
                    }
                    None => return StreamEnd::Exited,
                },
                how = &mut stopped => return StreamEnd::SandboxStopped(how),
                _ = flush.tick() => {
                    self.sandboxes.rank_for_oom(session.sandbox());
                    self.flush_tail(run, log).await
                }
                _ = audit.tick() => self.audit_progress(claimed, session, log).await,
                _ = tokio::time::sleep_until(deadline.into()) => return StreamEnd::TimedOut,
                _ = lease.lost().cancelled() => return StreamEnd::Stopped(Interrupt::LeaseLost),
                _ = lease.cancel_requested().cancelled() => return StreamEnd::Cancelled,
                _ = self.grace_over.cancelled() => return StreamEnd::Stopped(Interrupt::Shutdown),
            }
        }
    }

    /// Writes to the trail what the run did since the last time (commands
    /// it reported, egress decisions, model calls), so that an attempt whose
    /// worker dies still leaves them. When the trail cannot take them now,
    /// the run's end writes them (and stops the run if it still cannot).
    async fn audit_progress(&self, run: &ClaimedRun, session: &Session, log: &mut RunLog) {
        let egress = session.proxy().log.records();
        let egress = &egress[..egress.len().min(sandbox::egress::MAX_EGRESS_RECORDS)];
        let from = log.audited;
        let new_calls = session.calls_since(from.calls).await;
        let commands: Vec<(usize, String)> = log
            .commands
            .iter()
            .enumerate()
            .skip(from.commands)
            .map(|(i, command)| (i + 1, log.redact(command)))
            .collect();
        let new_egress = &egress[from.egress.min(egress.len())..];
        if commands.is_empty() && new_egress.is_empty() && new_calls.is_empty() {
            return;
        }
        let events = crate::audit_events::activity(
            run,
            &self.worker,
            commands.iter().map(|(i, c)| (*i, c)),
            new_egress,
            &new_calls,
        );
        match self.record_audit(&events).await {
            Ok(()) => {
                log.audited = crate::audit_events::Audited {
                    commands: from.commands + commands.len(),
                    egress: egress.len(),
                    calls: from.calls + new_calls.len(),
                };
            }
            Err(error) => tracing::warn!(run_id = %run.id, %error, "the run's activity waits for the trail"),
        }
    }

    /// Sends what the Redis tail of the log has not seen (whole lines).
    async fn flush_tail(&self, run: RunId, log: &mut RunLog) {
        let pending = log.take_pending();
        self.append_tail(run, &pending).await;
    }

    /// Sends the rest of the tail, at the end of the agent's output.
    async fn flush_tail_end(&self, run: RunId, log: &mut RunLog) {
        let pending = log.take_all_pending();
        self.append_tail(run, &pending).await;
    }

    async fn append_tail(&self, run: RunId, pending: &[u8]) {
        if pending.is_empty() {
            return;
        }
        if let Err(error) = self.queue.append_log(run, pending).await {
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

    /// Feeds the agent's events file to the log's event reader; a file that
    /// cannot be read leaves a line saying so (the run goes on).
    async fn read_events_file(&self, sandbox: &Sandbox, path: &str, deadline: Instant, log: &mut RunLog) {
        // The path is checked at configuration (no quote can be in it).
        let script = format!("test ! -e '{path}' || head -c {MAX_EVENTS_FILE} -- '{path}'");
        match self.capture(sandbox, script, deadline, MAX_EVENTS_FILE).await {
            Ok(bytes) => log.events_file(&String::from_utf8_lossy(&bytes)),
            Err(e) => log.line(&format!("paddock: the agent's events file {path} could not be read: {e}")),
        }
    }

    /// The output of `script` run in the sandbox, at most `max_bytes`;
    /// fails unless it exits 0.
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
                    let (_, chunk) = chunk?;
                    if out.len() + chunk.len() > max_bytes {
                        return Err(SandboxError::OverLimit { what: "the diff", limit: max_bytes as u64 });
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
}
