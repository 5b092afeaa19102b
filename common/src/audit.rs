//! One audit event schema for every action Paddock takes or refuses. The
//! envelope follows the Kubernetes audit event: who (the person, and the
//! service acting for them), from where, did what to which object, with
//! what outcome; configuration changes carry the object before and after.
//! Events never hold secret values, only fingerprints.

use serde::{Deserialize, Serialize};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    /// The person the action is tied to (or `bootstrap-admin`, `system`).
    #[schema(example = "alice@example.com")]
    pub principal: String,
    /// How they proved it: `oidc`, `service-account`, `bootstrap`,
    /// `github-webhook`, `worker`.
    #[schema(example = "oidc")]
    pub method: String,
    /// The service account (or integration) acting for the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "service-account:portal")]
    pub via: Option<String>,
}

/// What the action was about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectRef {
    /// `run`, `binding`, `service-account`, `token`, `user`, `policy`, …
    #[schema(example = "binding")]
    pub kind: String,
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// When the event was written, relative to its action (the Kubernetes audit
/// event's stage, for an action that is not one HTTP request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before the action took effect; it proceeds only once this is stored.
    #[default]
    Intent,
    /// After the fact: what happened (commands run, the pull request opened,
    /// why the run stopped).
    Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Unique; consumers deduplicate on it.
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(default)]
    pub stage: Stage,
    /// The API request that caused it (`x-request-id`, echoed on the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4tz")]
    pub request_id: Option<String>,
    /// `<object>.<verb>`, e.g. `binding.create`, `token.revoke`.
    #[schema(example = "binding.create")]
    pub action: String,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.0.4.17")]
    pub source_ip: Option<String>,
    pub object: ObjectRef,
    pub outcome: Outcome,
    /// Why, when there is more to say (a refusal's reason, a revocation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The object before the change (configuration changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub before: Option<serde_json::Value>,
    /// The object after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    /// A successful action at the current time.
    pub fn new(action: &str, actor: Actor, object: ObjectRef) -> Self {
        Self {
            id: ulid::Ulid::new().to_string().to_lowercase(),
            time_ms: now_ms(),
            stage: Stage::Intent,
            request_id: None,
            action: action.to_owned(),
            actor,
            source_ip: None,
            object,
            outcome: Outcome::Success,
            reason: None,
            before: None,
            after: None,
        }
    }

    pub fn change<B: Serialize, A: Serialize>(mut self, before: Option<&B>, after: Option<&A>) -> Self {
        self.before = before.and_then(|b| serde_json::to_value(b).ok());
        self.after = after.and_then(|a| serde_json::to_value(a).ok());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn source_ip(mut self, ip: Option<String>) -> Self {
        self.source_ip = ip;
        self
    }

    pub fn request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// Marks the event as recording what happened ([`Stage::Outcome`]).
    pub fn after_the_fact(mut self) -> Self {
        self.stage = Stage::Outcome;
        self
    }
}

impl ObjectRef {
    pub fn new(kind: &str, id: impl Into<String>) -> Self {
        Self { kind: kind.to_owned(), id: id.into(), tenant: None, repository: None }
    }
}

/// An event as the process that accepted its action sealed it for the
/// pending log in Redis, where it waits to be shipped to the trail: its
/// JSON and an HMAC-SHA256 (hex) of that JSON under a key Redis never
/// holds, so an edited pending event is found (`audit_trail::Sealer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    pub json: String,
    pub mac: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// Seals an audited change's event, with a key the store that applies the
/// change never holds, for the pending log it is written to with the
/// change. The store knows the sealer only by this trait, so it does not
/// depend on the audit trail.
pub trait EventSealer: Send + Sync {
    fn seal_event(&self, event: &AuditEvent) -> Result<SealedEvent, String>;
}
