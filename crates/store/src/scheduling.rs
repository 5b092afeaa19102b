//! Fair scheduling's knobs and gauges: caps and weights per tenant and
//! repository, exact depth counters, dead letters.

use std::collections::BTreeMap;

use common::{RunId, StopReason};
use redis::AsyncCommands;

use super::scripts::LimitsArgs;
use super::{QueueError, RunQueue, corrupt};

/// Caps and weights, as set through the API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub tenants: BTreeMap<String, TenantLimits>,
    /// `(tenant, repository)` → max running.
    pub repositories: BTreeMap<(String, String), u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantLimits {
    pub max_running: Option<u32>,
    pub weight: Option<f64>,
}

/// Exact queue depth: totals, per tenant and per repository, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depth {
    pub totals: BTreeMap<String, i64>,
    pub tenants: BTreeMap<String, BTreeMap<String, i64>>,
    pub repositories: BTreeMap<(String, String), BTreeMap<String, i64>>,
    /// Runs by (band, tenant), then state.
    pub bands: BTreeMap<(String, String), BTreeMap<String, i64>>,
    pub dead_letters: u64,
}

/// A run that failed for infrastructure reasons after its last attempt.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: RunId,
    pub failed_at_ms: u64,
    pub reason: Option<StopReason>,
}

impl RunQueue {
    /// Sets a tenant's cap on running runs (`None` removes it) and, when
    /// given, its fair-share weight.
    pub async fn set_tenant_limits(
        &self,
        tenant: &str,
        max_running: Option<u32>,
        weight: Option<f64>,
    ) -> Result<(), QueueError> {
        self.set_limits("tenant", tenant, "", max_running, weight).await
    }

    /// Sets a repository's cap on running runs (`None` removes it).
    pub async fn set_repo_limit(&self, tenant: &str, repo: &str, max_running: Option<u32>) -> Result<(), QueueError> {
        self.set_limits("repo", tenant, repo, max_running, None).await
    }

    async fn set_limits(
        &self,
        kind: &str,
        tenant: &str,
        repo: &str,
        max_running: Option<u32>,
        weight: Option<f64>,
    ) -> Result<(), QueueError> {
        // Keyed in lowercase, as the queue counts repositories.
        let repo = &repo.to_ascii_lowercase();
        let _: i64 = self.run_script(&LimitsArgs { kind, tenant, repo, max_running, weight }).await?;
        Ok(())
    }

    pub async fn limits(&self) -> Result<Limits, QueueError> {
        let mut limits = Limits::default();
        for (field, value) in self.scan_hash(self.keys.limits()).await? {
            if let Some(tenant) = field.strip_prefix("tenant:") {
                limits.tenants.entry(tenant.to_owned()).or_default().max_running = value.parse().ok();
            } else if let Some(tenant) = field.strip_prefix("weight:") {
                limits.tenants.entry(tenant.to_owned()).or_default().weight = value.parse().ok();
            } else if let Some((tenant, repo)) = field.strip_prefix("repo:").and_then(|r| r.split_once(':'))
                && let Ok(cap) = value.parse()
            {
                limits.repositories.insert((tenant.to_owned(), repo.to_owned()), cap);
            }
        }
        Ok(limits)
    }

    /// Exact depth, from the one counter every transition script keeps
    /// (moves `<from>><to>:<band>:<tenant>:<repo>`: a state holds the moves
    /// into it less the moves out) and the set of what is at its cap:
    /// `dispatchable` counts queued runs in repositories below their cap,
    /// per tenant whatever the tenant's own cap, in the totals (and band
    /// `*`) only for tenants below theirs.
    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let mut conn = self.conn.clone();
        let parked: std::collections::HashSet<String> = conn.smembers(self.keys.parked()).await?;
        // Runs by (band, tenant, repo), then state.
        let mut runs: BTreeMap<(String, String, String), BTreeMap<String, i64>> = BTreeMap::new();
        for (field, value) in self.scan_hash(self.keys.count()).await? {
            let Ok(n) = value.parse::<i64>() else { continue };
            let mut parts = field.splitn(4, ':');
            let (Some(edge), Some(band), Some(tenant), Some(repo)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some((from, to)) = edge.split_once('>') else { continue };
            let states = runs.entry((band.to_owned(), tenant.to_owned(), repo.to_owned())).or_default();
            add(states, to, n);
            if !from.is_empty() {
                add(states, from, -n);
            }
        }
        let mut depth = Depth::default();
        for ((band, tenant, repo), states) in runs {
            let repo_open = i64::from(!parked.contains(&format!("r:{tenant}:{repo}")));
            let open = repo_open * i64::from(!parked.contains(&format!("t:{tenant}")));
            let queued = states.get("queued").copied().unwrap_or(0);
            let by_tenant = depth.tenants.entry(tenant.clone()).or_default();
            add(by_tenant, "dispatchable", queued * repo_open);
            let by_band = depth.bands.entry((band.clone(), tenant.clone())).or_default();
            add(by_band, "dispatchable", queued * repo_open);
            add(&mut depth.totals, "dispatchable", queued * open);
            add(depth.bands.entry((band.clone(), "*".to_owned())).or_default(), "dispatchable", queued * open);
            for (state, n) in states {
                add(&mut depth.totals, &state, n);
                add(depth.tenants.entry(tenant.clone()).or_default(), &state, n);
                add(depth.repositories.entry((tenant.clone(), repo.clone())).or_default(), &state, n);
                add(depth.bands.entry((band.clone(), tenant.clone())).or_default(), &state, n);
            }
        }
        depth.dead_letters = conn.zcard(self.keys.dead()).await?;
        Ok(depth)
    }

    /// The oldest run waiting in `queued`, if any (its id tells when it was
    /// accepted).
    pub async fn oldest_queued(&self) -> Result<Option<RunId>, QueueError> {
        let mut conn = self.conn.clone();
        let first: Vec<String> = conn.zrange(self.keys.state_index("queued"), 0, 0).await?;
        Ok(first.first().and_then(|id| id.parse().ok()))
    }

    /// The newest dead letters, up to `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, f64)> = conn.zrevrange_withscores(self.keys.dead(), 0, limit as isize - 1).await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every reason, not one per letter.
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let reasons: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.keys.dead_reasons()).arg(&ids).query_async(&mut conn).await?;
        entries
            .iter()
            .zip(reasons)
            .map(|((id, score), reason)| {
                Ok(DeadLetter {
                    id: id.parse().map_err(|e| corrupt(id, e))?,
                    failed_at_ms: *score as u64,
                    reason: reason.and_then(|r| serde_json::from_str(&r).ok()),
                })
            })
            .collect()
    }
}

fn add(map: &mut BTreeMap<String, i64>, state: &str, n: i64) {
    *map.entry(state.to_owned()).or_default() += n;
}
