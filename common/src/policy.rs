//! The sandbox policy of a run: its resource caps and what it may reach.
//! Defaults come from configuration; a tenant and then a repository may
//! override any part. The resolved policy is recorded on the run when it is
//! accepted, so a run always executes under the policy it was accepted with.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::config::{EgressPreset, GatewayConfig, PromptContent, SandboxConfig, SandboxRuntime};

/// Which model providers runs may use and what their transcripts keep, in
/// the shape platform teams already write. Set through the API; without
/// one, the gateway configuration decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmPolicy {
    /// Provider used when a model is offered by several (must be allowed).
    pub default_provider: Option<String>,
    /// Providers (from the gateway configuration) runs may use.
    pub allowed_providers: Vec<String>,
    /// Names that are never allowed, whatever else says so.
    #[serde(default)]
    pub disallowed: Vec<String>,
    #[serde(default)]
    pub logging: LlmLogging,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmLogging {
    #[schema(value_type = String, example = "redacted")]
    pub prompt_content: PromptContent,
    /// How long call metadata is kept, e.g. `retained_180_days`.
    pub metadata: String,
}

impl Default for LlmLogging {
    fn default() -> Self {
        Self { prompt_content: PromptContent::Redacted, metadata: "retained_180_days".to_owned() }
    }
}

impl LlmLogging {
    /// The days of `retained_<days>_days`.
    pub fn metadata_days(&self) -> Option<u32> {
        self.metadata.strip_prefix("retained_")?.strip_suffix("_days")?.parse().ok().filter(|d| *d > 0)
    }
}

impl LlmPolicy {
    /// Refuses names the gateway does not know and contradictions.
    pub fn validate(&self, gateway: &GatewayConfig) -> Result<(), ValidationError> {
        for name in &self.allowed_providers {
            if !gateway.providers.contains_key(name) {
                return Err(ValidationError::new(
                    "allowed_providers",
                    format!("`{name}` is not a configured provider"),
                ));
            }
            if self.disallowed.contains(name) {
                return Err(ValidationError::new("disallowed", format!("`{name}` is both allowed and disallowed")));
            }
        }
        if let Some(default) = &self.default_provider
            && !self.allowed_providers.contains(default)
        {
            return Err(ValidationError::new(
                "default_provider",
                format!("`{default}` is not among allowed_providers"),
            ));
        }
        if self.logging.metadata_days().is_none() {
            return Err(ValidationError::new("logging.metadata", "must look like `retained_180_days`"));
        }
        Ok(())
    }

    /// The gateway configuration with this policy applied.
    pub fn apply(&self, gateway: &GatewayConfig) -> GatewayConfig {
        let mut applied = gateway.clone();
        applied.allowed_providers =
            self.allowed_providers.iter().filter(|p| !self.disallowed.contains(p)).cloned().collect();
        if let Some(default) = &self.default_provider {
            // The default provider is tried first when several offer a model.
            applied.allowed_providers.sort_by_key(|p| p != default);
        }
        applied.prompt_content = self.logging.prompt_content;
        applied
    }
}

/// A fully resolved policy, as recorded on a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxPolicy {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub workspace_bytes: u64,
    pub tmp_bytes: u64,
    pub timeout_seconds: u64,
    pub egress: EgressPreset,
    /// Hostnames allowed besides the preset (`*.example.com` for subdomains).
    pub egress_allow: Vec<String>,
    /// The OCI runtime the sandbox runs under (runs recorded before this
    /// field ran under `runc`).
    #[serde(default)]
    pub runtime: SandboxRuntime,
    /// When a person with `tools.approve` (not the requester) must approve
    /// a run before it starts.
    #[serde(default)]
    pub approval: Approval,
}

/// Which runs wait for approval before they start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Runs start without approval.
    #[default]
    Never,
    /// Runs whose sandbox may reach the network (egress other than `none`)
    /// wait for approval: network access is the privileged tool.
    Egress,
    /// Every run waits for approval.
    Always,
}

/// Any part of a policy, as a tenant or repository overrides it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub workspace_bytes: Option<u64>,
    pub tmp_bytes: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub egress: Option<EgressPreset>,
    pub egress_allow: Option<Vec<String>>,
    pub runtime: Option<SandboxRuntime>,
    pub approval: Option<Approval>,
}

impl SandboxPolicy {
    pub fn defaults(sandbox: &SandboxConfig, egress: EgressPreset, allow: &[String]) -> Self {
        Self {
            memory_bytes: sandbox.memory_bytes,
            nano_cpus: sandbox.nano_cpus,
            pids_limit: sandbox.pids_limit,
            workspace_bytes: sandbox.workspace_bytes,
            tmp_bytes: sandbox.tmp_bytes,
            timeout_seconds: sandbox.timeout_seconds,
            egress,
            egress_allow: allow.to_vec(),
            runtime: sandbox.runtime,
            approval: Approval::Never,
        }
    }

