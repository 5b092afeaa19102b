//! Tenants declared through the API and the people Paddock knows: those
//! the identity provider vouched for (by issuer and `sub`, with the
//! addresses it verified and the groups it last named) and those an
//! administrator declared before they ever signed in.

use common::audit::AuditEvent;
use common::tenancy::Tenant;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::QueueError;
use super::identity::{IdentityStore, UserStatus, from_json, to_json};
use super::keys::Records;

/// A person, as the identity provider (or an administrator) named them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "https://idp.example.com#00u1ab2cd3", "issuer": "https://idp.example.com", "subject": "00u1ab2cd3", "email": "alice@example.com", "emails": ["alice@example.com"], "groups": ["payments-devs"], "first_seen_ms": 1764547200000_u64, "last_seen_ms": 1764547200000_u64}))]
pub struct Person {
    /// `<issuer>#<sub>` for people seen through the identity provider,
    /// `declared#<email>` for people an administrator declared.
    pub id: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// The address the identity provider verified most recently.
    #[serde(default)]
    pub email: Option<String>,
    /// Every verified address seen for this person: deactivating any of
    /// them deactivates the person.
    #[serde(default)]
    pub emails: Vec<String>,
    /// The groups the identity provider named last.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub first_seen_ms: Option<u64>,
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    #[serde(default)]
    pub declared_by: Option<String>,
}

impl Person {
    /// The id of the person `sub` at `issuer`.
    pub fn id_of(issuer: &str, subject: &str) -> String {
        format!("{issuer}#{subject}")
    }

    /// The keys their status may be recorded under: their id, their
    /// subject (how a person without a verified address is named) and
    /// every verified address.
    pub fn status_keys(&self) -> Vec<String> {
        let mut keys = vec![self.id.clone()];
        keys.extend(self.subject.iter().cloned());
        keys.extend(self.emails.iter().cloned());
        keys
    }
}

/// How often a sighting rewrites `last_seen_ms` when nothing else changed.
const SEEN_REFRESH_MS: u64 = 3_600_000;

