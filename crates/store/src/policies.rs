//! What runs execute under: sandbox policy overrides per tenant and
//! repository, the provider policy, and tenant-registered secrets.

use std::collections::BTreeMap;

use common::audit::AuditEvent;
use common::policy::{LlmPolicy, PolicyOverride, SandboxPolicy};
use redis::AsyncCommands;

use super::{QueueError, RunQueue, corrupt};

/// A tenant-registered secret as stored: sealed with
/// `secrets.encryption_key`, shown only by its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSecret {
    pub sealed: String,
    pub fingerprint: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// Declared tenants and sandbox policy overrides as of one
/// `tenancy:version` ([`RunQueue::tenancy_snapshot`]).
#[derive(Debug, Clone)]
pub struct TenancySnapshot {
    pub version: u64,
    pub tenants: Vec<common::tenancy::Tenant>,
    policies: BTreeMap<String, PolicyOverride>,
}

impl TenancySnapshot {
    /// As [`RunQueue::effective_policy`], from the snapshot.
    pub fn effective_policy(&self, defaults: SandboxPolicy, tenant: &str, repo: &str) -> SandboxPolicy {
        let fields = override_fields(tenant, repo);
        fields.iter().filter_map(|f| self.policies.get(f)).fold(defaults, |policy, over| policy.with(over))
    }
}

impl RunQueue {
    /// Declared tenants and every sandbox policy override, read together
    /// with the `tenancy:version` they are at (one transaction): what an
    /// API process may keep and decide runs on, for as long as the enqueue
    /// script finds the version unchanged.
    pub async fn tenancy_snapshot(&self) -> Result<TenancySnapshot, QueueError> {
        let mut conn = self.conn.clone();
        let (version, tenants, policies): (Option<u64>, BTreeMap<String, String>, BTreeMap<String, String>) =
            redis::pipe()
                .atomic()
                .get(self.keys.tenancy_version())
                .hgetall(self.keys.records(super::keys::Records::Tenants))
                .hgetall(self.keys.policy())
                .query_async(&mut conn)
                .await?;
        let tenants = tenants
            .values()
            .map(|json| super::identity::from_json(super::keys::Records::Tenants.what(), json))
            .collect::<Result<_, _>>()?;
        let policies = policies
            .into_iter()
            .map(|(field, json)| Ok((field.clone(), serde_json::from_str(&json).map_err(|e| corrupt(&field, e))?)))
            .collect::<Result<_, QueueError>>()?;
        Ok(TenancySnapshot { version: version.unwrap_or(0), tenants, policies })
    }

    /// Every policy override, as `(tenant, repository or None, override)`.
    pub async fn policies(&self) -> Result<Vec<(String, Option<String>, PolicyOverride)>, QueueError> {
        let mut out = Vec::new();
        for (field, json) in self.scan_hash(self.keys.policy()).await? {
            let over: PolicyOverride = serde_json::from_str(&json).map_err(|e| corrupt(&field, e))?;
            if let Some(tenant) = field.strip_prefix("tenant:") {
                out.push((tenant.to_owned(), None, over));
            } else if let Some((tenant, repo)) = field.strip_prefix("repo:").and_then(|r| r.split_once(':')) {
                out.push((tenant.to_owned(), Some(repo.to_owned()), over));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// `defaults`, then the tenant's override, then the repository's.
    pub async fn effective_policy(
        &self,
        defaults: SandboxPolicy,
        tenant: &str,
        repo: &str,
    ) -> Result<SandboxPolicy, QueueError> {
        let mut conn = self.conn.clone();
        let fields = override_fields(tenant, repo);
        let found: Vec<Option<String>> = conn.hmget(self.keys.policy(), &fields[..]).await?;
        let mut policy = defaults;
        for json in found.into_iter().flatten() {
            let over: PolicyOverride = serde_json::from_str(&json).map_err(|e| corrupt(tenant, e))?;
            policy = policy.with(&over);
        }
        Ok(policy)
    }

    /// The provider policy set through the API, if any.
    pub async fn llm_policy(&self) -> Result<Option<LlmPolicy>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(self.keys.llm_policy()).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt("llm_policy", e))).transpose()
    }

    pub async fn set_llm_policy(&self, policy: &LlmPolicy) -> Result<(), QueueError> {
        let json = serde_json::to_string(policy).map_err(|e| corrupt("llm_policy", e))?;
        let mut conn = self.conn.clone();
        let _: () = conn.set(self.keys.llm_policy(), json).await?;
        Ok(())
    }

    /// Registers (or replaces) a tenant's secret, sealed.
    pub async fn put_tenant_secret(&self, tenant: &str, name: &str, secret: &StoredSecret) -> Result<(), QueueError> {
        let json = serde_json::to_string(secret).map_err(|e| corrupt("tenant secret", e))?;
        let mut conn = self.conn.clone();
        let _: i64 = conn.hset(self.keys.tenant_secrets(tenant), name, json).await?;
        Ok(())
    }

    /// A tenant's registered secrets by name, sealed.
    pub async fn tenant_secrets(&self, tenant: &str) -> Result<BTreeMap<String, StoredSecret>, QueueError> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.keys.tenant_secrets(tenant)).await?;
        all.into_iter()
            .map(|(name, json)| Ok((name, serde_json::from_str(&json).map_err(|e| corrupt("tenant secret", e))?)))
            .collect()
    }

    /// Whether the secret existed.
    pub async fn delete_tenant_secret(&self, tenant: &str, name: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn.hdel(self.keys.tenant_secrets(tenant), name).await?;
        Ok(removed > 0)
    }
}

/// The overrides a run of `tenant` on `repo` is under, in the order they
/// apply over the defaults: the tenant's, then the repository's.
fn override_fields(tenant: &str, repo: &str) -> [String; 2] {
    [policy_field(tenant, None), policy_field(tenant, Some(repo))]
}

/// Repositories are keyed in lowercase: GitHub names are case-insensitive,
/// so `ACME/Ledger` must find `acme/ledger`'s override.
fn policy_field(tenant: &str, repo: Option<&str>) -> String {
    match repo {
        Some(repo) => format!("repo:{tenant}:{}", repo.to_ascii_lowercase()),
        None => format!("tenant:{tenant}"),
    }
}

impl super::identity::IdentityStore {
    /// Sets the sandbox policy override of a tenant, or with `repo` of one
    /// of the tenant's repositories; an empty override removes it. Written
    /// with its audit event by one script, and counted in
    /// `tenancy:version` (first: a write failing after it costs API
    /// processes one needless read, never a change their copies miss).
    pub async fn set_policy(
        &self,
        tenant: &str,
        repo: Option<&str>,
        over: &PolicyOverride,
        event: &AuditEvent,
    ) -> Result<(), QueueError> {
        let field = policy_field(tenant, repo);
        let mut changes = redis::pipe();
        changes.incr(self.queue.keys.tenancy_version(), 1);
        if *over == PolicyOverride::default() {
            changes.hdel(self.queue.keys.policy(), &field);
        } else {
            let json = serde_json::to_string(over).map_err(|e| corrupt(&field, e))?;
            changes.hset(self.queue.keys.policy(), &field, json);
        }
        self.commit(event, changes).await
    }
}
