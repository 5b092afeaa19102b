//! Runs: enqueue, claim, heartbeat, finish, reap, cancel, approve, and
//! reading them back (record, list, log tail); the workers' control
//! channel and liveness.

use std::time::Duration;

use common::{RunFacts, RunId, RunRecord, RunSpec, RunState, StopReason};
use futures::StreamExt;
use redis::AsyncCommands;

use super::scripts::{
    ApproveArgs, CancelArgs, ClaimArgs, EnqueueArgs, EnqueueManyArgs, FinishArgs, FinishManyArgs, HeartbeatArgs,
    IdemArgs, ListArgs, ReapArgs,
};
use super::{QueueError, RunQueue, conn, corrupt};

/// `enqueue.lua`'s answer for one run: kind, run, detail, state.
pub(crate) type EnqueueReply = (String, String, u64, Option<String>);

/// How many log chunks of a running run Redis keeps for `GET .../logs`.
pub const LOG_TAIL_CHUNKS: usize = 2000;

/// A run this worker holds a lease on, under `epoch`.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: RunId,
    pub epoch: u64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub spec: RunSpec,
    /// The worker's span of this attempt as a W3C `traceparent`, when
    /// spans are exported: what the run's model calls hang under.
    pub trace: Option<String>,
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
    /// Already scoped to the credential's holder: `<holder>:<key>`.
    pub key: String,
    /// Digest of the request, to tell a retry from a different request.
    pub fingerprint: String,
    pub ttl: Duration,
}

/// How many workers a run may lose (they stopped heartbeating while
/// running it) before it is failed rather than queued again: one
/// repository cannot take down worker after worker.
pub const MAX_WORKER_LOSSES: u32 = 2;

