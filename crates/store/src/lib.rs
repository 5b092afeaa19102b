//! Paddock's Redis queue: run records, ready queues, leases with fencing
//! epochs, and the reaper. Every state change is one Lua script, one round
//! trip, with timestamps from Redis `TIME`.
//!
//! The key layout and each script's contract are in ARCHITECTURE.md; the
//! scripts are in `lua/`, with `lib.lua` prepended to each.

mod conn;
pub mod identity;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::config::RedisConfig;
use common::policy::{LlmPolicy, PolicyOverride, SandboxPolicy};
use common::{RunFacts, RunId, RunRecord, RunSpec, RunState, StopReason};
use futures::StreamExt;
use redis::{AsyncCommands, Script};

use conn::Conn;

use platform::outbound::Outbound;

/// How many log chunks of a running run Redis keeps for `GET .../logs`.
const LOG_TAIL_CHUNKS: isize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("run record {id} is corrupt: {detail}")]
    Corrupt { id: String, detail: String },
    /// The audit trail refused the change's event, so the change was not made.
    #[error("{0}")]
    Audit(String),
}

/// A run this worker holds a lease on, under `epoch`.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: RunId,
    pub epoch: u64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub spec: RunSpec,
}

/// How a worker hands a run back.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run is over; its state follows from the reason.
    Done { reason: StopReason, artifacts: Vec<String>, facts: Option<Box<RunFacts>> },
    /// Infrastructure failed; run again after `delay` unless the attempts
    /// are used up, in which case the run fails with `reason`.
    Retry { reason: StopReason, delay: Duration },
    /// The worker is shutting down: queue the run again without counting
    /// this attempt.
    Release,
}

/// A page of runs, newest first.
#[derive(Debug)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next_cursor: Option<RunId>,
}

/// What a heartbeat learned about one held run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    /// Still held, but someone cancelled the run: kill the sandbox and finish.
    CancelRequested,
    /// Gone: the run is someone else's now; kill the sandbox, drop the result.
    Lost,
}

/// An `Idempotency-Key` as the queue stores it.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Already scoped to the caller: `<principal>:<key>`.
    pub key: String,
    /// Digest of the request, to tell a retry from a different request.
    pub fingerprint: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Created {
        created_ms: u64,
    },
    /// The key was used before for `id`; `same_request` tells whether the
    /// request was the same.
    Existing {
        id: RunId,
        same_request: bool,
    },
}

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
    pub dead_letters: u64,
}

/// A run that failed for infrastructure reasons after its last attempt.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: RunId,
    pub failed_at_ms: u64,
    pub reason: Option<StopReason>,
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    heartbeat: Script,
    finish: Script,
    reap: Script,
    cancel: Script,
    limits: Script,
    gcra: Script,
    budget: Script,
    list: Script,
    approve: Script,
}

impl Scripts {
    fn load() -> Self {
        let lib = include_str!("lua/lib.lua");
        let with_lib = |body: &str| Script::new(&format!("{lib}\n{body}"));
        Self {
            enqueue: with_lib(include_str!("lua/enqueue.lua")),
            claim: with_lib(include_str!("lua/claim.lua")),
            heartbeat: with_lib(include_str!("lua/heartbeat.lua")),
            finish: with_lib(include_str!("lua/finish.lua")),
            reap: with_lib(include_str!("lua/reap.lua")),
            cancel: with_lib(include_str!("lua/cancel.lua")),
            limits: with_lib(include_str!("lua/limits.lua")),
            gcra: with_lib(include_str!("lua/gcra.lua")),
            budget: with_lib(include_str!("lua/budget.lua")),
            list: with_lib(include_str!("lua/list.lua")),
            approve: with_lib(include_str!("lua/approve.lua")),
        }
    }
}

/// Tokens and cost (micro-dollars): an amount, a reservation or a limit
/// (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub micro_usd: u64,
}

/// A tenant-registered secret as stored: sealed with
/// `secrets.encryption_key`, shown only by its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSecret {
    pub sealed: String,
    pub fingerprint: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// What a run token opens: the run and its tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayGrant {
    pub run: RunId,
    pub tenant: String,
}

