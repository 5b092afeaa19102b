//! `GET /v1/runs/{id}/record`: the facts an auditor asks about one run, in
//! one document: who requested it (and through what), which issue and
//! repository, which models and providers, which credentials were granted,
//! which commands ran, which files changed, where the pull request was
//! opened, and why the run stopped; with the sandbox it ran in, its egress
//! decisions and its evidence in object storage. Built from the run record
//! while Redis keeps it, and from the run's typed `summary.json`
//! (`common::records::RunSummary`) afterwards.

use actix_web::{get, web};
use common::policy::SandboxPolicy;
use common::records::{EgressRecord, RunSummary};
use common::{
    AgentIdentity, ArtifactKind, CommitSignature, CredentialGrant, ModelUse, PullRequestRef, RunFacts, RunId,
    RunRecord, RunState, StopReason,
};
use objstore::ObjectStore;
use serde::Serialize;
use store::identity::AuditFilter;
use utoipa::ToSchema;

use crate::auth::{Scoped, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// The facts of one run, its sandbox and its evidence.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunRecordView {
    #[schema(example = "01m8fd2cj1x31jpkk0spht2y3j")]
    pub run: String,
    /// While Redis keeps the run; `null` once only its summary is left.
    pub state: Option<RunState>,
    pub requested: Requested,
    pub issue_and_repository: IssueAndRepository,
    /// The agent and version that ran, as its image names them.
    pub agent: Option<AgentIdentity>,
    pub models: Vec<ModelUse>,
    pub credentials: Vec<CredentialGrant>,
    /// The agent's command, then each command it reported running.
    pub commands: Vec<String>,
    pub files_changed: Vec<String>,
    pub pull_request: PullRequestView,
    pub stop: Stop,
    pub sandbox: SandboxView,
    pub evidence: Evidence,
}