/// The request that holds an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHolder {
    pub run: RunId,
    /// Whether it had the same fingerprint.
    pub same_request: bool,
    /// Still being accepted: its run may not exist yet (or ever).
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Created {
        created_ms: u64,
        /// `queued`, `awaiting_approval`, or `waiting` behind the run of
        /// the same pull request.
        state: RunState,
    },
    /// The key was used before for `id`; `same_request` tells whether the
    /// request was the same.
    Existing { id: RunId, same_request: bool },
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
    /// Stores a new run with its request's audit event `event` (one
    /// script: neither is written without the other) and makes it
    /// claimable, unless `idempotency` names a key used before, in which
    /// case the earlier run is returned and nothing written. Returns once
    /// the event is durable as `audit.durability` says; refuses while the
    /// oldest event not yet shipped is older than the ship delay.
    ///
    /// With `tenancy`, the script refuses the run (`TenancyChanged`, nothing
    /// written) unless declared tenants and policies are still as they were
    /// at that [`TenancySnapshot`](crate::TenancySnapshot) version.
    pub async fn enqueue(
        &self,
        id: RunId,
        spec: &RunSpec,
        max_attempts: u32,
        idempotency: Option<&Idempotency>,
        event: common::audit::SealedEvent,
        tenancy: Option<u64>,
    ) -> Result<Enqueued, QueueError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt(id, e))?;
        let lane = spec.follow_up.as_ref().map(|f| f.lane(&spec.repository)).unwrap_or_default();
        let args = EnqueueArgs {
            id: id.to_string(),
            tenant: spec.tenant.clone(),
            // Counted, capped and queued in lowercase: one repository
            // however its name is written.
            repository: spec.repository.to_string().to_ascii_lowercase(),
            band: spec.priority.as_str(),
            spec_json,
            max_attempts,
            idempotency_key: idempotency.map_or_else(String::new, |i| i.key.clone()),
            fingerprint: idempotency.map_or_else(String::new, |i| i.fingerprint.clone()),
            idempotency_ttl_ms: idempotency.map_or(0, |i| i.ttl.as_millis() as u64),
            hold: spec.policy.as_ref().is_some_and(|p| p.needs_approval()),
            lane,
            ttl_seconds: self.ttl_seconds(),
            event,
            tenancy,
        };
        // Runs accepted at the same time share one script call (`batch.rs`),
        // and so one fsync (or one WAIT for a replica).
        let queue = self.clone();
        let (kind, run, detail, state) = self
            .enqueues
            .call(args, move |runs| {
                let queue = queue.clone();
                async move {
                    let max_backlog_ms = queue.audit.max_ship_delay.as_millis() as u64;
                    let args = EnqueueManyArgs { runs, max_backlog_ms, audit_keep: super::identity::AUDIT_INDEX_KEEP };
                    let replies = queue.run_script::<_, Vec<EnqueueReply>>(&args).await?;
                    if replies.iter().any(|(kind, ..)| kind == "created") {
                        queue.audit_durable().await?;
                    }
                    Ok(replies)
                }
            })
            .await?;
        match kind.as_str() {
            "created" => {
                let state = state.unwrap_or_default();
                Ok(Enqueued::Created { created_ms: detail, state: state.parse().map_err(|e| corrupt(id, e))? })
            }
            "existing" => {
                Ok(Enqueued::Existing { id: run.parse().map_err(|e| corrupt(&run, e))?, same_request: detail == 1 })
            }
            "backlog" => Err(QueueError::AuditBacklog { age_ms: detail }),
            "stale" => Err(QueueError::TenancyChanged),
            _ => Err(corrupt(id, "a run with this id exists already")),
        }
    }

    /// Claims `idempotency`'s key for run `id` before anything is written
    /// about the run (pending for at most a minute, until `enqueue`):
    /// `None` when it is now `id`'s, else who holds it.
    pub async fn reserve_idempotency(
        &self,
        id: RunId,
        idempotency: &Idempotency,
    ) -> Result<Option<KeyHolder>, QueueError> {
        let id = id.to_string();
        let (kind, run, same, pending): (String, String, u64, u64) =
            self.run_script(&idem_args(&id, idempotency, false)).await?;
        if kind == "reserved" {
            return Ok(None);
        }
        let run = run.parse().map_err(|e| corrupt(&run, e))?;
        Ok(Some(KeyHolder { run, same_request: same == 1, pending: pending == 1 }))
    }

    /// Gives up a reservation run `id` could not use (it was never created).
    pub async fn release_idempotency(&self, id: RunId, idempotency: &Idempotency) -> Result<(), QueueError> {
        let id = id.to_string();
        let _: (String, String, u64, u64) = self.run_script(&idem_args(&id, idempotency, true)).await?;
        Ok(())
    }

    /// Takes the next run, if any, and leases it to `worker` for `lease`.
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<ClaimedRun>, QueueError> {
        Ok(self.claim_many(worker, lease, 1).await?.pop())
    }

    /// Takes up to `n` runs in one call, in the order `n` claims would have
    /// taken them, and leases them to `worker` for `lease`. Ask only for
    /// runs there are free slots for: a claimed run's lease runs from now.
    pub async fn claim_many(&self, worker: &str, lease: Duration, n: usize) -> Result<Vec<ClaimedRun>, QueueError> {
        let args = ClaimArgs { worker, lease_ms: lease.as_millis() as u64, n: n.max(1) };
        let reply: Vec<(String, u64, u32, u32, String)> = self.run_script(&args).await?;
        reply
            .into_iter()
            .map(|(id, epoch, attempt, max_attempts, spec)| {
                let id: RunId = id.parse().map_err(|e| corrupt(&id, e))?;
                let spec = serde_json::from_str(&spec).map_err(|e| corrupt(id, e))?;
                Ok(ClaimedRun { id, epoch, attempt, max_attempts, spec, trace: None })
            })
            .collect()
    }

    /// Subscribes to the channel on which idle workers are woken (a band
    /// became claimable). Best effort: workers still poll, more slowly.
    pub async fn wake_messages(&self) -> Result<impl futures::Stream<Item = ()> + Send + use<>, QueueError> {
        let client = conn::client(&self.config.url, &self.outbound)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.keys.wake()).await?;
        Ok(pubsub.into_on_message().map(|_| ()))
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
        let held = held.iter().map(|(id, epoch)| (id.to_string(), *epoch)).collect();
        let statuses: Vec<u8> =
            self.run_script(&HeartbeatArgs { worker, lease_ms: lease.as_millis() as u64, held }).await?;
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
        let day = common::audit::now_ms() / 86_400_000;
        let ledger = facts.map(|facts| crate::costs::ledger_entries(&run.spec, facts));
        let ledger_key = self.keys.cost_ledger(&run.spec.tenant, day);
        let ledger_json = ledger.map(|l| serde_json::json!(l).to_string()).unwrap_or_default();
        let args = FinishArgs {
            id: run.id.to_string(),
            epoch: run.epoch,
            outcome: kind,
            reason_json: reason_json.unwrap_or_default(),
            final_state: final_state.as_str(),
            artifacts_json,
            ttl_seconds: self.ttl_seconds(),
            retry_delay_ms: delay.as_millis() as u64,
            dead_keep_ms: self.dead_keep_ms(),
            facts_json: facts_json.unwrap_or_default(),
            ledger_key: if ledger_json.is_empty() { String::new() } else { ledger_key },
            ledger_json,
            ledger_ttl_seconds: crate::costs::LEDGER_DAYS * 86_400,
        };
        // Runs finishing at once share one script call (`batch.rs`).
        let queue = self.clone();
        let state = self
            .finishes
            .call(args, move |batch| {
                let queue = queue.clone();
                async move { queue.run_script::<_, Vec<Option<String>>>(&FinishManyArgs(batch)).await }
            })
            .await?;
        state.map(|s| s.parse().map_err(|e| corrupt(run.id, e))).transpose()
    }

    /// Reclaims up to `limit` runs whose lease expired. Returns their ids.
    pub async fn reap(&self, limit: usize) -> Result<Vec<RunId>, QueueError> {
        let reason = StopReason::InfrastructureError {
            message: "the worker running it stopped heartbeating and no attempt is left".to_owned(),
        };
        let reason = serde_json::to_string(&reason).unwrap_or_default();
        let lost = StopReason::WorkersLost { count: MAX_WORKER_LOSSES };
        let lost = serde_json::to_string(&lost).unwrap_or_default();
        let args = ReapArgs {
            limit,
            ttl_seconds: self.ttl_seconds(),
            reason_json: &reason,
            dead_keep_ms: self.dead_keep_ms(),
            max_losses: MAX_WORKER_LOSSES,
            lost_reason_json: &lost,
        };
        let ids: Vec<String> = self.run_script(&args).await?;
        ids.iter().map(|id| id.parse().map_err(|e| corrupt(id, e))).collect()
    }

    pub async fn get(&self, id: RunId) -> Result<Option<RunRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = conn.hmget(self.keys.job(id), &RECORD_FIELDS[..]).await?;
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
        let cursor = cursor.map(|c| c.to_string()).unwrap_or_default();
        let args =
            ListArgs { index: state.map_or("all", RunState::as_str), cursor: &cursor, limit: limit.clamp(1, 100) };
        let (ids, next): (Vec<String>, String) = self.run_script(&args).await?;
        let next_cursor = if next.is_empty() { None } else { Some(next.parse().map_err(|e| corrupt(&next, e))?) };
        if ids.is_empty() {
            return Ok(RunPage { runs: Vec::new(), next_cursor });
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hmget(self.keys.job(id), &RECORD_FIELDS[..]);
        }
        let mut conn = self.conn.clone();
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
        let args = ApproveArgs { id: &id.to_string(), by, ttl_seconds: self.ttl_seconds() };
        let state: Option<String> = self.run_script(&args).await?;
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
    /// A stream capped at about [`LOG_TAIL_CHUNKS`] entries: each entry's
    /// id is where a live reader resumes (`Last-Event-ID`).
    pub async fn append_log(&self, id: RunId, chunk: &[u8]) -> Result<(), QueueError> {
        self.append_entry(id, "c", chunk).await
    }

    /// Marks in a running run's tail the step it starts now (`checkout`,
    /// `sandbox`, `agent`, ...): live readers show it beside the output.
    pub async fn append_phase(&self, id: RunId, phase: &str) -> Result<(), QueueError> {
        self.append_entry(id, "p", phase.as_bytes()).await
    }

    async fn append_entry(&self, id: RunId, field: &str, value: &[u8]) -> Result<(), QueueError> {
        let key = self.keys.log(id);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_TAIL_CHUNKS)
            .arg("*")
            .arg(field)
            .arg(value)
            .ignore()
            .expire(&key, self.ttl_seconds() as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The tail of a run's output kept in Redis.
    pub async fn log_tail(&self, id: RunId) -> Result<Vec<u8>, QueueError> {
        let entries = self.log_since(id, None, usize::MAX).await?;
        Ok(entries.into_iter().filter_map(|entry| entry.chunk).flatten().collect())
    }

    /// The entries of a run's output tail after entry `after` (from the
    /// oldest kept without it), at most `count`.
    pub async fn log_since(&self, id: RunId, after: Option<&str>, count: usize) -> Result<Vec<LogEntry>, QueueError> {
        let start = after.map_or_else(|| "-".to_owned(), |after| format!("({after}"));
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.keys.log(id)).arg(start).arg("+");
        if count != usize::MAX {
            cmd.arg("COUNT").arg(count);
        }
        // Each entry: its id and its fields (`c`: a chunk, `p`: a phase).
        type Entry = (String, Vec<(String, Vec<u8>)>);
        let entries: Vec<Entry> = cmd.query_async(&mut conn).await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let mut entry = LogEntry { id, chunk: None, phase: None };
                for (field, value) in fields {
                    match field.as_str() {
                        "c" => entry.chunk = Some(value),
                        "p" => entry.phase = Some(String::from_utf8_lossy(&value).into_owned()),
                        _ => {}
                    }
                }
                entry
            })
            .collect())
    }

    /// Cancels a run on behalf of `by`. Returns the states after and before,
    /// or `None` when the run does not exist.
    pub async fn cancel(&self, id: RunId, by: &str) -> Result<Option<(RunState, RunState)>, QueueError> {
        let args = CancelArgs { id: &id.to_string(), by, ttl_seconds: self.ttl_seconds() };
        let reply: Option<(String, String)> = self.run_script(&args).await?;
        reply
            .map(|(after, before)| {
                Ok((after.parse().map_err(|e| corrupt(id, e))?, before.parse().map_err(|e| corrupt(id, e))?))
            })
            .transpose()
    }

    /// The Pub/Sub channel on which `worker` is nudged about cancels.
    pub fn control_channel(&self, worker: &str) -> String {
        self.keys.control(worker)
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

    /// Workers seen (claim or heartbeat) within `window`, by Redis time.
    pub async fn live_workers(&self, window: Duration) -> Result<std::collections::HashSet<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.workers())
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

