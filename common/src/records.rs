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
