//! The pending audit log: events written by the script that makes the
//! change they record (a run and its request event, in `enqueue.lua`),
//! durable before the caller is answered, and shipped to the signed trail
//! in the bucket by whichever process holds the shipper's lease
//! (`ship.lua`). See `audit` in `lua/lib.lua` for the layout.

use std::time::Duration;

use common::config::{AuditConfig, AuditDurability};

use common::audit::SealedEvent;

use super::scripts::{AuditArgs, ShipArgs};
use super::{QueueError, RunQueue};

/// How the scripts' audit events are made durable and how long one may
/// wait to be shipped before changes are refused.
#[derive(Debug, Clone)]
pub struct AuditWrites {
    pub durability: AuditDurability,
    pub max_ship_delay: Duration,
    pub replica_timeout: Duration,
}

impl AuditWrites {
    pub fn from_config(config: &AuditConfig) -> Self {
        Self {
            durability: config.durability,
            max_ship_delay: Duration::from_secs(config.max_ship_delay_seconds),
            replica_timeout: Duration::from_millis(config.replica_timeout_ms),
        }
    }
}

impl Default for AuditWrites {
    fn default() -> Self {
        Self::from_config(&AuditConfig::default())
    }
}

/// One entry of the pending log as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Its number in the log (from 1, no gaps).
    pub seq: u64,
    /// When Redis wrote it (ms since the epoch).
    pub at_ms: u64,
    /// HMAC-SHA256 (hex) of `json` under the sealing key.
    pub mac: String,
    pub json: String,
}

/// An entry that does not have the pending log's shape (someone wrote it
/// by hand): its raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// The pending log's state: the last number given and the last shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingMarks {
    pub last_seq: u64,
    pub shipped_through: u64,
}

/// What [`RunQueue::pending_audit`] read.
#[derive(Debug, Clone)]
pub struct PendingLog {
    pub marks: PendingMarks,
    pub entries: Vec<Result<PendingEvent, Unreadable>>,
    /// Whether `entries` is the whole log (fewer than asked for).
    pub complete: bool,
    /// The last entry read, as Redis holds it (what a trim checks).
    pub last_line: Option<String>,
}

impl PendingEvent {
    fn parse(line: &str) -> Result<Self, Unreadable> {
        let mut parts = line.splitn(4, ' ');
        let mut next = || parts.next();
        let (Some(seq), Some(at), Some(mac), Some(json)) = (next(), next(), next(), next()) else {
            return Err(Unreadable(line.to_owned()));
        };
        match (seq.parse(), at.parse()) {
            (Ok(seq), Ok(at_ms)) => Ok(Self { seq, at_ms, mac: mac.to_owned(), json: json.to_owned() }),
            _ => Err(Unreadable(line.to_owned())),
        }
    }
}

impl RunQueue {
    /// How this queue's audit events are made durable and shipped in time.
    pub fn with_audit_writes(mut self, writes: AuditWrites) -> Self {
        self.audit = std::sync::Arc::new(writes);
        self
    }

    pub fn audit_writes(&self) -> &AuditWrites {
        &self.audit
    }