fn idem_args<'a>(id: &'a str, idempotency: &'a Idempotency, release: bool) -> IdemArgs<'a> {
    IdemArgs {
        release,
        key: &idempotency.key,
        id,
        fingerprint: &idempotency.fingerprint,
        ttl_ms: idempotency.ttl.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<Option<String>> {
        RECORD_FIELDS.iter().map(|name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| (*v).to_owned())).collect()
    }

    fn spec() -> String {
        serde_json::json!({
            "tenant": "payments", "repository": "acme/api", "base_ref": "main", "task_title": "t",
            "task_body": "", "requested_by": "dev@example.com", "agent_profile": "default"
        })
        .to_string()
    }

    #[test]
    fn a_record_reads_back_from_its_hash_fields() {
        let id = RunId::new().to_string();
        let reason = serde_json::to_string(&StopReason::AgentFailed { exit_code: 3 }).expect("json");
        let record = record_from_fields(fields(&[
            ("id", &id),
            ("spec", &spec()),
            ("state", "failed"),
            ("attempt", "2"),
            ("max_attempts", "3"),
            ("created_ms", "1000"),
            ("finished_ms", "2000"),
            ("stop_reason", &reason),
            ("artifacts", r#"["runs/x/logs.txt"]"#),
            ("cancel_by", ""),
        ]))
        .expect("a record");
        assert_eq!(record.id.to_string(), id);
        assert_eq!((record.state, record.attempt, record.max_attempts), (RunState::Failed, 2, 3));
        assert_eq!((record.created_at_ms, record.started_at_ms, record.finished_at_ms), (1000, None, Some(2000)));
        assert_eq!(record.stop_reason, Some(StopReason::AgentFailed { exit_code: 3 }));
        assert_eq!(record.artifacts, ["runs/x/logs.txt"]);
        assert!(record.facts.is_none() && record.approved_by.is_none());
    }

    #[test]
    fn a_damaged_record_is_corrupt_naming_the_run_and_what_is_wrong() {
        let id = RunId::new().to_string();
        let base = [("id", id.as_str()), ("state", "queued"), ("attempt", "0"), ("max_attempts", "3")];
        let spec = spec();
        let mut without_created = base.to_vec();
        without_created.push(("spec", &spec));
        let mut bad_state = without_created.clone();
        bad_state.push(("created_ms", "1"));
        bad_state[1] = ("state", "sleeping");
        for (pairs, detail) in [(without_created, "created_ms missing"), (bad_state, "`state` must be one of")] {
            match record_from_fields(fields(&pairs)) {
                Err(QueueError::Corrupt { id: named, detail: said }) => {
                    assert_eq!(named, id);
                    assert!(said.contains(detail), "{said}");
                }
                other => panic!("expected a corrupt record, got {other:?}"),
            }
        }
        assert!(matches!(record_from_fields(vec![None; 3]), Err(QueueError::Corrupt { .. })));
    }
}

/// One entry of a run's live tail: output, or the step the run began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The stream entry's id (`<ms>-<seq>`): where a reader resumes.
    pub id: String,
    pub chunk: Option<Vec<u8>>,
    pub phase: Option<String>,
}
