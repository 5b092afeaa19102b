//! `/v1/audit/*`: the audit events, verification of the trail in object
//! storage, and how the trail is kept.

use actix_web::{get, web};
use common::audit::AuditEvent;
use serde::{Deserialize, Serialize};
use store::identity::AuditFilter;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// Which audit events to answer with.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// From this instant (ms since the epoch), inclusive.
    pub since_ms: Option<u64>,
    /// Until this instant (ms since the epoch), exclusive.
    pub until_ms: Option<u64>,
    /// Only this action, e.g. `binding.create`.
    pub action: Option<String>,
    /// Only events by this person or service (`service-account:portal`).
    pub actor: Option<String>,
    /// Only events about this object id (a run, binding, token…).
    pub object: Option<String>,
    /// At most this many (1-1000, default 100), oldest first.
    pub limit: Option<usize>,
}

/// The most events one answer of `GET /v1/audit/events` holds.
pub const MAX_EVENTS: usize = 1000;

/// Audit events, oldest first, from the index of the newest 100,000 (API
/// and worker events alike; older ones through `POST /v1/audit/exports`).
/// Filter by time, action, actor and object (`object=<run id>`: everything
/// about a run, from its request to why it stopped).
#[utoipa::path(
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = Vec<AuditEvent>),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/events")]
pub async fn audit_events(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<web::Json<Vec<AuditEvent>>, Problem> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(Problem::bad_request("`limit` must be between 1 and 1000").field("limit"));
    }
    let filter = AuditFilter {
        since_ms: crate::contract::instant("since_ms", query.since_ms)?,
        until_ms: crate::contract::instant("until_ms", query.until_ms)?,
        action: query.action,
        actor: query.actor,
        object_id: query.object,
    };
    Ok(web::Json(state.identity().audit_events(&filter, limit).await?))
}

/// The time range to verify.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// From this instant (ms since the epoch); default the epoch.
    pub since_ms: Option<u64>,
    /// Until this instant (ms since the epoch); default now.
    pub until_ms: Option<u64>,
}

/// Verify the audit trail of a time range in object storage: each digest's
/// Ed25519 signature (this deployment's key or `audit.trusted_public_keys`)
/// and its link to the previous digest, each listed segment's presence and
/// SHA-256, the events' numbering and hash chain, and segments no digest
/// lists; and the events written in Redis and not yet shipped (their seals,
/// and numbers without gaps from the last one shipped). Findings name the
/// object (`redis:audit:pending` for the pending log) and what is wrong.
#[utoipa::path(
    tag = "audit",
    params(VerifyQuery),
    responses(
        (status = 200, body = audit_trail::VerifyReport),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/verify")]
pub async fn verify_audit(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    query: web::Query<VerifyQuery>,
) -> Result<web::Json<audit_trail::VerifyReport>, Problem> {
    let trusted = trusted_keys(&state)?;
    let until = crate::contract::instant("until_ms", query.until_ms)?.unwrap_or(u64::MAX);
    let since = crate::contract::instant("since_ms", query.since_ms)?.unwrap_or(0);
    let mut report = audit_trail::verify(&state.store, &state.config.audit.prefix, &trusted, since, until).await?;
    // Events not yet shipped wait in Redis: their seals and numbers.
    let (pending, findings) = crate::audit::pending::verify(&state.queue, &state.sealer).await?;
    report.pending_checked = pending;
    report.findings.extend(findings);
    Ok(web::Json(report))
}

/// This deployment's public key and `audit.trusted_public_keys`.
pub fn trusted_keys(state: &AppState) -> Result<Vec<audit_trail::VerifyingKey>, Problem> {
    let mut trusted = vec![state.audit.public_key()];
    for (i, key) in state.config.audit.trusted_public_keys.iter().enumerate() {
        let key = audit_trail::verifying_key(key).map_err(|e| {
            tracing::error!(error = %e, index = i, "audit.trusted_public_keys");
            Problem::internal()
        })?;
        trusted.push(key);
    }
    Ok(trusted)
}

/// How this deployment's audit trail is kept.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditStatus {
    /// This API process's stream.
    pub stream: String,
    /// The Ed25519 public key (base64) digests are signed with: verify
    /// independently with it.
    pub public_key: String,
    pub prefix: String,
    pub digest_interval_seconds: u64,
    /// The start-up probe of the bucket's Object Lock.
    pub object_lock: objstore::ObjectLockStatus,
}

/// The audit trail's signing key, location, digest interval, and whether
/// the bucket enforces write-once retention (probed at start-up).
#[utoipa::path(
    tag = "audit",
    responses(
        (status = 200, body = AuditStatus),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/status")]
pub async fn audit_status(_caller: Authorized<need::AuditRead>, state: web::Data<AppState>) -> web::Json<AuditStatus> {
    web::Json(AuditStatus {
        stream: state.audit.stream().to_owned(),
        public_key: audit_trail::public_key_b64(&state.audit.public_key()),
        prefix: state.config.audit.prefix.clone(),
        digest_interval_seconds: state.config.audit.digest_interval_seconds,
        object_lock: state.object_lock.clone(),
    })
}
