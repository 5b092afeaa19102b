//! Identity records in Redis: role bindings, service accounts and their
//! tokens (SHA-256 only), deactivated users, and the audit events of every
//! change to them. A change and its audit event are written in one atomic
//! transaction, so neither exists without the other.
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

use super::keys::{Keys, Records};
use super::{QueueError, RunQueue, conn::Conn, corrupt};
use common::audit::EventSink;
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
    pub(crate) conn: Conn,
    pub(crate) keys: Keys,
    trail: Option<std::sync::Arc<dyn EventSink>>,
}

impl RunQueue {
    /// The identity records; changes made through it are audited in Redis
    /// only until a trail is attached with [`IdentityStore::with_trail`].
    pub fn identity(&self) -> IdentityStore {
        IdentityStore { conn: self.conn.clone(), keys: self.keys.clone(), trail: None }
    }
}

pub(crate) fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String, QueueError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T, QueueError> {
    serde_json::from_str(json).map_err(|e| corrupt(what, e))
}

impl IdentityStore {
    /// Every change is then written to the audit trail first: when the trail
    /// cannot take it, the change is refused (fail-closed).
    pub fn with_trail(mut self, trail: std::sync::Arc<dyn EventSink>) -> Self {
        self.trail = Some(trail);
        self
    }

    pub(crate) async fn to_trail(&self, event: &AuditEvent) -> Result<(), QueueError> {
        if let Some(trail) = &self.trail {
            trail.record(std::slice::from_ref(event)).await.map_err(QueueError::Audit)?;
        }
        Ok(())
    }

    /// Records `event` in the trail, then starts a transaction that also
    /// appends it to the queryable list (the newest [`AUDIT_INDEX_KEEP`]
    /// events; the trail in object storage keeps them all).
    pub(crate) async fn audited(&self, event: &AuditEvent) -> Result<redis::Pipeline, QueueError> {
        self.to_trail(event).await?;
        let mut pipe = redis::pipe();
        let list = self.keys.audit_events();
        pipe.atomic()
            .rpush(&list, to_json("audit event", event)?)
            .ignore()
            .ltrim(&list, -AUDIT_INDEX_KEEP, -1)
            .ignore();
        Ok(pipe)
    }

    pub async fn append_audit(&self, event: &AuditEvent) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let () = self.audited(event).await?.query_async(&mut conn).await?;
        Ok(())
    }

    /// Adds events already in the trail (a worker's) to the queryable index.
    pub async fn index_audit(&self, events: &[AuditEvent]) -> Result<(), QueueError> {
        if events.is_empty() {
            return Ok(());
        }
        let lines = events.iter().map(|e| to_json("audit event", e)).collect::<Result<Vec<_>, _>>()?;
        let list = self.keys.audit_events();
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
        let all: Vec<String> = conn.lrange(self.keys.audit_events(), 0, -1).await?;
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
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = conn.hgetall(self.keys.records(records)).await?;
        all.values().map(|json| from_json(records.what(), json)).collect()
    }

    /// One record of a hash, decoded.
    pub(crate) async fn one<T: for<'de> Deserialize<'de>>(
        &self,
        records: Records,
        field: &str,
    ) -> Result<Option<T>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.hget(self.keys.records(records), field).await?;
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
        let mut conn = self.conn.clone();
        let () = self
            .audited(event)
            .await?
            .hset(self.keys.records(records), field, to_json(records.what(), value)?)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
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
        let mut conn = self.conn.clone();
        let () = self
            .audited(event)
            .await?
            .hdel(self.keys.records(Records::Bindings), id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
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
        // One script, so the account and its audit event exist together.
        static CREATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then \
                   redis.call('RPUSH', KEYS[2], ARGV[3]) return 1 end return 0",
            )
        });
        self.to_trail(event).await?;
        let mut conn = self.conn.clone();
        let created: i64 = CREATE
            .key(self.keys.records(Records::ServiceAccounts))
            .key(self.keys.audit_events())
            .arg(&account.name)
            .arg(to_json("account", account)?)
            .arg(to_json("audit event", event)?)
            .invoke_async(&mut conn)
            .await?;
        Ok(created == 1)
    }

    /// Stores a new token by the SHA-256 (hex) of its value.
    pub async fn add_token(&self, hash: &str, token: &TokenRecord, event: &AuditEvent) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let () = self
            .audited(event)
            .await?
            .hset(self.keys.records(Records::Tokens), &token.id, to_json("token", token)?)
            .ignore()
            .set(self.keys.token_by_hash(hash), &token.id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The token whose value hashes to `hash`, if it was ever issued.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let id: Option<String> = conn.get(self.keys.token_by_hash(hash)).await?;
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
        let mut conn = self.conn.clone();
        let () = conn.hset(self.keys.records(Records::Exports), &status.id, to_json("export", status)?).await?;
        Ok(())
    }

    pub async fn export(&self, id: &str) -> Result<Option<ExportStatus>, QueueError> {
        self.one(Records::Exports, id).await
    }

    pub async fn record_sweep(&self, report: &SweepReport) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let () = conn.set(self.keys.last_sweep(), to_json("sweep report", report)?).await?;
        Ok(())
    }

    pub async fn last_sweep(&self) -> Result<Option<SweepReport>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(self.keys.last_sweep()).await?;
        json.map(|j| from_json("sweep report", &j)).transpose()
    }

    /// Takes the fleet-wide lock `name` for `ttl` unless someone holds it.
    pub async fn try_lock(&self, name: &str, ttl: std::time::Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        let taken: Option<String> = conn.set_options(self.keys.lock(name), "1", options).await?;
        Ok(taken.is_some())
    }

    /// Takes the fleet-wide lock `name` for `ttl` unless someone holds it;
    /// the token proves it is still ours when it is released.
    pub async fn lock(&self, name: &str, ttl: std::time::Duration) -> Result<Option<String>, QueueError> {
        let token = ulid::Ulid::new().to_string();
        let mut conn = self.conn.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        let taken: Option<String> = conn.set_options(self.keys.lock(name), &token, options).await?;
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
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE.key(self.keys.lock(name)).arg(token).invoke_async(&mut conn).await?;
        Ok(())
    }
}
