//! Identity records in Redis: role bindings, service accounts and their
//! tokens (SHA-256 only), deactivated users, and the audit events of every
//! change to them. A change and its sealed audit event are written by one
//! script (`change.lua`), the event first, to the pending log the shipper
//! moves into the trail: no change exists without its event, and none
//! waits on the bucket.
//!
//! The keys are `keys::Records` (one hash per kind of record), the token
//! index by hash, the last sweep and the audit index (the newest 100,000
//! events, oldest first; the trail in object storage is the evidence).

use std::collections::BTreeMap;

use common::audit::AuditEvent;
use common::identity::{Binding, Permission};
use common::retention::LegalHold;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::keys::Records;
use super::scripts::ChangeArgs;
use super::{QueueError, RunQueue, corrupt};
use common::audit::EventSealer;
use common::records::{ExportStatus, SweepReport};

/// A non-human caller, accountable to the person who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceAccount {
    #[schema(example = "portal")]
    pub name: String,
    #[schema(example = "Internal developer portal")]
    pub description: String,
    /// The person accountable for the account.
    #[schema(example = "alice@example.com")]
    pub owner: String,
    pub created_by: String,
    pub created_at_ms: u64,
}

/// A service-account token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    #[schema(example = "01jbd3k6q3x9a7m2c5v8w0z4ty")]
    pub id: String,
    #[schema(example = "portal")]
    pub account: String,
    /// The permissions this token may use (within the account's bindings).
    pub scopes: Vec<Permission>,
    pub expires_at_ms: u64,
    /// The token's last four characters, to tell tokens apart.
    #[schema(example = "x9Qz")]
    pub last4: String,
    pub created_by: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
    #[serde(default)]
    pub revoked_by: Option<String>,
}

impl TokenRecord {
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

/// What Paddock knows about a person beyond their identity provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserStatus {
    /// Deactivated people are refused whatever token they show.
    pub deactivated: bool,
    /// Identity-provider tokens issued before this instant are refused.
    #[serde(default)]
    pub tokens_revoked_before_ms: Option<u64>,
    #[serde(default)]
    pub changed_by: Option<String>,
    #[serde(default)]
    pub changed_at_ms: Option<u64>,
}

/// Which audit events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub object_id: Option<String>,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEvent) -> bool {
        self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
            && self.action.as_ref().is_none_or(|a| &e.action == a)
            && self.actor.as_ref().is_none_or(|a| &e.actor.principal == a || e.actor.via.as_ref() == Some(a))
            && self.object_id.as_ref().is_none_or(|o| &e.object.id == o)
    }
}

/// How many recent audit events Redis keeps for `GET /v1/audit/events`.
pub const AUDIT_INDEX_KEEP: isize = 100_000;

#[derive(Clone)]
pub struct IdentityStore {
    /// Its connection, keys and audit settings are the queue's.
    pub(crate) queue: RunQueue,
    sealer: Option<std::sync::Arc<dyn EventSealer>>,
}

impl RunQueue {
    /// The identity records; changes made through it are audited in the
    /// index behind `GET /v1/audit/events` only, until a sealer is attached
    /// with [`IdentityStore::with_sealer`].
    pub fn identity(&self) -> IdentityStore {
        IdentityStore { queue: self.clone(), sealer: None }
    }
}

pub(crate) fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String, QueueError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T, QueueError> {
    serde_json::from_str(json).map_err(|e| corrupt(what, e))
}

