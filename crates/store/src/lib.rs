//! Paddock's Redis store: run records, ready queues, leases with fencing
//! epochs and the reaper (`runs`), scheduling knobs and gauges
//! (`scheduling`), policies and tenant secrets (`policies`), rate limits
//! and budgets (`metering`), run tokens (`gateway`), webhook deliveries
//! (`webhooks`), and identity and compliance records (`identity`). Every
//! state change of a run is one Lua script (`scripts`), one round trip,
//! with timestamps from Redis `TIME`; every key comes from `keys`.
//!
//! The key layout and each script's contract are in ARCHITECTURE.md.

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
pub use metering::Spend;
pub use policies::StoredSecret;
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
        })
    }

    /// The deployment's namespace: every key is under `{namespace}:`.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
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

fn corrupt(id: impl ToString, detail: impl ToString) -> QueueError {
    QueueError::Corrupt { id: id.to_string(), detail: detail.to_string() }
}