    /// Whether a run under this policy waits for someone's approval.
    pub fn needs_approval(&self) -> bool {
        match self.approval {
            Approval::Never => false,
            Approval::Egress => self.egress != EgressPreset::None,
            Approval::Always => true,
        }
    }

    /// This policy with `over`'s parts replacing its own.
    pub fn with(mut self, over: &PolicyOverride) -> Self {
        if let Some(v) = over.memory_bytes {
            self.memory_bytes = v;
        }
        if let Some(v) = over.nano_cpus {
            self.nano_cpus = v;
        }
        if let Some(v) = over.pids_limit {
            self.pids_limit = v;
        }
        if let Some(v) = over.workspace_bytes {
            self.workspace_bytes = v;
        }
        if let Some(v) = over.tmp_bytes {
            self.tmp_bytes = v;
        }
        if let Some(v) = over.timeout_seconds {
            self.timeout_seconds = v;
        }
        if let Some(v) = over.egress {
            self.egress = v;
        }
        if let Some(v) = &over.egress_allow {
            self.egress_allow = v.clone();
        }
        if let Some(v) = over.runtime {
            self.runtime = v;
        }
        if let Some(v) = over.approval {
            self.approval = v;
        }
        self
    }
}

impl PolicyOverride {
    /// What each numeric field accepts: (field, min, max, message). The API
    /// document states the same ranges.
    pub const RANGES: [(&'static str, i64, i64, &'static str); 6] = [
        ("memory_bytes", 16 << 20, 1 << 40, "must be 16 MiB to 1 TiB"),
        ("nano_cpus", 10_000_000, 256_000_000_000, "must be 0.01 to 256 CPUs"),
        ("pids_limit", 16, 1 << 20, "must be 16 to 1048576"),
        ("workspace_bytes", 1 << 20, 1 << 40, "must be 1 MiB to 1 TiB"),
        ("tmp_bytes", 1 << 20, 1 << 40, "must be 1 MiB to 1 TiB"),
        ("timeout_seconds", 1, 7 * 24 * 3600, "must be 1 s to 7 days"),
    ];

    /// Refuses values no sandbox can run with, naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let values = [
            self.memory_bytes.map(i128::from),
            self.nano_cpus.map(i128::from),
            self.pids_limit.map(i128::from),
            self.workspace_bytes.map(i128::from),
            self.tmp_bytes.map(i128::from),
            self.timeout_seconds.map(i128::from),
        ];
        for ((field, min, max, what), value) in Self::RANGES.into_iter().zip(values) {
            if value.is_some_and(|v| v < i128::from(min) || v > i128::from(max)) {
                return Err(ValidationError::new(field, what));
            }
        }
        for host in self.egress_allow.iter().flatten() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let ok = bare.contains('.')
                && bare.len() <= 253
                && bare.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                return Err(ValidationError::new("egress_allow", format!("`{host}` is not a hostname")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_overrides_win_over_tenant_overrides_over_defaults() {
        let defaults = SandboxPolicy::defaults(&SandboxConfig::default(), EgressPreset::None, &[]);
        let tenant = PolicyOverride {
            memory_bytes: Some(1 << 30),
            egress: Some(EgressPreset::Registries),
            ..Default::default()
        };
        let repo = PolicyOverride { memory_bytes: Some(512 << 20), timeout_seconds: Some(60), ..Default::default() };
        let effective = defaults.clone().with(&tenant).with(&repo);
        assert_eq!(effective.memory_bytes, 512 << 20);
        assert_eq!(effective.timeout_seconds, 60);
        assert_eq!(effective.egress, EgressPreset::Registries);
        assert_eq!(effective.pids_limit, defaults.pids_limit);
    }

    #[test]
    fn approval_holds_runs_by_policy() {
        let policy = SandboxPolicy::defaults(&SandboxConfig::default(), EgressPreset::None, &[]);
        assert!(!policy.needs_approval());
        let egress = PolicyOverride { approval: Some(Approval::Egress), ..Default::default() };
        assert!(!policy.clone().with(&egress).needs_approval(), "no network, nothing privileged");
        let networked = PolicyOverride { egress: Some(EgressPreset::Registries), ..Default::default() };
        assert!(policy.clone().with(&egress).with(&networked).needs_approval());
        let always = PolicyOverride { approval: Some(Approval::Always), ..Default::default() };
        assert!(policy.with(&always).needs_approval());
    }

    #[test]
    fn impossible_values_are_refused_by_field() {
        let bad = PolicyOverride { memory_bytes: Some(1), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "memory_bytes");
        let bad = PolicyOverride { egress_allow: Some(vec!["not a host".to_owned()]), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "egress_allow");
        assert!(PolicyOverride::default().validate().is_ok());
    }
}
