//! The run: what was asked for ([`RunSpec`]), where it is ([`RunState`]) and
//! why it stopped ([`StopReason`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A run's identifier: a ULID, so ids sort by creation time. Written in
/// lowercase everywhere (JSON, Redis, S3 keys, container names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RunId(ulid::Ulid);

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.to_string()
    }
}

impl TryFrom<String> for RunId {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl RunId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// When the id was made (the run requested), ms since the epoch.
    pub fn created_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }

    /// The S3 key prefix under which every artifact of this run lives.
    pub fn artifact_prefix(&self) -> String {
        format!("runs/{self}/")
    }

    pub fn artifact_key(&self, kind: ArtifactKind) -> String {
        format!("runs/{self}/{}", kind.file_name())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lowercase: run ids appear in container, network and branch names.
        write!(f, "{}", self.0.to_string().to_lowercase())
    }
}

impl FromStr for RunId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ValidationError::new("id", "is not a run id (26 characters, ULID)");
        // A first character above 7 would overflow 128 bits: no ULID has one.
        if !s.starts_with(|c: char| ('0'..='7').contains(&c)) {
            return Err(invalid());
        }
        ulid::Ulid::from_string(&s.to_uppercase()).map(Self).map_err(|_| invalid())
    }
}

/// Where a run is in its life.
///
/// ```text
/// queued ──claim──► running ──finish──► succeeded | failed
///   │  ▲               │  ╲
///   │  └─ reap/retry ◄─┘   ╲─ cancel ─► cancelling ─ finish/reap ─► cancelled
///   └─ cancel ─► cancelled      (delayed first when a retry backs off)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a person with `tools.approve` (its policy asks for it).
    AwaitingApproval,
    /// A follow-up waiting for the run of the same pull request ahead of it
    /// to end (runs of one pull request never run at once).
    Waiting,
    Queued,
    Delayed,
    Running,
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 9] = [
        RunState::AwaitingApproval,
        RunState::Waiting,
        RunState::Queued,
        RunState::Delayed,
        RunState::Running,
        RunState::Cancelling,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Waiting => "waiting",
            RunState::Queued => "queued",
            RunState::Delayed => "delayed",
            RunState::Running => "running",
            RunState::Cancelling => "cancelling",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            ValidationError::new(
                "state",
                "must be one of awaiting_approval, waiting, queued, delayed, running, cancelling, succeeded, failed, cancelled",
            )
        })
    }
}

/// Why a run stopped. Stored on the run record and in its summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// The agent command exited 0.
    Completed,
    /// The agent command exited with a non-zero code.
    AgentFailed { exit_code: i64 },
    /// The run hit its wall-clock cap and its sandbox was killed.
    Timeout { limit_seconds: u64 },
    /// The kernel killed the agent for exceeding the sandbox memory cap.
    OomKilled { limit_bytes: i64 },
    /// The repository or base ref could not be checked out (it does not
    /// exist, or the worker may not read it); retrying cannot help.
    CheckoutFailed { message: String },
    /// Someone cancelled the run.
    Cancelled { by: String },
    /// A newer trigger on the same pull request (run `by`) replaced this
    /// follow-up before it started; the newer one carries the whole
    /// conversation.
    Superseded { by: String },
    /// Someone pushed to the pull request's branch after the follow-up
    /// checked it out: nothing was pushed (Paddock never rebases or
    /// force-pushes a branch a person touched).
    BranchMoved { branch: String },
    /// Paddock's own infrastructure failed (Docker, git, S3, lost lease) and
    /// the attempts were used up.
    InfrastructureError { message: String },
    /// The branch Paddock would push is the default branch or protected
    /// (branch protection or a ruleset): nothing was pushed.
    ProtectedBranchRefused { branch: String },
    /// The forge refused to grant a credential for the repository (the App
    /// is not installed there, or lacks a permission).
    CredentialError { message: String },
    /// The run's audit events could not be stored: it stopped, its
    /// credentials were revoked and nothing was pushed.
    AuditUnavailable { message: String },
    /// What the run produced went over one of its bounds (`what`, at most
    /// `limit`): it stopped, nothing was pushed, and it is not retried.
    LimitExceeded { what: String, limit: u64 },
    /// The workers running it stopped (died, or lost the host) `count`
    /// times: it is not tried again, since the run may be what kills them.
    WorkersLost { count: u32 },
}