/// Client for the queue. Cheap to clone; clones share one multiplexed
/// connection that reconnects by itself.
#[derive(Clone)]
pub struct RunQueue {
    conn: Conn,
    config: Arc<RedisConfig>,
    /// For the connections opened later (Pub/Sub).
    outbound: Arc<Outbound>,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

const RECORD_FIELDS: [&str; 16] = [
    "id",
    "spec",
    "state",
    "attempt",
    "max_attempts",
    "created_ms",
    "started_ms",
    "finished_ms",
    "worker",
    "stop_reason",
    "artifacts",
    "last_error",
    "epoch",
    "cancel_by",
    "facts",
    "approved_by",
];

impl RunQueue {
    pub async fn connect(config: &RedisConfig, outbound: &Outbound) -> Result<Self, QueueError> {
        Ok(Self {
            conn: Conn::open(config, outbound).await?,
            outbound: Arc::new(outbound.clone()),
            config: Arc::new(config.clone()),
            prefix: format!("{{{}}}:", config.namespace).into(),
            scripts: Arc::new(Scripts::load()),
        })
    }

    fn ttl_seconds(&self) -> u64 {
        self.config.finished_run_ttl_seconds
    }

    fn dead_keep_ms(&self) -> u64 {
        self.config.dead_letter_keep_seconds * 1000
    }

    /// The Pub/Sub channel on which `worker` is nudged about cancels.
    pub fn control_channel(&self, worker: &str) -> String {
        self.key(&format!("ctl:{worker}"))
    }

    /// The deployment's namespace: every key is under `{namespace}:`.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Stores a new run and makes it claimable, unless `idempotency` names
    /// a key used before, in which case the earlier run is returned.
    pub async fn enqueue(
        &self,
        id: RunId,
        spec: &RunSpec,
        max_attempts: u32,
        idempotency: Option<&Idempotency>,
    ) -> Result<Enqueued, QueueError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt(id, e))?;
        let mut conn = self.conn.clone();
        let (kind, run, detail): (String, String, u64) = self
            .scripts
            .enqueue
            .key(&*self.prefix)
            .arg(id.to_string())
            .arg(&spec.tenant)
            .arg(spec.repository.to_string())
            .arg(spec.priority.as_str())
            .arg(spec_json)
            .arg(max_attempts)
            .arg(idempotency.map_or("", |i| i.key.as_str()))
            .arg(idempotency.map_or("", |i| i.fingerprint.as_str()))
            .arg(idempotency.map_or(0, |i| i.ttl.as_millis() as u64))
            .arg(if spec.policy.as_ref().is_some_and(|p| p.needs_approval()) { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        match kind.as_str() {
            "created" => Ok(Enqueued::Created { created_ms: detail }),
            _ => Ok(Enqueued::Existing { id: run.parse().map_err(|e| corrupt(&run, e))?, same_request: detail == 1 }),
        }
    }

    /// Takes the next run, if any, and leases it to `worker` for `lease`.
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<ClaimedRun>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Option<(String, u64, u32, u32, String)> = self
            .scripts
            .claim
            .key(&*self.prefix)
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let Some((id, epoch, attempt, max_attempts, spec)) = reply else {
            return Ok(None);
        };
        let id: RunId = id.parse().map_err(|e| corrupt(&id, e))?;
        let spec = serde_json::from_str(&spec).map_err(|e| corrupt(id, e))?;
        Ok(Some(ClaimedRun { id, epoch, attempt, max_attempts, spec }))
    }

