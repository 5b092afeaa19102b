//! Paddock's Redis store: run records, ready queues, leases with fencing
//! epochs and the reaper (`runs`), scheduling knobs and gauges
//! (`scheduling`), policies and tenant secrets (`policies`), rate limits
//! and budgets (`metering`), run tokens (`gateway`), webhook deliveries
//! (`webhooks`), and identity and compliance records (`identity`). Every
//! state change of a run is one Lua script (`scripts`), one round trip,
//! with timestamps from Redis `TIME`; every key comes from `keys`.
//!
//! The key layout and each script's contract are in ARCHITECTURE.md.

pub mod audit;
mod batch;
mod conn;
pub mod costs;
mod gateway;
pub mod identity;
pub mod keys;
mod metering;
pub mod people;
mod policies;
mod runs;
mod scheduling;
mod scripts;
mod webhooks;

use std::sync::Arc;

use common::config::RedisConfig;

use conn::Conn;
use keys::Keys;
use platform::outbound::Outbound;
use scripts::{ScriptArgs, Scripts};

pub use gateway::GatewayGrant;
pub use metering::{Admission, Rate, Reservation, Spend};
pub use policies::{StoredSecret, TenancySnapshot};
pub use runs::{ClaimedRun, Enqueued, Idempotency, KeyHolder, LeaseStatus, LogEntry, Outcome, RunPage};
pub use scheduling::{DeadLetter, Depth, Limits, TenantLimits};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("run record {id} is corrupt: {detail}")]
    Corrupt { id: String, detail: String },
    /// The audit trail refused the change's event, so the change was not made.
    #[error("{0}")]
    Audit(String),
    /// The server cannot run the queue's scripts.
    #[error("{0}")]
    Unsupported(String),
    /// The oldest audit event not yet shipped to the bucket has waited
    /// longer than `audit.max_ship_delay_seconds`: nothing was written.
    #[error(
        "the oldest audit event not yet in the bucket has waited {} s, longer than \
         `audit.max_ship_delay_seconds` allows; nothing is accepted until it is shipped",
        age_ms / 1000
    )]
    AuditBacklog { age_ms: u64 },
    /// Declared tenants or sandbox policies changed after the run was
    /// decided on them: nothing was written; decide again.
    #[error("tenants or sandbox policies changed while the run was being accepted")]
    TenancyChanged,
}

/// The most runs one batched script call carries.
const BATCH: usize = 64;

/// Client for the store. Cheap to clone; clones share one multiplexed
/// connection that reconnects by itself.
#[derive(Clone)]
pub struct RunQueue {
    conn: Conn,
    config: Arc<RedisConfig>,
    /// For the connections opened later (Pub/Sub).
    outbound: Arc<Outbound>,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// Runs accepted at the same time, and finishes of runs that end at
    /// the same time, each sent together.
    enqueues: Arc<batch::Batcher<scripts::EnqueueArgs, runs::EnqueueReply>>,
    finishes: Arc<batch::Batcher<scripts::FinishArgs, Option<String>>>,
    /// How audit events written by scripts are made durable and shipped.
    audit: Arc<audit::AuditWrites>,
}

impl RunQueue {
    pub async fn connect(config: &RedisConfig, outbound: &Outbound) -> Result<Self, QueueError> {
        Ok(Self {
            conn: Conn::open(config, outbound).await?,
            outbound: Arc::new(outbound.clone()),
            config: Arc::new(config.clone()),
            keys: Keys::new(&config.namespace),
            scripts: Arc::new(Scripts::load()),
            enqueues: Arc::new(batch::Batcher::new(BATCH)),
            finishes: Arc::new(batch::Batcher::new(BATCH)),
            audit: Arc::new(audit::AuditWrites::default()),
        })
    }

    /// The deployment's namespace: every key is under `{namespace}:`.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// Checks, at start, that the server is one the scripts run on: Redis
    /// (or a server reporting a Redis version, as Valkey does) 6.2 or newer,
    /// for `SMISMEMBER` and `ZADD ... LT`.
    pub async fn check_server(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let info: String = match redis::cmd("INFO").arg("server").query_async(&mut conn).await {
            Ok(info) => info,
            // A user whose ACL allows the scripts but not INFO: reachable
            // is all that can be checked.
            Err(error) => {
                self.ping().await?;
                tracing::warn!(%error, "INFO is refused: the Redis version (6.2 or newer needed) cannot be checked");
                return Ok(());
            }
        };
        let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).map(str::trim).unwrap_or("");
        if supported(version) {
            return Ok(());
        }
        Err(QueueError::Unsupported(format!(
            "`redis.url` points at a server reporting Redis version {version:?}; Paddock's queue scripts need \
             Redis 6.2 or newer (SMISMEMBER, ZADD LT)"
        )))
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Runs the script `args` belong to.
    async fn run_script<A: ScriptArgs, T: redis::FromRedisValue>(&self, args: &A) -> Result<T, QueueError> {
        Ok(self.scripts.run(&self.conn, &self.keys, args).await?)
    }

    fn ttl_seconds(&self) -> u64 {
        self.config.finished_run_ttl_seconds
    }

    fn dead_keep_ms(&self) -> u64 {
        self.config.dead_letter_keep_seconds * 1000
    }

    /// Reads a hash incrementally (HSCAN), never in one blocking call.
    pub(crate) async fn scan_hash(&self, key: String) -> Result<Vec<(String, String)>, QueueError> {
        let mut conn = self.conn.clone();
        let (mut cursor, mut out) = (0u64, Vec::new());
        // Pages of about a thousand fields: a counter hash of many
        // repositories in few round trips, and no long block of Redis.
        loop {
            let (next, page): (u64, Vec<(String, String)>) =
                redis::cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(1000).query_async(&mut conn).await?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

/// Whether a `redis_version` is 6.2 or newer.
fn supported(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 2),
        _ => false,
    }
}

fn corrupt(id: impl ToString, detail: impl ToString) -> QueueError {
    QueueError::Corrupt { id: id.to_string(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_before_6_2_is_refused() {
        for (version, ok) in [("7.0.15", true), ("6.2.0", true), ("8.2.1", true), ("6.0.16", false), ("5.0.7", false)] {
            assert_eq!(super::supported(version), ok, "{version}");
        }
        assert!(!super::supported(""), "no version reported");
        assert!(!super::supported("unknown"));
    }
}