impl StopReason {
    /// The reason's `kind`, as serialized (a metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::AgentFailed { .. } => "agent_failed",
            StopReason::Timeout { .. } => "timeout",
            StopReason::OomKilled { .. } => "oom_killed",
            StopReason::CheckoutFailed { .. } => "checkout_failed",
            StopReason::Cancelled { .. } => "cancelled",
            StopReason::Superseded { .. } => "superseded",
            StopReason::BranchMoved { .. } => "branch_moved",
            StopReason::InfrastructureError { .. } => "infrastructure_error",
            StopReason::ProtectedBranchRefused { .. } => "protected_branch_refused",
            StopReason::CredentialError { .. } => "credential_error",
            StopReason::AuditUnavailable { .. } => "audit_unavailable",
            StopReason::LimitExceeded { .. } => "limit_exceeded",
            StopReason::WorkersLost { .. } => "workers_lost",
        }
    }

    pub fn final_state(&self) -> RunState {
        match self {
            StopReason::Completed => RunState::Succeeded,
            StopReason::Cancelled { .. } | StopReason::Superseded { .. } => RunState::Cancelled,
            _ => RunState::Failed,
        }
    }
}

/// Priority band. Higher bands are always served first; within a band,
/// tenants share by weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// The artifacts every finished run leaves in object storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Logs,
    Diff,
    Summary,
    /// Model calls through the gateway, one JSON object a line; only for
    /// runs that made any.
    Transcript,
    /// Each model call's metadata (provider, model, tokens, cost, latency),
    /// one JSON object a line; only for runs that made any.
    ModelCalls,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 5] = [
        ArtifactKind::Logs,
        ArtifactKind::Diff,
        ArtifactKind::Summary,
        ArtifactKind::Transcript,
        ArtifactKind::ModelCalls,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            ArtifactKind::Logs => "logs.txt",
            ArtifactKind::Diff => "diff.patch",
            ArtifactKind::Summary => "summary.json",
            ArtifactKind::Transcript => "transcript.jsonl",
            ArtifactKind::ModelCalls => "model-calls.jsonl",
        }
    }
}

/// A repository as `owner/name`, the form forges use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName {
    owner: String,
    name: String,
}

impl RepoName {
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for RepoName {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ValidationError::new("repository", "must be `owner/name` (letters, digits, `-`, `_`, `.`)");
        let (owner, name) = s.split_once('/').ok_or_else(invalid)?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && !p.starts_with('.')
                && !p.starts_with('-')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !part_ok(owner) || !part_ok(name) || name.ends_with(".git") {
            return Err(invalid());
        }
        Ok(Self { owner: owner.to_owned(), name: name.to_owned() })
    }
}

impl TryFrom<String> for RepoName {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<RepoName> for String {
    fn from(value: RepoName) -> Self {
        value.to_string()
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// The name of an agent profile from the worker's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentProfile(String);

impl AgentProfile {
    pub const DEFAULT: &'static str = "default";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AgentProfile {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl FromStr for AgentProfile {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new("agent_profile", "must be 1-64 characters of a-z, 0-9, `-`, `_`"))
        }
    }
}

impl TryFrom<String> for AgentProfile {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<AgentProfile> for String {
    fn from(value: AgentProfile) -> Self {
        value.0
    }
}

/// What a requester asked for. Validated on construction, so a `RunSpec`
/// in hand is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub tenant: String,
    #[serde(default)]
    pub priority: Priority,
    pub repository: RepoName,
    pub base_ref: String,
    pub task_title: String,
    pub task_body: String,
    pub agent_profile: AgentProfile,
    /// The person the run is tied to.
    pub requested_by: String,
    /// The service account or integration that asked for it on their
    /// behalf (`service-account:portal`, `github:octocat`).
    #[serde(default)]
    pub via: Option<String>,
    /// The sandbox policy resolved when the run was accepted; runs from
    /// before policies existed get the worker's defaults.
    #[serde(default)]
    pub policy: Option<crate::policy::SandboxPolicy>,
    /// The issue the run works on, when it came from one.
    #[serde(default)]
    pub issue: Option<u64>,
    /// The run whose pull request this follow-up continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run: Option<RunId>,
    /// For a follow-up: the pull request, its branch and what to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<FollowUp>,
    /// The person whose credential asked for the run, when that is not
    /// `requested_by`: a service account's owner, or the break-glass
    /// principal. Neither of them may approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The span of the request that made the run (W3C `traceparent`),
    /// when spans are exported: the worker's spans join its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl RunSpec {
    pub const MAX_TITLE: usize = 256;
    pub const MAX_BODY: usize = 64 * 1024;
    /// Issue numbers are positive and, on every forge, fit 32 bits.
    pub const MAX_ISSUE: u64 = u32::MAX as u64;

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_ref(&self.base_ref)?;
        validate_tenant(&self.tenant)?;
        if self.task_title.trim().is_empty() {
            return Err(ValidationError::new("task.title", "must not be empty"));
        }
        if self.task_title.chars().count() > Self::MAX_TITLE {
            return Err(ValidationError::new("task.title", "must be at most 256 characters"));
        }
        if self.task_body.chars().count() > Self::MAX_BODY {
            return Err(ValidationError::new("task.body", "must be at most 65536 characters"));
        }
        if self.issue.is_some_and(|n| !(1..=Self::MAX_ISSUE).contains(&n)) {
            return Err(ValidationError::new("issue", "must be 1 to 4294967295"));
        }
        if let Some(follow_up) = &self.follow_up {
            // A follow-up pushes only to a branch Paddock opened.
            if !follow_up.branch.starts_with("paddock/") || follow_up.branch != self.base_ref {
                return Err(ValidationError::new("follow_up.branch", "must be the run's base_ref, under paddock/"));
            }
        }
        Ok(())
    }
}