    /// Extends the leases `worker` still holds. Returns, per run, what the
    /// worker must do: carry on, stop because of a cancel, or stop because
    /// the lease is lost.
    pub async fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        held: &[(RunId, u64)],
    ) -> Result<Vec<LeaseStatus>, QueueError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.heartbeat.key(&*self.prefix);
        invocation.arg(worker).arg(lease.as_millis() as u64);
        for (id, epoch) in held {
            invocation.arg(id.to_string()).arg(*epoch);
        }
        let statuses: Vec<u8> = invocation.invoke_async(&mut conn).await?;
        Ok(statuses
            .into_iter()
            .map(|s| match s {
                1 => LeaseStatus::Held,
                2 => LeaseStatus::CancelRequested,
                _ => LeaseStatus::Lost,
            })
            .collect())
    }

    /// Hands a run back. Returns its new state, or `None` when the lease was
    /// lost (another worker may own the run now; the result is discarded).
    pub async fn finish(&self, run: &ClaimedRun, outcome: &Outcome) -> Result<Option<RunState>, QueueError> {
        let (kind, reason, artifacts, delay, facts) = match outcome {
            Outcome::Done { reason, artifacts, facts } => {
                ("done", Some(reason), artifacts.as_slice(), Duration::ZERO, facts.as_deref())
            }
            Outcome::Retry { reason, delay } => ("retry", Some(reason), &[][..], *delay, None),
            Outcome::Release => ("release", None, &[][..], Duration::ZERO, None),
        };
        let facts_json = facts.map(serde_json::to_string).transpose().map_err(|e| corrupt(run.id, e))?;
        let reason_json = reason.map(serde_json::to_string).transpose().map_err(|e| corrupt(run.id, e))?;
        let final_state = reason.map_or(RunState::Queued, StopReason::final_state);
        let artifacts_json = serde_json::to_string(artifacts).map_err(|e| corrupt(run.id, e))?;
        let mut conn = self.conn.clone();
        let state: Option<String> = self
            .scripts
            .finish
            .key(&*self.prefix)
            .arg(run.id.to_string())
            .arg(run.epoch)
            .arg(kind)
            .arg(reason_json.unwrap_or_default())
            .arg(final_state.as_str())
            .arg(artifacts_json)
            .arg(self.ttl_seconds())
            .arg(delay.as_millis() as u64)
            .arg(self.dead_keep_ms())
            .arg(facts_json.unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        state.map(|s| s.parse().map_err(|e| corrupt(run.id, e))).transpose()
    }

    /// Reclaims up to `limit` runs whose lease expired. Returns their ids.
    pub async fn reap(&self, limit: usize) -> Result<Vec<RunId>, QueueError> {
        let reason = StopReason::InfrastructureError {
            message: "the worker running it stopped heartbeating and no attempt is left".to_owned(),
        };
        let reason = serde_json::to_string(&reason).unwrap_or_default();
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .scripts
            .reap
            .key(&*self.prefix)
            .arg(limit)
            .arg(self.ttl_seconds())
            .arg(reason)
            .arg(self.dead_keep_ms())
            .invoke_async(&mut conn)
            .await?;
        ids.iter().map(|id| id.parse().map_err(|e| corrupt(id, e))).collect()
    }

    pub async fn get(&self, id: RunId) -> Result<Option<RunRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = conn.hmget(self.key(&format!("job:{id}")), &RECORD_FIELDS[..]).await?;
        if values[0].is_none() {
            return Ok(None);
        }
        record_from_fields(values).map(Some)
    }

    /// Lists runs newest first, optionally in one state, after `cursor`.
    pub async fn list(
        &self,
        state: Option<RunState>,
        cursor: Option<RunId>,
        limit: usize,
    ) -> Result<RunPage, QueueError> {
        let mut conn = self.conn.clone();
        let (ids, next): (Vec<String>, String) = self
            .scripts
            .list
            .key(&*self.prefix)
            .arg(state.map_or("all", RunState::as_str))
            .arg(cursor.map(|c| c.to_string()).unwrap_or_default())
            .arg(limit.clamp(1, 100))
            .invoke_async(&mut conn)
            .await?;
        let next_cursor = if next.is_empty() { None } else { Some(next.parse().map_err(|e| corrupt(&next, e))?) };
        if ids.is_empty() {
            return Ok(RunPage { runs: Vec::new(), next_cursor });
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hmget(self.key(&format!("job:{id}")), &RECORD_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
        let runs =
            rows.into_iter().filter(|row| row[0].is_some()).map(record_from_fields).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if next.is_empty() { None } else { Some(next.parse().map_err(|e| corrupt(&next, e))?) };
        Ok(RunPage { runs, next_cursor })
    }

    /// Approves a run waiting for approval: it joins its queue where it was
    /// accepted. Returns the state after the call, or `None` when the run
    /// does not exist.
    pub async fn approve(&self, id: RunId, by: &str) -> Result<Option<RunState>, QueueError> {
        let mut conn = self.conn.clone();
        let state: Option<String> =
            self.scripts.approve.key(&*self.prefix).arg(id.to_string()).arg(by).invoke_async(&mut conn).await?;
        state.map(|s| s.parse().map_err(|e| corrupt(id, e))).transpose()
    }

    /// Every run not finished yet (queued, delayed, running, cancelling).
    pub async fn live_runs(&self) -> Result<Vec<RunRecord>, QueueError> {
        let mut live = Vec::new();
        for state in RunState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let mut cursor = None;
            loop {
                let page = self.list(Some(state), cursor, 100).await?;
                live.extend(page.runs);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(live)
    }

    /// Appends output of a running run to its tail in Redis (capped).
    pub async fn append_log(&self, id: RunId, chunk: &[u8]) -> Result<(), QueueError> {
        let key = self.key(&format!("log:{id}"));
        let mut conn = self.conn.clone();
        redis::pipe()
            .rpush(&key, chunk)
            .ignore()
            .ltrim(&key, -LOG_TAIL_CHUNKS, -1)
            .ignore()
            .expire(&key, self.ttl_seconds() as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The tail of a run's output kept in Redis.
    pub async fn log_tail(&self, id: RunId) -> Result<Vec<u8>, QueueError> {
        let mut conn = self.conn.clone();
        let chunks: Vec<Vec<u8>> = conn.lrange(self.key(&format!("log:{id}")), 0, -1).await?;
        Ok(chunks.concat())
    }

    /// Cancels a run on behalf of `by`. Returns the states after and before,
    /// or `None` when the run does not exist.
    pub async fn cancel(&self, id: RunId, by: &str) -> Result<Option<(RunState, RunState)>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Option<(String, String)> = self
            .scripts
            .cancel
            .key(&*self.prefix)
            .arg(id.to_string())
            .arg(by)
            .arg(self.ttl_seconds())
            .invoke_async(&mut conn)
            .await?;
        reply
            .map(|(after, before)| {
                Ok((after.parse().map_err(|e| corrupt(id, e))?, before.parse().map_err(|e| corrupt(id, e))?))
            })
            .transpose()
    }

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
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .limits
            .key(&*self.prefix)
            .arg(kind)
            .arg(tenant)
            .arg(repo)
            .arg(max_running.map(|m| m.to_string()).unwrap_or_default())
            .arg(weight.map(|w| w.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn limits(&self) -> Result<Limits, QueueError> {
        let mut limits = Limits::default();
        for (field, value) in self.scan_hash("limits").await? {
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

    /// Replaces the policy override of a tenant (`repo` empty) or of one
    /// tenant's repository; an empty override removes it.
    pub async fn set_policy(&self, tenant: &str, repo: Option<&str>, over: &PolicyOverride) -> Result<(), QueueError> {
        let field = policy_field(tenant, repo);
        let mut conn = self.conn.clone();
        if *over == PolicyOverride::default() {
            let _: i64 = conn.hdel(self.key("policy"), field).await?;
        } else {
            let json = serde_json::to_string(over).map_err(|e| corrupt(&field, e))?;
            let _: i64 = conn.hset(self.key("policy"), field, json).await?;
        }
        Ok(())
    }

    /// Every policy override, as `(tenant, repository or None, override)`.
    pub async fn policies(&self) -> Result<Vec<(String, Option<String>, PolicyOverride)>, QueueError> {
        let mut out = Vec::new();
        for (field, json) in self.scan_hash("policy").await? {
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
        let fields = [policy_field(tenant, None), policy_field(tenant, Some(repo))];
        let found: Vec<Option<String>> = conn.hmget(self.key("policy"), &fields[..]).await?;
        let mut policy = defaults;
        for json in found.into_iter().flatten() {
            let over: PolicyOverride = serde_json::from_str(&json).map_err(|e| corrupt(tenant, e))?;
            policy = policy.with(&over);
        }
        Ok(policy)
    }

    /// Takes `cost` from the shared rate `name` (`per_minute`, with a burst
    /// of as many). `Ok(None)` when allowed, `Ok(Some(wait))` when not.
    pub async fn rate_limit(&self, name: &str, per_minute: u64, cost: u64) -> Result<Option<Duration>, QueueError> {
        let (allowed, retry_ms) = self.gcra(name, per_minute, cost as i64).await?;
        Ok((allowed == 0).then(|| Duration::from_millis(retry_ms)))
    }

    /// Gives back `amount` taken from the shared rate `name` but not used.
    pub async fn rate_refund(&self, name: &str, per_minute: u64, amount: u64) -> Result<(), QueueError> {
        self.gcra(name, per_minute, -(amount as i64)).await.map(|_| ())
    }

    async fn gcra(&self, name: &str, per_minute: u64, cost: i64) -> Result<(u8, u64), QueueError> {
        let interval_ms = 60_000.0 / per_minute.max(1) as f64;
        let mut conn = self.conn.clone();
        Ok(self
            .scripts
            .gcra
            .key(&*self.prefix)
            .arg(name)
            .arg(interval_ms)
            .arg(per_minute)
            .arg(cost)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Reserves a call's worst case against the run's and the tenant's
    /// budgets: `Ok(day)`, the UTC day (days since the epoch) whose tenant
    /// budget holds the reservation, or `Err(which)` naming the budget
    /// that does not cover it.
    pub async fn reserve_budget(
        &self,
        run: RunId,
        tenant: &str,
        amount: Spend,
        run_limit: Spend,
        tenant_limit: Spend,
    ) -> Result<Result<u64, String>, QueueError> {
        let args = [amount.tokens, 0, run_limit.tokens, tenant_limit.tokens];
        let cost = [amount.micro_usd, 0, run_limit.micro_usd, tenant_limit.micro_usd];
        let (ok, which, day) = self.budget("reserve", run, tenant, args, cost, None).await?;
        Ok(if ok == 1 { Ok(day) } else { Err(which) })
    }

    /// Releases a reservation made on `day` and books what the call really
    /// used there, even when the call ended on the next day.
    pub async fn settle_budget(
        &self,
        run: RunId,
        tenant: &str,
        day: u64,
        reserved: Spend,
        actual: Spend,
    ) -> Result<(), QueueError> {
        let args = [reserved.tokens, actual.tokens, 0, 0];
        let cost = [reserved.micro_usd, actual.micro_usd, 0, 0];
        self.budget("settle", run, tenant, args, cost, Some(day)).await.map(|_| ())
    }

    /// A tenant's budget on one UTC day: (used, reserved).
    pub async fn tenant_day_spend(&self, tenant: &str, day: u64) -> Result<(Spend, Spend), QueueError> {
        self.spend_at(&format!("budget:tenant:{tenant}:{day}")).await
    }

    /// What a run has used and still has reserved.
    pub async fn run_spend(&self, run: RunId) -> Result<(Spend, Spend), QueueError> {
        self.spend_at(&format!("budget:run:{run}")).await
    }

    async fn spend_at(&self, suffix: &str) -> Result<(Spend, Spend), QueueError> {
        let mut conn = self.conn.clone();
        let fields = ["used", "reserved", "cost_used", "cost_reserved"];
        let v: Vec<Option<i64>> = conn.hmget(self.key(suffix), &fields).await?;
        // A negative count would be a booking bug; it reads as 0, never wraps.
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok((Spend { tokens: at(0), micro_usd: at(2) }, Spend { tokens: at(1), micro_usd: at(3) }))
    }

    async fn budget(
        &self,
        op: &str,
        run: RunId,
        tenant: &str,
        tokens: [u64; 4],
        cost: [u64; 4],
        day: Option<u64>,
    ) -> Result<(u8, String, u64), QueueError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.budget.key(&*self.prefix);
        invocation.arg(op).arg(run.to_string()).arg(tenant);
        for n in tokens.iter().chain(&cost) {
            invocation.arg(*n);
        }
        invocation.arg(day.map(|d| d.to_string()).unwrap_or_default());
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// The provider policy set through the API, if any.
    pub async fn llm_policy(&self) -> Result<Option<LlmPolicy>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(self.key("llm_policy")).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt("llm_policy", e))).transpose()
    }

    pub async fn set_llm_policy(&self, policy: &LlmPolicy) -> Result<(), QueueError> {
        let json = serde_json::to_string(policy).map_err(|e| corrupt("llm_policy", e))?;
        let mut conn = self.conn.clone();
        let _: () = conn.set(self.key("llm_policy"), json).await?;
        Ok(())
    }

    /// Records a webhook delivery id; `false` when it was seen before
    /// (within a week).
    pub async fn first_delivery(&self, delivery: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("delivery:{delivery}")))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(7 * 86400)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a delivery whose processing failed, so a redelivery works.
    pub async fn forget_delivery(&self, delivery: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.key(&format!("delivery:{delivery}"))).await?;
        Ok(())
    }

    /// Registers (or replaces) a tenant's secret, sealed.
    pub async fn put_tenant_secret(&self, tenant: &str, name: &str, secret: &StoredSecret) -> Result<(), QueueError> {
        let json = serde_json::to_string(secret).map_err(|e| corrupt("tenant secret", e))?;
        let mut conn = self.conn.clone();
        let _: i64 = conn.hset(self.key(&format!("secrets:{tenant}")), name, json).await?;
        Ok(())
    }

    /// A tenant's registered secrets by name, sealed.
    pub async fn tenant_secrets(&self, tenant: &str) -> Result<BTreeMap<String, StoredSecret>, QueueError> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.key(&format!("secrets:{tenant}"))).await?;
        all.into_iter()
            .map(|(name, json)| Ok((name, serde_json::from_str(&json).map_err(|e| corrupt("tenant secret", e))?)))
            .collect()
    }

    /// Whether the secret existed.
    pub async fn delete_tenant_secret(&self, tenant: &str, name: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn.hdel(self.key(&format!("secrets:{tenant}")), name).await?;
        Ok(removed > 0)
    }

    /// Stores a run's gateway token (its hash) until `ttl` passes or it is
    /// revoked, with what a gateway needs to serve it.
    pub async fn put_gateway_token(&self, hash: &str, grant: &GatewayGrant, ttl: Duration) -> Result<(), QueueError> {
        let json = serde_json::to_string(grant).map_err(|e| corrupt("gateway grant", e))?;
        let mut conn = self.conn.clone();
        let ttl_ms = ttl.as_millis() as u64;
        let _: () = redis::pipe()
            .pset_ex(self.key(&format!("gwtok:{hash}")), json, ttl_ms)
            .pset_ex(self.key(&format!("gwtok:run:{}", grant.run)), hash, ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// What a live gateway token grants.
    pub async fn gateway_token(&self, hash: &str) -> Result<Option<GatewayGrant>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(self.key(&format!("gwtok:{hash}"))).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt("gateway grant", e))).transpose()
    }

    /// A standalone gateway hands each finished call of a run to the run's
    /// worker through this list; `open` counts calls still in flight.
    pub async fn gateway_call_started(&self, run: RunId) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = self.key(&format!("gwcalls:open:{run}"));
        let _: () = redis::pipe().incr(&key, 1).expire(&key, 86400).query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn gateway_call_finished(&self, run: RunId, call: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let (list, open) = (self.key(&format!("gwcalls:{run}")), self.key(&format!("gwcalls:open:{run}")));
        let _: () = redis::pipe().rpush(&list, call).expire(&list, 86400).decr(&open, 1).query_async(&mut conn).await?;
        Ok(())
    }

    /// The calls a standalone gateway reported for a run, waiting up to
    /// `wait` for those still in flight; removes them.
    pub async fn take_gateway_calls(&self, run: RunId, wait: Duration) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (list, open) = (self.key(&format!("gwcalls:{run}")), self.key(&format!("gwcalls:open:{run}")));
        let until = std::time::Instant::now() + wait;
        loop {
            let in_flight: Option<i64> = conn.get(&open).await?;
            if in_flight.unwrap_or(0) <= 0 || std::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (calls, _, _): (Vec<String>, i64, i64) =
            redis::pipe().lrange(&list, 0, -1).del(&list).del(&open).query_async(&mut conn).await?;
        Ok(calls)
    }

    /// Revokes the gateway token of `run`, if it has a live one; whether it had.
    pub async fn revoke_run_gateway_token(&self, run: RunId) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let index = self.key(&format!("gwtok:run:{run}"));
        let hash: Option<String> = conn.get(&index).await?;
        let Some(hash) = hash else { return Ok(false) };
        let (removed, _): (i64, i64) =
            redis::pipe().del(self.key(&format!("gwtok:{hash}"))).del(&index).query_async(&mut conn).await?;
        Ok(removed > 0)
    }

    pub async fn revoke_gateway_token(&self, run: RunId, hash: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(&[self.key(&format!("gwtok:{hash}")), self.key(&format!("gwtok:run:{run}"))]).await?;
        Ok(())
    }

    /// Exact depth counters, maintained by every transition script.
    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let mut depth = Depth::default();
        for (field, value) in self.scan_hash("depth").await? {
            let Ok(n) = value.parse::<i64>() else { continue };
            match field.split_once(":t:") {
                Some((state, tenant)) => {
                    depth.tenants.entry(tenant.to_owned()).or_default().insert(state.to_owned(), n);
                }
                None => {
                    depth.totals.insert(field, n);
                }
            }
        }
        for (field, value) in self.scan_hash("depth:r").await? {
            let Ok(n) = value.parse::<i64>() else { continue };
            let mut parts = field.splitn(3, ':');
            if let (Some(state), Some(tenant), Some(repo)) = (parts.next(), parts.next(), parts.next()) {
                depth.repositories.entry((tenant.to_owned(), repo.to_owned())).or_default().insert(state.to_owned(), n);
            }
        }
        let mut conn = self.conn.clone();
        depth.dead_letters = conn.zcard(self.key("dead")).await?;
        Ok(depth)
    }

    /// The newest dead letters, up to `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, f64)> = conn.zrevrange_withscores(self.key("dead"), 0, limit as isize - 1).await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for every reason, not one per letter.
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let reasons: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.key("dead:reason")).arg(&ids).query_async(&mut conn).await?;
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

    /// Reads a hash incrementally (HSCAN), never in one blocking call.
    async fn scan_hash(&self, suffix: &str) -> Result<Vec<(String, String)>, QueueError> {
        let mut conn = self.conn.clone();
        let mut iter: redis::AsyncIter<(String, String)> = conn.hscan(self.key(suffix)).await?;
        let mut out = Vec::new();
        while let Some(item) = iter.next().await {
            out.push(item?);
        }
        Ok(out)
    }

    /// Subscribes to `worker`'s control channel; each message is the id of a
    /// run someone cancelled.
    pub async fn control_messages(
        &self,
        worker: &str,
    ) -> Result<impl futures::Stream<Item = String> + Send + use<>, QueueError> {
        let client = conn::client(&self.config.url, &self.outbound)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.control_channel(worker)).await?;
        Ok(pubsub.into_on_message().map(|msg| msg.get_payload::<String>().unwrap_or_default()))
    }
}

