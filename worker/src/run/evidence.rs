//! A run's evidence: the facts its record keeps, its summary, and the
//! objects stored under `runs/<id>/` (log, diff, summary, transcript, model
//! calls), every one redacted before it leaves the worker. Assembly is
//! pure; `Runtime::upload` stores the result.

use bytes::Bytes;
use common::policy::SandboxPolicy;
use common::records::RunSummary;
use common::{ArtifactKind, ModelUse, RunFacts, StopReason};
use gateway::{CallRecord, Redactor};
use sandbox::egress::EgressRecord;
use store::ClaimedRun;

use super::Runtime;
use super::error::RunError;
use super::log::RunLog;

/// What an agent's run produced besides its log and diff.
pub(super) struct Facts {
    pub(super) agent: common::AgentIdentity,
    pub(super) phases: Vec<(&'static str, u64)>,
    pub(super) commit: String,
    pub(super) command: String,
    pub(super) files_changed: Vec<String>,
    pub(super) egress: Vec<EgressRecord>,
    pub(super) calls: Vec<CallRecord>,
    pub(super) transcript: Vec<serde_json::Value>,
}

/// One object to store.
pub(super) struct Artifact {
    pub(super) kind: ArtifactKind,
    pub(super) key: String,
    pub(super) body: Bytes,
    pub(super) content_type: &'static str,
}

/// Everything the evidence of a finished run is made from.
pub(super) struct Ended<'a> {
    pub(super) run: &'a ClaimedRun,
    pub(super) worker: &'a str,
    pub(super) image: &'a str,
    pub(super) policy: &'a SandboxPolicy,
    pub(super) reason: &'a StopReason,
    pub(super) record: &'a RunFacts,
    pub(super) facts: Option<&'a Facts>,
    pub(super) log: &'a RunLog,
    pub(super) diff: &'a [u8],
}

/// The record's facts as the agent left them (publishing adds the rest).
pub(super) fn run_facts(facts: Option<&Facts>, log: &RunLog) -> RunFacts {
    let Some(facts) = facts else { return RunFacts::default() };
    RunFacts {
        base_commit: Some(facts.commit.clone()),
        agent: Some(facts.agent.clone()),
        models: models_used(&facts.calls),
        usage: facts.calls.iter().fold(common::Usage::default(), |mut usage, call| {
            usage.add(call.tokens_in, call.tokens_out, call.cost_usd);
            usage
        }),
        commands: commands_run(&facts.command, log, &facts.transcript),
        files_changed: facts.files_changed.clone(),
        ..RunFacts::default()
    }
}

/// The objects of a run, in the order they are stored: log, diff and
/// summary always; transcript and model calls when there are any.
pub(super) fn assemble(ended: &Ended<'_>, redactor: &Redactor) -> Result<Vec<Artifact>, RunError> {
    let facts = ended.facts;
    let transcript = facts.map(|f| transcript_jsonl(redactor, &f.transcript)).unwrap_or_default();
    let model_calls: String = facts
        .map(|f| f.calls.iter().filter_map(|c| serde_json::to_string(c).ok()).map(|l| l + "\n").collect())
        .unwrap_or_default();
    let mut kinds = vec![ArtifactKind::Logs, ArtifactKind::Diff, ArtifactKind::Summary];
    if !transcript.is_empty() {
        kinds.push(ArtifactKind::Transcript);
    }
    if !model_calls.is_empty() {
        kinds.push(ArtifactKind::ModelCalls);
    }
    let keys: Vec<String> = kinds.iter().map(|k| ended.run.id.artifact_key(*k)).collect();
    let summary = serde_json::to_vec_pretty(&summary(ended, &keys))
        .map_err(|e| RunError::Retry(format!("encoding the summary failed: {e}")))?;
    // Logs pass redaction before they reach storage.
    let (log_text, _) = redactor.redact(&String::from_utf8_lossy(&ended.log.data));
    let artifacts = kinds.into_iter().zip(keys).map(|(kind, key)| {
        let (body, content_type) = match kind {
            ArtifactKind::Logs => (Bytes::from(log_text.clone()), "text/plain; charset=utf-8"),
            ArtifactKind::Diff => (Bytes::copy_from_slice(ended.diff), "text/x-diff"),
            ArtifactKind::Summary => (Bytes::from(summary.clone()), "application/json"),
            ArtifactKind::Transcript => (Bytes::from(transcript.clone()), "application/x-ndjson"),
            ArtifactKind::ModelCalls => (Bytes::from(model_calls.clone()), "application/x-ndjson"),
        };
        Artifact { kind, key, body, content_type }
    });
    Ok(artifacts.collect())
}