    /// Checks, at start, that Redis makes a script's writes durable the
    /// way `audit.durability` says, and refuses naming the key otherwise.
    pub async fn check_audit_durability(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        match self.audit.durability {
            AuditDurability::Fsync => {
                let read = |name: &'static str| {
                    let mut conn = conn.clone();
                    async move {
                        let pair: Vec<String> =
                            redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await?;
                        Ok::<_, redis::RedisError>(pair.get(1).cloned().unwrap_or_default())
                    }
                };
                let (appendonly, appendfsync) = match (read("appendonly").await, read("appendfsync").await) {
                    (Ok(a), Ok(f)) => (a, f),
                    (Err(error), _) | (_, Err(error)) => {
                        return Err(QueueError::Unsupported(format!(
                            "`audit.durability` = \"fsync\" needs to read Redis's AOF settings (CONFIG GET \
                             appendonly, appendfsync) at `redis.url`, which refused: {error}; on a managed Redis \
                             without CONFIG use `audit.durability` = \"replica\""
                        )));
                    }
                };
                if appendonly != "yes" || appendfsync != "always" {
                    return Err(QueueError::Unsupported(format!(
                        "`audit.durability` = \"fsync\" needs Redis at `redis.url` to fsync every write before it \
                         answers (appendonly yes, appendfsync always); it has appendonly {appendonly}, appendfsync \
                         {appendfsync}. Set them, or use `audit.durability` = \"replica\" with a replica"
                    )));
                }
                Ok(())
            }
            AuditDurability::Replica => {
                let info: String = redis::cmd("INFO").arg("replication").query_async(&mut conn).await?;
                let replicas = info
                    .lines()
                    .find_map(|l| l.strip_prefix("connected_slaves:"))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if replicas == 0 {
                    return Err(QueueError::Unsupported(
                        "`audit.durability` = \"replica\" needs a replica connected to the Redis at `redis.url` \
                         (INFO replication reports none)"
                            .to_owned(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// After a script wrote audit events: with `durability = "replica"`,
    /// waits until a replica has everything this connection wrote. (With
    /// `fsync`, Redis answered the script only after the fsync.)
    pub(crate) async fn audit_durable(&self) -> Result<(), QueueError> {
        if self.audit.durability != AuditDurability::Replica {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let timeout = self.audit.replica_timeout.as_millis() as u64;
        let acked: u64 = redis::cmd("WAIT").arg(1).arg(timeout).query_async(&mut conn).await?;
        if acked == 0 {
            return Err(QueueError::Audit(format!(
                "no replica acknowledged the audit event within {timeout} ms (`audit.replica_timeout_ms`)"
            )));
        }
        Ok(())
    }

    /// Appends `events` (sealed) to the pending log, durable as
    /// `audit.durability` says before it returns, and to the index behind
    /// `GET /v1/audit/events` (for `run`'s events, at most `cap` of them in
    /// all): returns how many were left out of the index. Refused, writing
    /// nothing, while the oldest pending event is older than the ship delay.
    pub async fn append_audit(&self, run: Option<&str>, events: &[SealedEvent], cap: u64) -> Result<u64, QueueError> {
        if events.is_empty() {
            return Ok(0);
        }
        let args = AuditArgs {
            max_backlog_ms: self.audit.max_ship_delay.as_millis() as u64,
            keep: super::identity::AUDIT_INDEX_KEEP,
            run: run.unwrap_or(""),
            cap,
            events,
        };
        let (kind, detail): (String, u64) = self.run_script(&args).await?;
        if kind == "backlog" {
            return Err(QueueError::AuditBacklog { age_ms: detail });
        }
        self.audit_durable().await?;
        Ok(detail)
    }

    /// The log's marks and its oldest events, up to `max`, in order, read
    /// at one instant (no shipper's trim falls between them).
    pub async fn pending_audit(&self, max: usize) -> Result<PendingLog, QueueError> {
        let max = max.max(1);
        let mut conn = self.conn.clone();
        let stop = isize::try_from(max).unwrap_or(isize::MAX) - 1;
        let ((last, shipped), lines): ((Option<u64>, Option<u64>), Vec<String>) = redis::pipe()
            .atomic()
            .mget(&[self.keys.audit_seq(), self.keys.audit_shipped()])
            .lrange(self.keys.audit_pending(), 0, stop)
            .query_async(&mut conn)
            .await?;
        let complete = lines.len() < max;
        Ok(PendingLog {
            marks: PendingMarks { last_seq: last.unwrap_or(0), shipped_through: shipped.unwrap_or(0) },
            entries: lines.iter().map(|l| PendingEvent::parse(l)).collect(),
            complete,
            last_line: lines.last().cloned(),
        })
    }

    /// The last number given and the last shipped.
    pub async fn pending_marks(&self) -> Result<PendingMarks, QueueError> {
        let mut conn = self.conn.clone();
        let (last, shipped): (Option<u64>, Option<u64>) =
            redis::cmd("MGET").arg(self.keys.audit_seq()).arg(self.keys.audit_shipped()).query_async(&mut conn).await?;
        Ok(PendingMarks { last_seq: last.unwrap_or(0), shipped_through: shipped.unwrap_or(0) })
    }

    /// Takes or renews the shipper's lease for `ttl`: whether `holder` has it.
    pub async fn audit_ship_lease(&self, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let held: u64 = self.run_script(&ShipArgs::Lease { holder, ttl_ms: ttl.as_millis() as u64 }).await?;
        Ok(held == 1)
    }

    pub async fn release_audit_ship_lease(&self, holder: &str) -> Result<(), QueueError> {
        let _: u64 = self.run_script(&ShipArgs::Release { holder }).await?;
        Ok(())
    }

    /// Drops the first `n` pending entries, the last of them `last_line`,
    /// once the bucket has them, and records `shipped_through` as the last
    /// number shipped; `false` when `holder` lost the lease (nothing
    /// dropped; the new holder ships them again).
    pub async fn trim_shipped(
        &self,
        holder: &str,
        n: usize,
        last_line: &str,
        shipped_through: u64,
    ) -> Result<bool, QueueError> {
        let args = ShipArgs::Trim { holder, n, last_line, shipped_through };
        let trimmed: u64 = self.run_script(&args).await?;
        Ok(trimmed == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_line_parses_and_one_of_another_shape_is_kept_as_it_is() {
        let line = r#"7 1700000000000 ab12 {"id":"x","note":"a b c"}"#;
        let event = PendingEvent::parse(line).unwrap();
        assert_eq!((event.seq, event.at_ms, event.mac.as_str()), (7, 1_700_000_000_000, "ab12"));
        assert_eq!(event.json, r#"{"id":"x","note":"a b c"}"#);
        assert_eq!(PendingEvent::parse("x 1 m {}"), Err(Unreadable("x 1 m {}".to_owned())));
        assert_eq!(PendingEvent::parse("7 1"), Err(Unreadable("7 1".to_owned())));
    }
}
