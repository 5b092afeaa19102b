//! Paddock's Redis queue: run records, ready queues, leases with fencing
//! epochs, and the reaper. Every state change is one Lua script, one round
//! trip, with timestamps from Redis `TIME`.
//!
//! Keys (all under the prefix `{<namespace>}:`, one hash slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `job:<id>` | hash | the run record; expires after a terminal state |
//! | `q:<tenant>:<repo>` | zset | a repository's ready runs, FIFO by enqueue sequence |
//! | `seq` | string | the enqueue sequence |
//! | `t:<tenant>:repos` | zset | a tenant's repositories with ready runs, by head score |
//! | `ready` | zset | tenants with ready runs, by virtual time (fair share) |
//! | `vtime` | hash | each tenant's virtual time |
//! | `delayed` | zset | runs waiting out a retry backoff, by due ms |
//! | `leases` | zset | running runs, by lease deadline ms |
//! | `workers` | zset | worker names, by last claim or heartbeat ms |
//! | `depth` | hash | exact counters per state and per `state:t:<tenant>` |
//! | `idx:all`, `idx:state:<s>` | zset (lex) | run ids for listing, newest first |
//! | `events` | stream | state changes, capped |
//! | `log:<id>` | list | the tail of a running run's output |

mod backend;
pub mod leases;

use std::sync::Arc;
use std::time::Duration;

use common::config::RedisConfig;
use common::{RunId, RunRecord, RunSpec, RunState, StopReason};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

pub use backend::RunBackend;
pub use leases::{LeaseGuard, Leases};

/// How many log chunks of a running run Redis keeps for `GET .../logs`.
const LOG_TAIL_CHUNKS: isize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("run record {id} is corrupt: {detail}")]
    Corrupt { id: String, detail: String },
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
    Done { reason: StopReason, artifacts: Vec<String> },
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

struct Scripts {
    enqueue: Script,
    claim: Script,
    heartbeat: Script,
    finish: Script,
    reap: Script,
    list: Script,
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
            list: with_lib(include_str!("lua/list.lua")),
        }
    }
}

/// Client for the queue. Cheap to clone; clones share one multiplexed
/// connection that reconnects by itself.
#[derive(Clone)]
pub struct RunQueue {
    conn: ConnectionManager,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    finished_ttl_seconds: u64,
}

const RECORD_FIELDS: [&str; 13] = [
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
];

impl RunQueue {
    pub async fn connect(config: &RedisConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str())?;
        // A long response timeout: a slow Redis must delay a worker, never
        // kill it (apalis-redis#76 died on the 500 ms default).
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, manager_config).await?;
        Ok(Self {
            conn,
            prefix: format!("{{{}}}:", config.namespace).into(),
            scripts: Arc::new(Scripts::load()),
            finished_ttl_seconds: config.finished_run_ttl_seconds,
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Stores a new run and makes it claimable. Returns its creation time.
    pub async fn enqueue(&self, id: RunId, spec: &RunSpec, max_attempts: u32) -> Result<u64, QueueError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt(id, e))?;
        let mut conn = self.conn.clone();
        let created: u64 = self
            .scripts
            .enqueue
            .key(&*self.prefix)
            .arg(id.to_string())
            .arg(&spec.tenant)
            .arg(spec.repository.to_string())
            .arg(spec_json)
            .arg(max_attempts)
            .invoke_async(&mut conn)
            .await?;
        Ok(created)
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

    /// Extends the leases `worker` still holds. Returns, per run, whether the
    /// lease is still held; a worker must stop any run whose lease is lost.
    pub async fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        held: &[(RunId, u64)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.heartbeat.key(&*self.prefix);
        invocation.arg(worker).arg(lease.as_millis() as u64);
        for (id, epoch) in held {
            invocation.arg(id.to_string()).arg(*epoch);
        }
        let statuses: Vec<u8> = invocation.invoke_async(&mut conn).await?;
        Ok(statuses.into_iter().map(|s| s == 1).collect())
    }

    /// Hands a run back. Returns its new state, or `None` when the lease was
    /// lost (another worker may own the run now; the result is discarded).
    pub async fn finish(&self, run: &ClaimedRun, outcome: &Outcome) -> Result<Option<RunState>, QueueError> {
        let (kind, reason, artifacts, delay) = match outcome {
            Outcome::Done { reason, artifacts } => ("done", Some(reason), artifacts.as_slice(), Duration::ZERO),
            Outcome::Retry { reason, delay } => ("retry", Some(reason), &[][..], *delay),
            Outcome::Release => ("release", None, &[][..], Duration::ZERO),
        };
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
            .arg(self.finished_ttl_seconds)
            .arg(delay.as_millis() as u64)
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
            .arg(self.finished_ttl_seconds)
            .arg(reason)
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

    /// Appends output of a running run to its tail in Redis (capped).
    pub async fn append_log(&self, id: RunId, chunk: &[u8]) -> Result<(), QueueError> {
        let key = self.key(&format!("log:{id}"));
        let mut conn = self.conn.clone();
        redis::pipe()
            .rpush(&key, chunk)
            .ignore()
            .ltrim(&key, -LOG_TAIL_CHUNKS, -1)
            .ignore()
            .expire(&key, self.finished_ttl_seconds as i64)
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

    /// The exact depth counters, e.g. `queued`, `running`, `queued:t:<tenant>`.
    pub async fn depth(&self) -> Result<Vec<(String, i64)>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(self.key("depth")).await?)
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
    ]: [Option<String>; 13] = values.try_into().map_err(|_| corrupt("?", "wrong field count"))?;
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
    Ok(RunRecord {
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