/// What a follow-up run continues: the pull request Paddock opened, whose
/// branch (`base_ref` of the run) it checks out at its head and pushes to,
/// fast-forward only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FollowUp {
    pub pull_request: u64,
    /// The pull request's branch (`paddock/...`), which the run checks out.
    pub branch: String,
    /// The pull request's base branch.
    pub base: String,
    /// The branch's head when the trigger came.
    pub head_sha: String,
    /// What asked for it: `review:<id>`, `review_comment:<id>` or
    /// `issue_comment:<id>`.
    pub trigger: String,
    /// The GitHub login that asked.
    pub requested_by_login: String,
    /// Review comments the run answers with a reply each.
    #[serde(default)]
    pub answer_review_comments: Vec<u64>,
}

impl FollowUp {
    /// The key of the pull request's lane: its runs never run at once.
    pub fn lane(&self, repository: &RepoName) -> String {
        format!("{}#{}", repository.to_string().to_ascii_lowercase(), self.pull_request)
    }
}

/// A tenant name: 1-64 characters of letters, digits, `-`, `_`.
pub fn validate_tenant(tenant: &str) -> Result<(), ValidationError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("tenant", "must be 1-64 characters of letters, digits, `-`, `_`"))
    }
}

/// A git ref name as `git check-ref-format` would accept it, minus anything
/// that could be read as a command-line option.
pub fn validate_ref(r: &str) -> Result<(), ValidationError> {
    let bad = r.is_empty()
        || r.chars().count() > 200
        || r.starts_with('-')
        || r.starts_with('/')
        || r.ends_with('/')
        || r.ends_with(".lock")
        || r.ends_with('.')
        || r.contains("..")
        || r.contains("@{")
        || r.contains("//")
        || r.chars().any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
    if bad { Err(ValidationError::new("base_ref", "is not a valid git branch or tag name")) } else { Ok(()) }
}

/// The run as stored in Redis and shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub spec: RunSpec,
    pub state: RunState,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Milliseconds since the Unix epoch, from Redis `TIME`.
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub worker: Option<String>,
    pub stop_reason: Option<StopReason>,
    pub artifacts: Vec<String>,
    /// The last infrastructure error that sent the run back to the queue.
    pub last_error: Option<String>,
    /// Who asked to cancel the run, if anyone did.
    pub cancelled_by: Option<String>,
    /// Who approved the run, when its policy asked for approval.
    pub approved_by: Option<String>,
    /// What the run did, once it finished.
    pub facts: Option<RunFacts>,
}

/// What a finished run did: the facts an auditor asks about, beside who
/// requested it (the spec) and why it stopped (the stop reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunFacts {
    /// The commit the run started from.
    pub base_commit: Option<String>,
    /// The agent that ran, as its image's labels name it.
    #[serde(default)]
    pub agent: Option<AgentIdentity>,
    /// Models called through the gateway, with their providers.
    pub models: Vec<ModelUse>,
    /// Credentials granted for the run (fingerprints, never values).
    pub credentials: Vec<CredentialGrant>,
    /// The agent's command, then each command it reported running.
    pub commands: Vec<String>,
    pub files_changed: Vec<String>,
    /// The branch pushed, if any.
    pub branch: Option<String>,
    /// How Paddock's commit on it was signed, if it was.
    #[serde(default)]
    pub commit_signature: Option<CommitSignature>,
    pub pull_request: Option<PullRequestRef>,
    /// The commit Paddock pushed, if it pushed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_commit: Option<String>,
    /// Tokens and cost of every model call the run made.
    #[serde(default)]
    pub usage: Usage,
    /// A follow-up's replies: the review comments it answered (ids of
    /// their threads' first comments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answered_comments: Vec<u64>,
}