impl IdentityStore {
    /// Tenants declared through the API.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, QueueError> {
        self.all(Records::Tenants).await
    }

    /// Declares or replaces a tenant, with its audit event.
    pub async fn put_tenant(&self, tenant: &Tenant, event: &AuditEvent) -> Result<(), QueueError> {
        let json = super::identity::to_json(Records::Tenants.what(), tenant)?;
        self.change_tenants(event, |pipe, key| pipe.hset(key, &tenant.name, json)).await
    }

    pub async fn remove_tenant(&self, name: &str, event: &AuditEvent) -> Result<(), QueueError> {
        self.change_tenants(event, |pipe, key| pipe.hdel(key, name)).await
    }

    /// `change` to the tenants' hash, with its audit event, counted in
    /// `tenancy:version` in the same script (API processes decide runs
    /// on their copy of the tenants only while that version holds).
    async fn change_tenants(
        &self,
        event: &AuditEvent,
        change: impl FnOnce(&mut redis::Pipeline, String) -> &mut redis::Pipeline,
    ) -> Result<(), QueueError> {
        // The version first: a write failing after it costs API processes
        // one needless read, never a change their copies do not see.
        let mut changes = redis::pipe();
        changes.incr(self.queue.keys.tenancy_version(), 1);
        change(&mut changes, self.queue.keys.records(Records::Tenants));
        self.commit(event, changes).await
    }

    pub async fn person(&self, id: &str) -> Result<Option<Person>, QueueError> {
        self.one(Records::People, id).await
    }

    /// The person a verified address belongs to.
    pub async fn person_by_email(&self, email: &str) -> Result<Option<Person>, QueueError> {
        let mut conn = self.queue.conn.clone();
        let id: Option<String> =
            conn.hget(self.queue.keys.records(Records::PeopleByEmail), email.to_lowercase()).await?;
        match id {
            Some(id) => self.person(&id).await,
            None => Ok(None),
        }
    }

    pub async fn people(&self) -> Result<Vec<Person>, QueueError> {
        self.all(Records::People).await
    }

    /// Records that the identity provider vouched for `seen` now: a new
    /// person, a newly verified address, other groups. Returns the record
    /// as stored, whose `emails` include every address verified before.
    pub async fn saw_person(&self, seen: Person, now_ms: u64) -> Result<Person, QueueError> {
        let before = self.person(&seen.id).await?;
        let mut person = before.clone().unwrap_or_else(|| Person { first_seen_ms: Some(now_ms), ..seen.clone() });
        if let Some(email) = &seen.email
            && !person.emails.contains(email)
        {
            person.emails.push(email.clone());
        }
        person.email = seen.email.clone().or(person.email);
        person.groups = seen.groups;
        let stale = person.last_seen_ms.is_none_or(|at| now_ms.saturating_sub(at) > SEEN_REFRESH_MS);
        if before.as_ref() == Some(&person) && !stale {
            return Ok(person);
        }
        person.last_seen_ms = Some(now_ms);
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.queue.keys.records(Records::People), &person.id, to_json("person", &person)?).ignore();
        if let Some(email) = &person.email {
            pipe.hset(self.queue.keys.records(Records::PeopleByEmail), email.to_lowercase(), &person.id).ignore();
        }
        let mut conn = self.queue.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(person)
    }

    /// An administrator vouches for a person who has not signed in yet.
    /// Someone seen through the identity provider keeps that record.
    pub async fn declare_person(&self, person: &Person, email: &str, event: &AuditEvent) -> Result<(), QueueError> {
        let mut changes = redis::pipe();
        changes.hset(self.queue.keys.records(Records::People), &person.id, to_json("person", person)?).hset_nx(
            self.queue.keys.records(Records::PeopleByEmail),
            email.to_lowercase(),
            &person.id,
        );
        self.commit(event, changes).await
    }

    /// The status recorded under any of `keys`, merged: deactivated if any
    /// says so, tokens refused before the latest revocation.
    pub async fn status_of(&self, keys: &[String]) -> Result<UserStatus, QueueError> {
        if keys.is_empty() {
            return Ok(UserStatus::default());
        }
        let mut conn = self.queue.conn.clone();
        let found: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.queue.keys.records(Records::Users)).arg(keys).query_async(&mut conn).await?;
        let mut merged = UserStatus::default();
        for json in found.into_iter().flatten() {
            let status: UserStatus = from_json("user status", &json)?;
            merged.deactivated |= status.deactivated;
            merged.tokens_revoked_before_ms = merged.tokens_revoked_before_ms.max(status.tokens_revoked_before_ms);
        }
        Ok(merged)
    }

    /// The person `name` stands for: a person id, a verified address, or
    /// (with the identity provider's `issuer`) a subject.
    /// Only the lookups `name`'s shape allows are made (ids hold `#`,
    /// addresses `@`): this runs on every service-account request.
    pub async fn person_named(&self, name: &str, issuer: Option<&str>) -> Result<Option<Person>, QueueError> {
        if name.contains('#')
            && let Some(person) = self.person(name).await?
        {
            return Ok(Some(person));
        }
        if name.contains('@')
            && let Some(person) = self.person_by_email(name).await?
        {
            return Ok(Some(person));
        }
        match issuer {
            Some(issuer) => self.person(&Person::id_of(issuer, name)).await,
            None => Ok(None),
        }
    }

    /// Every key the person `name` may have a status under: `name` itself
    /// (lowercase) and all the person's names.
    pub async fn names_of(&self, name: &str, issuer: Option<&str>) -> Result<Vec<String>, QueueError> {
        let mut keys = vec![name.to_owned(), name.to_lowercase()];
        if let Some(person) = self.person_named(name, issuer).await? {
            keys.extend(person.status_keys());
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The status of the person `name`, under every name they are known by.
    pub async fn status_named(&self, name: &str, issuer: Option<&str>) -> Result<UserStatus, QueueError> {
        self.status_of(&self.names_of(name, issuer).await?).await
    }

    /// Writes `status` under each of `keys`, with one audit event.
    pub async fn set_users(&self, keys: &[String], status: &UserStatus, event: &AuditEvent) -> Result<(), QueueError> {
        let json = to_json("user status", status)?;
        let mut changes = redis::pipe();
        for key in keys {
            changes.hset(self.queue.keys.records(Records::Users), key, &json);
        }
        self.commit(event, changes).await
    }
}