impl Runtime {
    /// Stores every object; a run without its evidence is not finished, so
    /// a failure is retried.
    pub(super) async fn upload(&self, run: &ClaimedRun, artifacts: &[Artifact]) -> Result<(), RunError> {
        for artifact in artifacts {
            // The sweeper reads the tenant back when Redis has forgotten the run.
            let metadata = [("tenant", run.spec.tenant.as_str()), ("retention-class", artifact.kind.class().as_str())];
            let body = artifact.body.clone();
            self.store
                .put_with_metadata(&artifact.key, body, artifact.content_type, &metadata)
                .await
                .map_err(|e| RunError::retry(&format!("uploading {}", artifact.key), e))?;
        }
        Ok(())
    }
}

/// The run's `summary.json`.
fn summary(ended: &Ended<'_>, keys: &[String]) -> RunSummary {
    let (run, record, facts) = (ended.run, ended.record, ended.facts);
    RunSummary {
        run_id: run.id,
        attempt: run.attempt,
        worker: ended.worker.to_owned(),
        tenant: run.spec.tenant.clone(),
        repository: run.spec.repository.to_string(),
        base_ref: run.spec.base_ref.clone(),
        base_commit: record.base_commit.clone(),
        issue: run.spec.issue,
        agent_profile: run.spec.agent_profile.as_str().to_owned(),
        agent: record.agent.clone(),
        command: facts.map(|f| f.command.clone()),
        requested_by: run.spec.requested_by.clone(),
        via: run.spec.via.clone(),
        image: ended.image.to_owned(),
        policy: ended.policy.clone(),
        stop_reason: ended.reason.clone(),
        files_changed: record.files_changed.clone(),
        models: record.models.clone(),
        commands: record.commands.clone(),
        credentials: record.credentials.clone(),
        branch: record.branch.clone(),
        commit_signature: record.commit_signature.clone(),
        pull_request: record.pull_request.clone(),
        pushed_commit: record.pushed_commit.clone(),
        usage: record.usage,
        parent_run: run.spec.parent_run,
        follow_up: run.spec.follow_up.clone(),
        answered_comments: record.answered_comments.clone(),
        egress: facts.map(|f| f.egress.clone()).unwrap_or_default(),
        model_calls: facts.map(|f| f.calls.clone()).unwrap_or_default(),
        phases_ms: facts.map(|f| f.phases.iter().map(|(p, ms)| ((*p).to_owned(), *ms)).collect()).unwrap_or_default(),
        diff_bytes: ended.diff.len(),
        log_bytes: ended.log.data.len(),
        log_truncated: ended.log.truncated,
        artifacts: keys.to_vec(),
    }
}

/// Models called successfully, with how often.
fn models_used(calls: &[CallRecord]) -> Vec<ModelUse> {
    let mut used: Vec<ModelUse> = Vec::new();
    for call in calls.iter().filter(|c| c.status < 400) {
        let (Some(provider), Some(model)) = (&call.provider, &call.model) else { continue };
        let at = match used.iter().position(|u| &u.provider == provider && &u.model == model) {
            Some(at) => at,
            None => {
                let model =
                    ModelUse { provider: provider.clone(), model: model.clone(), calls: 0, usage: Default::default() };
                used.push(model);
                used.len() - 1
            }
        };
        used[at].calls += 1;
        used[at].usage.add(call.tokens_in, call.tokens_out, call.cost_usd);
    }
    used
}

