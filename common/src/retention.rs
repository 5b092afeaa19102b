//! How long each kind of stored object is kept ([`RetentionClass`]) and
//! the legal holds that stop deletion ([`LegalHold`]).

use serde::{Deserialize, Serialize};

use crate::run::{ArtifactKind, RunId, ValidationError, validate_tenant};

/// Every object Paddock stores belongs to one class, and each class has its
/// own retention (`retention.<class>_days`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetentionClass {
    /// A run's diff and summary (`runs/<id>/diff.patch`, `summary.json`).
    Artifacts,
    /// A run's redacted log (`runs/<id>/logs.txt`).
    Logs,
    /// Redacted prompts and answers (`runs/<id>/transcript.jsonl`).
    Transcripts,
    /// Model calls' metadata: provider, model, tokens, cost, latency
    /// (`runs/<id>/model-calls.jsonl`).
    GatewayMetadata,
    /// Audit segments and digests (`<audit.prefix>/`).
    Audit,
    /// Compliance export bundles (`<audit.export_prefix>/`).
    Exports,
}

impl RetentionClass {
    pub const ALL: [RetentionClass; 6] = [
        RetentionClass::Artifacts,
        RetentionClass::Logs,
        RetentionClass::Transcripts,
        RetentionClass::GatewayMetadata,
        RetentionClass::Audit,
        RetentionClass::Exports,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetentionClass::Artifacts => "artifacts",
            RetentionClass::Logs => "logs",
            RetentionClass::Transcripts => "transcripts",
            RetentionClass::GatewayMetadata => "gateway_metadata",
            RetentionClass::Audit => "audit",
            RetentionClass::Exports => "exports",
        }
    }
}

impl ArtifactKind {
    pub fn class(self) -> RetentionClass {
        match self {
            ArtifactKind::Logs => RetentionClass::Logs,
            ArtifactKind::Diff | ArtifactKind::Summary => RetentionClass::Artifacts,
            ArtifactKind::Transcript => RetentionClass::Transcripts,
            ArtifactKind::ModelCalls => RetentionClass::GatewayMetadata,
        }
    }

    /// The kind of a run object from its file name.
    pub fn from_file_name(name: &str) -> Option<ArtifactKind> {
        ArtifactKind::ALL.into_iter().find(|k| k.file_name() == name)
    }
}

/// A run object's key `runs/<id>/<file>` → the run and the object's kind.
pub fn run_object(key: &str) -> Option<(RunId, ArtifactKind)> {
    let rest = key.strip_prefix("runs/")?;
    let (id, file) = rest.split_once('/')?;
    Some((id.parse().ok()?, ArtifactKind::from_file_name(file)?))
}

/// What a legal hold covers: one run, or everything of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldTarget {
    #[schema(value_type = String, example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    Run(RunId),
    Tenant(String),
}

impl HoldTarget {
    /// Checks the tenant name; a run id is valid by construction.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            HoldTarget::Run(_) => Ok(()),
            HoldTarget::Tenant(t) => validate_tenant(t),
        }
    }

    /// Whether the hold covers something of `run` (if any) in `tenant`.
    pub fn covers(&self, run: Option<&RunId>, tenant: Option<&str>) -> bool {
        match self {
            HoldTarget::Run(id) => run == Some(id),
            HoldTarget::Tenant(t) => tenant == Some(t.as_str()),
        }
    }
}

/// Stops the retention sweeper from deleting anything of its target until
/// it is released. Released holds stay on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegalHold {
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    pub target: HoldTarget,
    /// Why (a matter or case reference).
    #[schema(example = "Matter 2026-114: vendor dispute")]
    pub reason: String,
    pub placed_by: String,
    pub placed_at_ms: u64,
    #[serde(default)]
    pub released_by: Option<String>,
    #[serde(default)]
    pub released_at_ms: Option<u64>,
    #[serde(default)]
    pub release_reason: Option<String>,
}

impl LegalHold {
    pub fn active(&self) -> bool {
        self.released_at_ms.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_object_has_a_class_read_back_from_its_key() {
        let id = RunId::new();
        for kind in ArtifactKind::ALL {
            assert_eq!(run_object(&id.artifact_key(kind)), Some((id, kind)));
        }
        assert_eq!(run_object(&format!("runs/{id}/other.txt")), None);
        assert_eq!(run_object("runs/not-an-id/logs.txt"), None);
        assert_eq!(ArtifactKind::Transcript.class(), RetentionClass::Transcripts);
        assert_eq!(ArtifactKind::ModelCalls.class(), RetentionClass::GatewayMetadata);
    }

    #[test]
    fn holds_cover_their_run_or_every_run_of_their_tenant() {
        let (a, b) = (RunId::new(), RunId::new());
        assert!(HoldTarget::Run(a).covers(Some(&a), Some("payments")));
        assert!(!HoldTarget::Run(a).covers(Some(&b), Some("payments")));
        assert!(!HoldTarget::Run(a).covers(None, Some("payments")));
        let tenant = HoldTarget::Tenant("payments".into());
        assert!(tenant.covers(Some(&b), Some("payments")));
        assert!(!tenant.covers(Some(&b), Some("search")));
        assert!(!tenant.covers(Some(&b), None));
        assert!(HoldTarget::Tenant("Bad Name!".into()).validate().is_err());
        let json = serde_json::to_string(&HoldTarget::Run(a)).unwrap();
        assert_eq!(json, format!("{{\"run\":\"{a}\"}}"));
    }
}