/// An agent and its version, read from the labels `io.paddock.agent.name`
/// and `io.paddock.agent.version` of the image it ran in (which
/// `cargo xtask images` sets from `infra/agents/agents.toml`); an image
/// without them is named by the profile, version unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentIdentity {
    pub name: String,
    pub version: Option<String>,
    /// The image it ran in.
    pub image: String,
}

/// The key Paddock's commits were signed with (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitSignature {
    /// `ssh`.
    pub format: String,
    /// The public key's fingerprint as `ssh-keygen -l` prints it
    /// (`SHA256:...`).
    pub fingerprint: String,
    /// What GitHub says of the pushed commit's signature, read back after
    /// the push: `valid` (shown Verified), or its reason otherwise
    /// (`unknown_key` until the public key is added as a signing key of
    /// the commit author's account, `bad_email`, `unsigned`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_verification: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelUse {
    pub provider: String,
    pub model: String,
    pub calls: u32,
    /// What its calls used and cost.
    #[serde(default)]
    pub usage: Usage,
}

/// Tokens and cost of model calls; cost in micro-dollars, so that sums are
/// exact (`cost_usd` is what people read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micro_usd: u64,
}

impl Usage {
    pub fn cost_usd(&self) -> f64 {
        self.cost_micro_usd as f64 / 1_000_000.0
    }

    /// A call's tokens and cost (at its provider's price, in dollars).
    pub fn add(&mut self, tokens_in: u64, tokens_out: u64, cost_usd: f64) {
        self.tokens_in += tokens_in;
        self.tokens_out += tokens_out;
        self.cost_micro_usd += (cost_usd * 1_000_000.0).round().max(0.0) as u64;
    }
}

/// A credential Paddock minted for a run, as recorded: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialGrant {
    /// `github_installation_token`.
    pub kind: String,
    /// What it was for, e.g. `clone, push and pull request`.
    pub purpose: String,
    pub installation_id: u64,
    pub repositories: Vec<String>,
    /// As granted by the forge (not as asked).
    pub permissions: std::collections::BTreeMap<String, String>,
    /// RFC 3339, as the forge stated it.
    pub expires_at: Option<String>,
    /// SHA-256 of the token, base64 (GitHub's `hashed_token` format).
    pub fingerprint: String,
    pub minted_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Where a run's pull request is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullRequestRef {
    pub number: u64,
    pub url: String,
    pub head: String,
    pub base: String,
    pub draft: bool,
    /// The fork the head branch is in (`publish.mode = "fork"`); absent
    /// when the branch is in the repository itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_repository: Option<String>,
}

/// A value a caller supplied that Paddock refuses, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_in_lowercase() {
        let id = RunId::new();
        let text = id.to_string();
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<RunId>(), Ok(id));
        assert!("not-a-run".parse::<RunId>().is_err());
    }

    #[test]
    fn repository_names_are_owner_slash_name() {
        assert!("acme/widgets".parse::<RepoName>().is_ok());
        for bad in ["acme", "/x", "acme/", "a/b/c", "acme/../x", "-x/y", "acme/w.git", "a b/c"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn refs_that_could_be_options_or_ranges_are_refused() {
        for bad in ["", "-b", "a..b", "main.lock", "a b", "x~1", "@{u}", "/main"] {
            assert!(validate_ref(bad).is_err(), "{bad} accepted");
        }
        for good in ["main", "release/1.2", "v1.0.0"] {
            assert!(validate_ref(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn stop_reasons_serialize_with_a_kind_tag() {
        let json = serde_json::to_value(StopReason::AgentFailed { exit_code: 3 }).unwrap_or_default();
        assert_eq!(json, serde_json::json!({"kind": "agent_failed", "exit_code": 3}));
        assert_eq!(StopReason::Completed.final_state(), RunState::Succeeded);
        assert_eq!(StopReason::Timeout { limit_seconds: 1 }.final_state(), RunState::Failed);
    }
}
