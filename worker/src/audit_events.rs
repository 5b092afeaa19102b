//! The audit events a worker writes about a run: tied to the person who
//! requested it, acting through this worker.

use common::audit::{Actor, AuditEvent, ObjectRef};
use common::{CredentialGrant, RunFacts, StopReason};
use serde_json::json;

use gateway::CallRecord;
use sandbox::egress::EgressRecord;
use store::ClaimedRun;

/// An event about `run` by `worker` on behalf of the run's requester.
pub fn run_event(run: &ClaimedRun, worker: &str, action: &str) -> AuditEvent {
    let actor = Actor {
        principal: run.spec.requested_by.clone(),
        method: "worker".to_owned(),
        via: Some(format!("worker:{worker}")),
    };
    let mut object = ObjectRef::new("run", run.id.to_string());
    object.tenant = Some(run.spec.tenant.clone());
    object.repository = Some(run.spec.repository.to_string());
    AuditEvent::new(action, actor, object)
}

fn with_after(mut event: AuditEvent, after: serde_json::Value) -> AuditEvent {
    event.after = Some(after);
    event
}

/// Claimed, and the sandbox it will get: effective limits and egress.
pub fn claimed(run: &ClaimedRun, worker: &str, policy: &common::policy::SandboxPolicy) -> Vec<AuditEvent> {
    vec![
        with_after(run_event(run, worker, "run.claim"), json!({"attempt": run.attempt, "epoch": run.epoch})),
        with_after(run_event(run, worker, "sandbox.create"), json!({"policy": policy})),
    ]
}

/// What the agent did: each command, egress decision and model call, and
/// the files it changed. Written before anything is pushed; `from` says
/// what was written while the run went (those are not written again).
pub fn agent_activity(
    run: &ClaimedRun,
    worker: &str,
    facts: &RunFacts,
    egress: &[EgressRecord],
    calls: &[CallRecord],
    from: &Audited,
) -> Vec<AuditEvent> {
    // The agent's own command (index 0), then what it reported from `from`.
    let commands = facts.commands.iter().enumerate().filter(|(i, _)| *i == 0 || *i > from.commands);
    let mut events = activity(
        run,
        worker,
        commands,
        egress.get(from.egress..).unwrap_or_default(),
        calls.get(from.calls..).unwrap_or_default(),
    );
    if !facts.files_changed.is_empty() {
        let files = with_after(run_event(run, worker, "files.change"), json!({"files": facts.files_changed}));
        events.push(files.after_the_fact());
    }
    events
}

/// How much of a run's activity is in the trail already: reported
/// commands, egress decisions and model calls, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audited {
    pub commands: usize,
    pub egress: usize,
    pub calls: usize,
}

/// The events of some commands (with their index in the run's record),
/// egress decisions and model calls.
pub fn activity<'a>(
    run: &ClaimedRun,
    worker: &str,
    commands: impl Iterator<Item = (usize, &'a String)>,
    egress: &[EgressRecord],
    calls: &[CallRecord],
) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for (i, command) in commands {
        events.push(with_after(run_event(run, worker, "command.run"), json!({"index": i, "command": command})));
    }
    for decision in egress {
        let action = if decision.allowed { "egress.allow" } else { "egress.deny" };
        events.push(with_after(run_event(run, worker, action), json!(decision)));
    }
    for call in calls {
        let metadata = json!({
            "request_id": call.request_id, "provider": call.provider, "model": call.model, "status": call.status,
            "refusal": call.refusal, "tokens_in": call.tokens_in, "tokens_out": call.tokens_out,
            "cost_usd": call.cost_usd, "latency_ms": call.latency_ms,
        });
        events.push(with_after(run_event(run, worker, "model.call"), metadata));
    }
    events.into_iter().map(AuditEvent::after_the_fact).collect()
}

/// What publishing did and how the run ended: credentials (fingerprints,
/// granted and revoked), the branch, the pull request, the stop reason.
pub fn outcome(run: &ClaimedRun, worker: &str, facts: &RunFacts, reason: &StopReason) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for grant in &facts.credentials {
        events.push(credential(run, worker, "credential.grant", grant));
        if grant.revoked_at_ms.is_some() {
            events.push(credential(run, worker, "credential.revoke", grant));
        }
    }
    if let Some(branch) = &facts.branch {
        // Where it was pushed: the repository, or its fork.
        let fork = facts.pull_request.as_ref().and_then(|p| p.head_repository.as_deref());
        let repository = fork.map_or_else(|| run.spec.repository.to_string(), str::to_owned);
        let pushed = json!({"branch": branch, "repository": repository, "commit": facts.pushed_commit});
        events.push(with_after(run_event(run, worker, "branch.push"), pushed));
    }
    if let Some(pull) = &facts.pull_request {
        match &run.spec.follow_up {
            None => events.push(with_after(run_event(run, worker, "pull_request.open"), json!(pull))),
            Some(follow_up) => {
                let update = json!({"pull_request": pull, "parent_run": run.spec.parent_run,
                    "trigger": follow_up.trigger, "answered_comments": facts.answered_comments});
                events.push(with_after(run_event(run, worker, "pull_request.follow_up"), update));
            }
        }
    }
    events.push(with_after(run_event(run, worker, "run.stop"), json!({"reason": reason})));
    events.into_iter().map(AuditEvent::after_the_fact).collect()
}

fn credential(run: &ClaimedRun, worker: &str, action: &str, grant: &CredentialGrant) -> AuditEvent {
    with_after(run_event(run, worker, action), json!(grant))
}
