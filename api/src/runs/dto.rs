//! Wire format of `/v1/runs`. Domain types stay in `common`; these are what
//! clients see and what the OpenAPI document describes.

use common::{Priority, RunRecord, RunState, StopReason};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

/// The task the agent works on, usually an issue.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    /// One line, like an issue title.
    #[schema(example = "Fix the typo in README")]
    pub title: String,
    /// Details, like an issue body (Markdown).
    #[serde(default)]
    pub body: String,
}

/// A request for an agent run.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// `owner/name` of the repository.
    #[schema(example = "acme/widgets")]
    pub repository: String,
    /// Branch or tag the agent starts from.
    #[schema(example = "main")]
    pub base_ref: String,
    pub task: TaskInput,
    /// Agent profile configured on the workers; `default` when omitted.
    #[serde(default)]
    pub agent_profile: Option<String>,
    /// Optional: the run's tenant is always the tenant owning `repository`;
    /// naming another is refused (403 `wrong-tenant`).
    #[serde(default)]
    #[schema(example = "payments")]
    pub tenant: Option<String>,
    /// Priority band; `normal` when omitted. Higher bands are always served first.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The repository's issue the task comes from: the pull request links it.
    #[serde(default)]
    #[schema(example = 42)]
    pub issue: Option<u64>,
    /// The person a service account requests the run for (required from
    /// service accounts, refused from people, who act for themselves).
    #[serde(default)]
    #[schema(example = "alice@example.com")]
    pub on_behalf_of: Option<String>,
}

/// The answer to an accepted run request (and to a cancel).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "01m8fd2cj1x31jpkk0spht2y3j", "state": "queued", "url": "/v1/runs/01m8fd2cj1x31jpkk0spht2y3j"}))]
pub struct RunAccepted {
    pub id: String,
    pub state: RunState,
    /// Where to follow the run.
    pub url: String,
}

/// A run as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub state: RunState,
    pub tenant: String,
    pub priority: Priority,
    pub repository: String,
    pub base_ref: String,
    pub task: TaskView,
    pub agent_profile: String,
    /// The person the run is tied to.
    pub requested_by: String,
    /// The service account or integration that requested it for them.
    pub via: Option<String>,
    /// The person whose credential asked for it, when not `requested_by`
    /// (a service account's owner, or `bootstrap-admin`).
    pub submitted_by: Option<String>,
    /// Attempts started so far (a crash re-run counts).
    pub attempt: u32,
    pub max_attempts: u32,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub worker: Option<String>,
    pub stop_reason: Option<StopReason>,
    /// The last infrastructure error that sent the run back to the queue.
    pub last_error: Option<String>,
    /// S3 keys of the run's artifacts (logs, diff, summary), once finished.
    pub artifacts: Vec<String>,
    /// Who cancelled the run, if anyone did.
    pub cancelled_by: Option<String>,
    /// Who approved the run, when its policy asked for approval.
    pub approved_by: Option<String>,
    /// The sandbox policy the run executes under, resolved when it was accepted.
    pub policy: Option<common::policy::SandboxPolicy>,
    /// The issue the run works on, if any.
    pub issue: Option<u64>,
    /// The run whose pull request this follow-up continues.
    #[schema(example = "01m8fd2cj1x31jpkk0spht2y3j")]
    pub parent_run: Option<String>,
    /// A follow-up's pull request, branch and what asked for it.
    pub follow_up: Option<common::FollowUp>,
    /// What the run did: models, credentials granted, commands, files
    /// changed, branch and pull request. Present once it finished.
    pub facts: Option<common::RunFacts>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub title: String,
    pub body: String,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs in this state.
    pub state: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
}

fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        Self {
            id: r.id.to_string(),
            state: r.state,
            tenant: r.spec.tenant,
            priority: r.spec.priority,
            repository: r.spec.repository.to_string(),
            base_ref: r.spec.base_ref,
            task: TaskView { title: r.spec.task_title, body: r.spec.task_body },
            agent_profile: r.spec.agent_profile.as_str().to_owned(),
            requested_by: r.spec.requested_by,
            via: r.spec.via,
            submitted_by: r.spec.submitted_by,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            created_at: rfc3339(r.created_at_ms),
            started_at: r.started_at_ms.map(rfc3339),
            finished_at: r.finished_at_ms.map(rfc3339),
            worker: r.worker,
            stop_reason: r.stop_reason,
            last_error: r.last_error,
            artifacts: r.artifacts,
            cancelled_by: r.cancelled_by,
            approved_by: r.approved_by,
            policy: r.spec.policy,
            issue: r.spec.issue,
            parent_run: r.spec.parent_run.map(|p| p.to_string()),
            follow_up: r.spec.follow_up,
            facts: r.facts,
        }
    }
}