/// The agent's command, then every command it reported (`paddock-exec:`
/// lines on its stderr, JSON strings) or, when it reports none, every
/// `bash` tool call the model made (from the transcript, when content is
/// kept); past [`super::log::MAX_COMMANDS`], a count of the rest.
fn commands_run(command: &str, log: &RunLog, transcript: &[serde_json::Value]) -> Vec<String> {
    let mut reported = log.commands.clone();
    if reported.is_empty() {
        reported = transcript.iter().flat_map(tool_commands).take(super::log::MAX_COMMANDS).collect();
    }
    if log.commands_dropped > 0 {
        reported.push(format!("[paddock: {} more command(s) not kept]", log.commands_dropped));
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

/// The transcript as JSON Lines: call metadata always, prompt and
/// completion redacted (or omitted, by policy), as the gateway kept them;
/// one more redaction pass with every secret this worker knows.
fn transcript_jsonl(redactor: &Redactor, lines: &[serde_json::Value]) -> String {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    redactor.redact(&text).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::RunId;
    use serde_json::json;

    fn call(provider: &str, model: &str, status: u16) -> CallRecord {
        serde_json::from_value(json!({
            "request_id": "r", "upstream_request_id": null, "run_id": RunId::new(), "tenant": "t", "at_ms": 1,
            "wire": "chat", "provider": provider, "model": model, "status": status, "refusal": null,
            "tokens_in": 1, "tokens_out": 1, "cost_usd": 0.0, "latency_ms": 1, "duration_ms": 1, "redactions": {}
        }))
        .expect("a call record")
    }

    #[test]
    fn reported_commands_come_first_from_the_log_then_from_tool_calls_in_the_transcript() {
        let mut log = RunLog::new(1 << 20);
        log.output(sandbox::OutputStream::Stdout, b"working\npaddock-exec: \"forged\"\n");
        log.expect_reports_signed_with(b"k".to_vec());
        let mac = |n, json| super::super::log::report_mac(b"k", n, json);
        let reports = format!(
            "paddock-exec: {} \"cat README.md\"\npaddock-exec: {} ls -la\n",
            mac(0, "\"cat README.md\""),
            mac(1, "ls -la")
        );
        log.output(sandbox::OutputStream::Stderr, reports.as_bytes());
        assert_eq!(commands_run("agent", &log, &[]), ["agent", "cat README.md", "ls -la"]);
        let openai = json!({"choices": [{"message": {"tool_calls": [
            {"function": {"arguments": "{\"command\": \"pytest -q\"}"}}]}}]});
        let anthropic = json!({"content": [{"type": "text", "text": "hi"},
            {"type": "tool_use", "input": {"command": "git diff"}}]});
        let transcript = [json!({"response": openai.to_string()}), json!({"response": anthropic.to_string()})];
        assert_eq!(commands_run("agent", &RunLog::new(10), &transcript), ["agent", "pytest -q", "git diff"]);
        assert!(tool_commands(&json!({"response": "not json"})).is_empty());
    }

    #[test]
    fn only_successful_calls_count_as_models_used() {
        let calls = [call("openai", "gpt", 200), call("openai", "gpt", 200), call("anthropic", "claude", 429)];
        let used = models_used(&calls);
        assert_eq!(used.len(), 1);
        assert_eq!((used[0].provider.as_str(), used[0].model.as_str(), used[0].calls), ("openai", "gpt", 2));
    }

    #[test]
    fn the_evidence_is_redacted_and_lists_exactly_the_objects_stored() {
        let spec = serde_json::from_value(json!({
            "tenant": "payments", "repository": "acme/api", "base_ref": "main", "task_title": "t",
            "task_body": "b", "requested_by": "dev@example.com", "agent_profile": "default"
        }))
        .expect("a spec");
        let run = ClaimedRun { id: RunId::new(), epoch: 3, attempt: 2, max_attempts: 3, spec, trace: None };
        let secret = "sk-live-0123456789abcdefghij";
        let redactor = Redactor::new(&[secret.to_owned()], b"key");
        let mut log = RunLog::new(1 << 20);
        log.push(format!("using {secret}\n").as_bytes());
        let facts = Facts {
            agent: common::AgentIdentity {
                name: "claude-code".to_owned(),
                version: Some("2.1.332".to_owned()),
                image: "paddock/agent-claude-code:2.1.332-0.4.2".to_owned(),
            },
            phases: vec![("clone", 5)],
            commit: "abc123".to_owned(),
            command: "agent".to_owned(),
            files_changed: vec!["README.md".to_owned()],
            egress: Vec::new(),
            calls: vec![call("openai", "gpt", 200)],
            transcript: Vec::new(),
        };
        let record = run_facts(Some(&facts), &log);
        let policy = common::config::Config::default().default_policy();
        let ended = Ended {
            run: &run,
            worker: "w1",
            image: "paddock-sandbox:1",
            policy: &policy,
            reason: &StopReason::Completed,
            record: &record,
            facts: Some(&facts),
            log: &log,
            diff: b"diff --git a/README.md b/README.md\n",
        };
        let artifacts = assemble(&ended, &redactor).expect("assembled");
        let kinds: Vec<ArtifactKind> = artifacts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [ArtifactKind::Logs, ArtifactKind::Diff, ArtifactKind::Summary, ArtifactKind::ModelCalls]);
        let log_text = String::from_utf8_lossy(&artifacts[0].body);
        assert!(!log_text.contains(secret) && log_text.contains("using "), "{log_text}");
        let summary: serde_json::Value = serde_json::from_slice(&artifacts[2].body).expect("summary JSON");
        let keys: Vec<&str> = artifacts.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(summary["artifacts"], json!(keys));
        assert_eq!(summary["attempt"], 2);
        assert_eq!(summary["base_commit"], "abc123");
        assert_eq!(summary["commands"], json!(["agent"]));
        assert_eq!(summary["agent"]["name"], "claude-code");
        assert_eq!(summary["agent"]["version"], "2.1.332");
        assert_eq!(summary["phases_ms"], json!([["clone", 5]]));
        let typed: RunSummary = serde_json::from_slice(&artifacts[2].body).expect("summary.json reads typed");
        assert_eq!((typed.models.len(), typed.model_calls.len()), (1, 1));
        assert_eq!(typed.stop_reason, StopReason::Completed);
    }
}