/// Who asked for the run, through what, and who approved it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Requested {
    #[schema(example = "alice@example.com")]
    pub by: String,
    #[schema(example = "github:alice")]
    pub via: Option<String>,
    pub approved_by: Option<String>,
    pub requested_at_ms: Option<u64>,
    /// The audit event of the request, while the index keeps it.
    pub request_event: Option<RequestEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestEvent {
    pub id: String,
    pub time_ms: u64,
    pub source_ip: Option<String>,
    /// How the requester authenticated (`oidc`, `service-account`, `github-webhook`, ...).
    pub method: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssueAndRepository {
    pub tenant: String,
    pub repository: String,
    pub issue: Option<u64>,
    pub base_ref: String,
    pub base_commit: Option<String>,
    /// The run whose pull request this follow-up continues.
    #[schema(example = "01m8fd2cj1x31jpkk0spht2y3j")]
    pub parent_run: Option<String>,
    /// A follow-up's pull request, branch and what asked for it.
    pub follow_up: Option<common::FollowUp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PullRequestView {
    pub branch: Option<String>,
    pub pull_request: Option<PullRequestRef>,
    /// The key Paddock's commit was signed with, when it was.
    pub commit_signature: Option<CommitSignature>,
    /// The commit Paddock pushed.
    pub pushed_commit: Option<String>,
    /// The review comments a follow-up replied to.
    pub answered_comments: Vec<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stop {
    pub reason: Option<StopReason>,
    pub cancelled_by: Option<String>,
    pub finished_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxView {
    /// The policy the run was accepted (and ran) under.
    pub policy: Option<SandboxPolicy>,
    /// Every request the sandbox made through its egress proxy.
    pub egress: Vec<EgressRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Evidence {
    /// The run's objects in the bucket.
    pub artifacts: Vec<String>,
    /// Audit events about the run in the index.
    pub audit_events: usize,
}

/// The facts of a run, its sandbox and its evidence.
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "Run id", example = "01m8fd2cj1x31jpkk0spht2y3j")),
    responses((status = 200, body = RunRecordView)),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/runs/{id}/record")]
pub async fn run_record(
    caller: Scoped<need::AuditRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<RunRecordView>, Problem> {
    let id: RunId = id.parse()?;
    let summary_key = id.artifact_key(ArtifactKind::Summary);
    let summary: Option<RunSummary> =
        state.store.get(&summary_key).await?.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let record = state.queue.get(id).await?;
    let (tenant, repository) = match (&record, &summary) {
        (Some(r), _) => (r.spec.tenant.clone(), r.spec.repository.to_string()),
        (None, Some(s)) => (s.tenant.clone(), s.repository.clone()),
        (None, None) => return Err(Problem::not_found(format!("run {id} does not exist"))),
    };
    caller.on(&tenant, &repository)?;
    let filter = AuditFilter { object_id: Some(id.to_string()), ..Default::default() };
    let events = state.identity().audit_events(&filter, 100).await?;
    let request_event = events.iter().find(|e| e.action == "run.request").map(|e| RequestEvent {
        id: e.id.clone(),
        time_ms: e.time_ms,
        source_ip: e.source_ip.clone(),
        method: e.actor.method.clone(),
    });
    let view = match (record, summary) {
        (Some(record), summary) => from_record(id, record, summary, request_event, events.len()),
        (None, Some(summary)) => from_summary(id, summary, request_event, events.len()),
        (None, None) => return Err(Problem::not_found(format!("run {id} does not exist"))),
    };
    Ok(web::Json(view))
}

/// A live run: the record's facts, the summary's where the record has none.
fn from_record(
    id: RunId,
    r: RunRecord,
    summary: Option<RunSummary>,
    request_event: Option<RequestEvent>,
    audit_events: usize,
) -> RunRecordView {
    let facts = r.facts.unwrap_or_else(|| facts_of(summary.as_ref()));
    let egress = summary.map(|s| s.egress).unwrap_or_default();
    RunRecordView {
        run: id.to_string(),
        state: Some(r.state),
        requested: Requested {
            by: r.spec.requested_by,
            via: r.spec.via,
            approved_by: r.approved_by,
            requested_at_ms: Some(r.created_at_ms),
            request_event,
        },
        issue_and_repository: IssueAndRepository {
            tenant: r.spec.tenant,
            repository: r.spec.repository.to_string(),
            issue: r.spec.issue,
            base_ref: r.spec.base_ref,
            base_commit: facts.base_commit,
            parent_run: r.spec.parent_run.map(|p| p.to_string()),
            follow_up: r.spec.follow_up,
        },
        agent: facts.agent,
        models: facts.models,
        credentials: facts.credentials,
        commands: facts.commands,
        files_changed: facts.files_changed,
        pull_request: PullRequestView {
            branch: facts.branch,
            pull_request: facts.pull_request,
            commit_signature: facts.commit_signature,
            pushed_commit: facts.pushed_commit,
            answered_comments: facts.answered_comments,
        },
        stop: Stop { reason: r.stop_reason, cancelled_by: r.cancelled_by, finished_at_ms: r.finished_at_ms },
        sandbox: SandboxView { policy: r.spec.policy, egress },
        evidence: Evidence { artifacts: r.artifacts, audit_events },
    }
}

/// A run Redis has forgotten: its summary is all there is.
fn from_summary(id: RunId, s: RunSummary, request_event: Option<RequestEvent>, audit_events: usize) -> RunRecordView {
    RunRecordView {
        run: id.to_string(),
        state: None,
        requested: Requested {
            by: s.requested_by,
            via: s.via,
            approved_by: None,
            requested_at_ms: None,
            request_event,
        },
        issue_and_repository: IssueAndRepository {
            tenant: s.tenant,
            repository: s.repository,
            issue: s.issue,
            base_ref: s.base_ref,
            base_commit: s.base_commit,
            parent_run: s.parent_run.map(|p| p.to_string()),
            follow_up: s.follow_up,
        },
        agent: s.agent,
        models: s.models,
        credentials: s.credentials,
        commands: s.commands,
        files_changed: s.files_changed,
        pull_request: PullRequestView {
            branch: s.branch,
            pull_request: s.pull_request,
            commit_signature: s.commit_signature,
            pushed_commit: s.pushed_commit,
            answered_comments: s.answered_comments,
        },
        stop: Stop { reason: Some(s.stop_reason), cancelled_by: None, finished_at_ms: None },
        sandbox: SandboxView { policy: Some(s.policy), egress: s.egress },
        evidence: Evidence { artifacts: s.artifacts, audit_events },
    }
}

/// The record's facts as the summary tells them.
fn facts_of(summary: Option<&RunSummary>) -> RunFacts {
    let Some(s) = summary else { return RunFacts::default() };
    RunFacts {
        base_commit: s.base_commit.clone(),
        agent: s.agent.clone(),
        models: s.models.clone(),
        credentials: s.credentials.clone(),
        commands: s.commands.clone(),
        files_changed: s.files_changed.clone(),
        branch: s.branch.clone(),
        commit_signature: s.commit_signature.clone(),
        pull_request: s.pull_request.clone(),
        pushed_commit: s.pushed_commit.clone(),
        answered_comments: s.answered_comments.clone(),
        usage: s.usage,
    }
}