fn policy_field(tenant: &str, repo: Option<&str>) -> String {
    match repo {
        Some(repo) => format!("repo:{tenant}:{repo}"),
        None => format!("tenant:{tenant}"),
    }
}

fn corrupt(id: impl ToString, detail: impl ToString) -> QueueError {
    QueueError::Corrupt { id: id.to_string(), detail: detail.to_string() }
}

fn record_from_fields(values: Vec<Option<String>>) -> Result<RunRecord, QueueError> {
    let [
        id,
        spec,
        state,
        attempt,
        max_attempts,
        created,
        started,
        finished,
        worker,
        stop_reason,
        artifacts,
        last_error,
        _epoch,
        cancelled_by,
        facts,
        approved_by,
    ]: [Option<String>; 16] = values.try_into().map_err(|_| corrupt("?", "wrong field count"))?;
    let id = id.unwrap_or_default();
    let bad = |detail: &str| corrupt(&id, detail);
    let number = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
    let run_id: RunId = id.parse().map_err(|e| corrupt(&id, e))?;
    let spec: RunSpec = serde_json::from_str(spec.as_deref().unwrap_or_default()).map_err(|e| corrupt(&id, e))?;
    let state: RunState = state.as_deref().unwrap_or_default().parse().map_err(|e| corrupt(&id, e))?;
    let stop_reason = stop_reason
        .filter(|s| !s.is_empty())
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| corrupt(&id, e))?;
    let artifacts = artifacts
        .filter(|s| !s.is_empty())
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| corrupt(&id, e))?
        .unwrap_or_default();
    let facts =
        facts.filter(|s| !s.is_empty()).map(|s| serde_json::from_str(&s)).transpose().map_err(|e| corrupt(&id, e))?;
    Ok(RunRecord {
        facts,
        id: run_id,
        spec,
        state,
        attempt: number(attempt).ok_or_else(|| bad("attempt missing"))? as u32,
        max_attempts: number(max_attempts).ok_or_else(|| bad("max_attempts missing"))? as u32,
        created_at_ms: number(created).ok_or_else(|| bad("created_ms missing"))?,
        started_at_ms: number(started),
        finished_at_ms: number(finished),
        worker,
        stop_reason,
        artifacts,
        last_error,
        cancelled_by,
        approved_by,
    })
}

impl RunQueue {
    /// Workers seen (claim or heartbeat) within `window`, by Redis time.
    pub async fn live_workers(&self, window: Duration) -> Result<std::collections::HashSet<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("workers"))
            .arg(since)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(100_000)
            .query_async(&mut conn)
            .await?;
        Ok(names.into_iter().collect())
    }
}
