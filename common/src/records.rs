//! Records that more than one crate reads or writes: kept here so the
//! crates that store them and the crates that produce them need not depend
//! on each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RunId;
use crate::retention::RetentionClass;

/// Which events to export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportRequest {
    /// From this instant (ms since the epoch).
    pub since_ms: u64,
    /// Until this instant, exclusive.
    pub until_ms: u64,
    /// Only the events about this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub run: Option<RunId>,
}

impl ExportRequest {
    /// Whether `event` falls in this request.
    pub fn wants(&self, event: &crate::audit::AuditEvent) -> bool {
        let in_range = event.time_ms >= self.since_ms && event.time_ms < self.until_ms;
        in_range && self.run.is_none_or(|run| event.object.kind == "run" && event.object.id == run.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    Running,
    Succeeded,
    Failed,
}

/// An export job as `GET /v1/audit/exports/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportStatus {
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    pub state: ExportState,
    pub requested_by: String,
    pub request: ExportRequest,
    /// The bundle's key prefix in the bucket.
    #[schema(example = "audit-exports/v1/01jbd3k6q3x9a7m2c5v8w0z4ty/")]
    pub bundle: String,
    pub created_at_ms: u64,
    /// Renewed every few seconds while the job runs.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Events exported (once succeeded).
    #[serde(default)]
    pub events: Option<usize>,
    /// Matching events not yet digested, left for a later export.
    #[serde(default)]
    pub pending_events: Option<usize>,
    /// SHA-256 of `manifest.json`, as the audit event of the export records it.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What one sweep deleted and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SweepReport {
    pub at_ms: u64,
    /// Objects deleted, by class.
    pub deleted: BTreeMap<RetentionClass, usize>,
    /// Objects past retention kept because a legal hold covers them.
    pub held: usize,
    /// Runs some of whose objects were deleted (the first 1,000).
    #[schema(value_type = Vec<String>)]
    pub runs: Vec<RunId>,
}

/// One egress decision, as kept in the run's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressRecord {
    pub at_ms: u64,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub allowed: bool,
    pub reason: Option<String>,
}

/// Metadata of one model call, as the run's record and audit keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecord {
    /// Ours, returned to the caller as `x-paddock-request-id`.
    pub request_id: String,
    /// The provider's, when it sent one.
    pub upstream_request_id: Option<String>,
    #[schema(value_type = String)]
    pub run_id: RunId,
    pub tenant: String,
    pub at_ms: u64,
    pub wire: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    /// Why the gateway refused the call, when it did.
    pub refusal: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Whether the provider reported usage; when not, the call was charged
    /// its worst case.
    #[serde(default)]
    pub usage_reported: bool,
    /// At the provider's configured price for the model (0 without one).
    pub cost_usd: f64,
    /// Until the answer's status and headers.
    pub latency_ms: u64,
    /// Until the answer's last byte (or the caller left).
    pub duration_ms: u64,
    /// Waiting for the provider: from sending the request until its status
    /// and headers (0 when it was never sent). `latency_ms` minus this is
    /// the gateway's own share.
    #[serde(default)]
    pub upstream_ms: u64,
    /// Secrets found, by rule, in the request and in the answer.
    pub redactions: BTreeMap<String, u32>,
    /// `anthropic-beta` flags the caller sent that the provider's policy
    /// does not allow, and which were therefore not passed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_betas: Vec<String>,
}

/// A run's `summary.json`: written by the worker with the run's evidence,
/// read by `GET /v1/runs/{id}/record` once Redis has forgotten the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSummary {
    #[schema(value_type = String)]
    pub run_id: RunId,
    pub attempt: u32,
    pub worker: String,
    pub tenant: String,
    pub repository: String,
    pub base_ref: String,
    pub base_commit: Option<String>,
    pub issue: Option<u64>,
    pub agent_profile: String,
    /// The agent and version that ran (see [`crate::AgentIdentity`]).
    #[serde(default)]
    pub agent: Option<crate::AgentIdentity>,
    pub command: Option<String>,
    pub requested_by: String,
    pub via: Option<String>,
    pub image: String,
    /// The sandbox policy the run executed under.
    pub policy: crate::policy::SandboxPolicy,
    pub stop_reason: crate::StopReason,
    pub files_changed: Vec<String>,
    /// Models called successfully, with how often (absent from summaries
    /// written before it was added).
    #[serde(default)]
    pub models: Vec<crate::ModelUse>,
    /// The agent's command, then each command it reported running.
    pub commands: Vec<String>,
    /// Credentials granted for the run: fingerprints, permissions, expiry.
    pub credentials: Vec<crate::CredentialGrant>,
    pub branch: Option<String>,
    /// The key Paddock's commit was signed with, when it was.
    #[serde(default)]
    pub commit_signature: Option<crate::CommitSignature>,
    pub pull_request: Option<crate::PullRequestRef>,
    /// The commit Paddock pushed, if it pushed one.
    #[serde(default)]
    pub pushed_commit: Option<String>,
    /// Tokens and cost of the run's model calls.
    #[serde(default)]
    pub usage: crate::Usage,
    /// The run whose pull request this follow-up continues.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub parent_run: Option<RunId>,
    /// A follow-up's pull request and trigger.
    #[serde(default)]
    pub follow_up: Option<crate::FollowUp>,
    /// The review comments a follow-up answered.
    #[serde(default)]
    pub answered_comments: Vec<u64>,
    /// Every request the sandbox made through the egress proxy.
    pub egress: Vec<EgressRecord>,
    /// Metadata of every model call through the gateway.
    pub model_calls: Vec<CallRecord>,
    /// Milliseconds each start-up step took, in order: `[step, ms]`.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub phases_ms: Vec<(String, u64)>,
    pub diff_bytes: usize,
    pub log_bytes: usize,
    pub log_truncated: bool,
    pub artifacts: Vec<String>,
}