impl IdentityStore {
    /// Every change is then sealed and written with its event to the
    /// pending log, durable as `audit.durability` says before it returns;
    /// refused (fail-closed) while the log's oldest event has waited longer
    /// than `audit.max_ship_delay_seconds`.
    pub fn with_sealer(mut self, sealer: std::sync::Arc<dyn EventSealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// Applies `changes` (writes, each its reply ignored) with `event`:
    /// see [`Self::commit_unless`].
    pub(crate) async fn commit(&self, event: &AuditEvent, changes: redis::Pipeline) -> Result<(), QueueError> {
        self.commit_unless(event, None, changes).await.map(|_| ())
    }

    /// Applies `changes` with `event`, in one script, unless `unless` (a
    /// read, such as `HEXISTS`) answers non-zero: then neither is written
    /// and this returns false. With a sealer the event goes to the pending
    /// log (and the index) before the first change; without one, to the
    /// index only (the newest [`AUDIT_INDEX_KEEP`] events).
    pub(crate) async fn commit_unless(
        &self,
        event: &AuditEvent,
        unless: Option<redis::Cmd>,
        changes: redis::Pipeline,
    ) -> Result<bool, QueueError> {
        let (mac, json) = match &self.sealer {
            Some(sealer) => {
                let sealed = sealer.seal_event(event).map_err(QueueError::Audit)?;
                (sealed.mac, sealed.json)
            }
            None => (String::new(), to_json("audit event", event)?),
        };
        let args = ChangeArgs {
            max_backlog_ms: self.queue.audit_writes().max_ship_delay.as_millis() as u64,
            keep: AUDIT_INDEX_KEEP,
            mac: &mac,
            json: &json,
            unless: unless.as_ref(),
            changes: &changes,
        };
        let (kind, detail): (String, u64) = self.queue.run_script(&args).await?;
        match kind.as_str() {
            "backlog" => Err(QueueError::AuditBacklog { age_ms: detail }),
            "unchanged" => Ok(false),
            _ => {
                if self.sealer.is_some() {
                    self.queue.audit_durable().await?;
                }
                Ok(true)
            }
        }
    }

    /// Records an event whose change was made elsewhere (or is the event
    /// itself: an approval, a refusal).
    pub async fn append_audit(&self, event: &AuditEvent) -> Result<(), QueueError> {
        self.commit(event, redis::pipe()).await
    }

    /// Adds events already in the trail (the retention sweeper's) to the queryable index.
    pub async fn index_audit(&self, events: &[AuditEvent]) -> Result<(), QueueError> {
        if events.is_empty() {
            return Ok(());
        }
        let lines = events.iter().map(|e| to_json("audit event", e)).collect::<Result<Vec<_>, _>>()?;
        let list = self.queue.keys.audit_events();
        let mut conn = self.queue.conn.clone();
        let () = redis::pipe()
            .atomic()
            .rpush(&list, lines)
            .ignore()
            .ltrim(&list, -AUDIT_INDEX_KEEP, -1)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Events matching `filter`, oldest first, at most `limit`.
    pub async fn audit_events(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEvent>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let all: Vec<String> = conn.lrange(self.queue.keys.audit_events(), 0, -1).await?;
        let mut out = Vec::new();
        for json in all {
            let event: AuditEvent = from_json("audit event", &json)?;
            if filter.matches(&event) {
                out.push(event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every record of one hash, decoded.
    pub(crate) async fn all<T: for<'de> Deserialize<'de>>(&self, records: Records) -> Result<Vec<T>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.queue.keys.records(records)).await?;
        all.values().map(|json| from_json(records.what(), json)).collect()
    }

    /// One record of a hash, decoded.
    pub(crate) async fn one<T: for<'de> Deserialize<'de>>(
        &self,
        records: Records,
        field: &str,
    ) -> Result<Option<T>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let json: Option<String> = conn.hget(self.queue.keys.records(records), field).await?;
        json.map(|j| from_json(records.what(), &j)).transpose()
    }

    /// Writes one record of a hash together with its audit event.
    pub(crate) async fn put<T: Serialize>(
        &self,
        records: Records,
        field: &str,
        value: &T,
        event: &AuditEvent,
    ) -> Result<(), QueueError> {
        let mut changes = redis::pipe();
        changes.hset(self.queue.keys.records(records), field, to_json(records.what(), value)?);
        self.commit(event, changes).await
    }

    pub async fn bindings(&self) -> Result<Vec<Binding>, QueueError> {
        self.all(Records::Bindings).await
    }

    pub async fn add_binding(&self, binding: &Binding, event: &AuditEvent) -> Result<(), QueueError> {
        self.put(Records::Bindings, &binding.id, binding, event).await
    }

    pub async fn binding(&self, id: &str) -> Result<Option<Binding>, QueueError> {
        self.one(Records::Bindings, id).await
    }

    pub async fn remove_binding(&self, id: &str, event: &AuditEvent) -> Result<(), QueueError> {
        let mut changes = redis::pipe();
        changes.hdel(self.queue.keys.records(Records::Bindings), id);
        self.commit(event, changes).await
    }

    pub async fn service_accounts(&self) -> Result<Vec<ServiceAccount>, QueueError> {
        self.all(Records::ServiceAccounts).await
    }

    pub async fn service_account(&self, name: &str) -> Result<Option<ServiceAccount>, QueueError> {
        self.one(Records::ServiceAccounts, name).await
    }

    /// Creates the account unless one has the name; whether it was created.
    pub async fn create_service_account(
        &self,
        account: &ServiceAccount,
        event: &AuditEvent,
    ) -> Result<bool, QueueError> {
        // One script, so the account and its audit event exist together,
        // and neither is written when the name is taken.
        let accounts = self.queue.keys.records(Records::ServiceAccounts);
        let mut taken = redis::cmd("HEXISTS");
        taken.arg(&accounts).arg(&account.name);
        let mut changes = redis::pipe();
        changes.hset(&accounts, &account.name, to_json("account", account)?);
        self.commit_unless(event, Some(taken), changes).await
    }

    /// Stores a new token by the SHA-256 (hex) of its value.
    pub async fn add_token(&self, hash: &str, token: &TokenRecord, event: &AuditEvent) -> Result<(), QueueError> {
        let mut changes = redis::pipe();
        changes
            .hset(self.queue.keys.records(Records::Tokens), &token.id, to_json("token", token)?)
            .set(self.queue.keys.token_by_hash(hash), &token.id);
        self.commit(event, changes).await
    }

    /// The token whose value hashes to `hash`, if it was ever issued.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let id: Option<String> = conn.get(self.queue.keys.token_by_hash(hash)).await?;
        match id {
            Some(id) => self.token(&id).await,
            None => Ok(None),
        }
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, QueueError> {
        self.one(Records::Tokens, id).await
    }

    /// Every token ever issued.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, QueueError> {
        self.all(Records::Tokens).await
    }

    /// Replaces a token record (revocation), with its audit event.
    pub async fn update_token(&self, token: &TokenRecord, event: &AuditEvent) -> Result<(), QueueError> {
        self.put(Records::Tokens, &token.id, token, event).await
    }

    pub async fn user(&self, name: &str) -> Result<UserStatus, QueueError> {
        Ok(self.one(Records::Users, name).await?.unwrap_or_default())
    }

    pub async fn set_user(&self, name: &str, status: &UserStatus, event: &AuditEvent) -> Result<(), QueueError> {
        self.put(Records::Users, name, status, event).await
    }

    /// Every legal hold, released ones included.
    pub async fn holds(&self) -> Result<Vec<LegalHold>, QueueError> {
        self.all(Records::Holds).await
    }

    pub async fn hold(&self, id: &str) -> Result<Option<LegalHold>, QueueError> {
        self.one(Records::Holds, id).await
    }

    /// Places or releases a hold, with its audit event.
    pub async fn put_hold(&self, hold: &LegalHold, event: &AuditEvent) -> Result<(), QueueError> {
        self.put(Records::Holds, &hold.id, hold, event).await
    }

    pub async fn save_export(&self, status: &ExportStatus) -> Result<(), QueueError> {
        let mut conn = self.queue.conn.clone();
        let () = conn.hset(self.queue.keys.records(Records::Exports), &status.id, to_json("export", status)?).await?;
        Ok(())
    }

    pub async fn export(&self, id: &str) -> Result<Option<ExportStatus>, QueueError> {
        self.one(Records::Exports, id).await
    }

    pub async fn record_sweep(&self, report: &SweepReport) -> Result<(), QueueError> {
        let mut conn = self.queue.conn.clone();
        let () = conn.set(self.queue.keys.last_sweep(), to_json("sweep report", report)?).await?;
        Ok(())
    }

    pub async fn last_sweep(&self) -> Result<Option<SweepReport>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let json: Option<String> = conn.get(self.queue.keys.last_sweep()).await?;
        json.map(|j| from_json("sweep report", &j)).transpose()
    }

    /// Takes the fleet-wide lock `name` for `ttl` unless someone holds it.
    pub async fn try_lock(&self, name: &str, ttl: std::time::Duration) -> Result<bool, QueueError> {
        let mut conn = self.queue.conn.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        let taken: Option<String> = conn.set_options(self.queue.keys.lock(name), "1", options).await?;
        Ok(taken.is_some())
    }

    /// Takes the fleet-wide lock `name` for `ttl` unless someone holds it;
    /// the token proves it is still ours when it is released.
    pub async fn lock(&self, name: &str, ttl: std::time::Duration) -> Result<Option<String>, QueueError> {
        let token = ulid::Ulid::new().to_string();
        let mut conn = self.queue.conn.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        let taken: Option<String> = conn.set_options(self.queue.keys.lock(name), &token, options).await?;
        Ok(taken.map(|_| token))
    }

    /// Releases the lock `name` if `token` still holds it (it may have
    /// expired and been taken by someone else meanwhile).
    pub async fn unlock(&self, name: &str, token: &str) -> Result<(), QueueError> {
        static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        let mut conn = self.queue.conn.clone();
        let _: i64 = RELEASE.key(self.queue.keys.lock(name)).arg(token).invoke_async(&mut conn).await?;
        Ok(())
    }
}
