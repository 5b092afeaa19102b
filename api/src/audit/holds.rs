//! `/v1/legal-holds` and `/v1/retention`: what is kept how long, and the
//! holds that stop the retention sweeper deleting a run's or a tenant's
//! evidence. Placing and releasing a hold are audited; released holds stay
//! on record.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use common::audit::{ObjectRef, now_ms};
use common::records::SweepReport;
use common::retention::{HoldTarget, LegalHold, RetentionClass};
use objstore::ObjectStore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Authorized, need};
use crate::identity::revoke::{Reason, reason_ok};
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// A hold to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"target": {"tenant": "payments"}, "reason": "Matter 2026-114: vendor dispute"}))]
pub struct NewHold {
    pub target: HoldTarget,
    pub reason: String,
}

/// The audit object of a hold: the tenant it concerns, when known.
async fn hold_object(state: &AppState, hold: &LegalHold) -> Result<ObjectRef, Problem> {
    let mut object = ObjectRef::new("legal_hold", &hold.id);
    object.tenant = match &hold.target {
        HoldTarget::Tenant(t) => Some(t.clone()),
        HoldTarget::Run(id) => state.queue.get(*id).await?.map(|r| r.spec.tenant),
    };
    Ok(object)
}

/// Place a legal hold on a run or on everything of a tenant: until it is
/// released, the retention sweeper deletes none of its objects (artifacts,
/// logs, transcripts, model-call metadata) nor the audit segments that
/// mention it.
#[utoipa::path(
    tag = "audit",
    request_body = NewHold,
    responses(
        (status = 201, body = LegalHold),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "The run is neither in the queue nor in object storage"),
    ),
    security(("bearer" = ["audit.hold"]))
)]
#[post("/v1/legal-holds")]
pub async fn place_hold(
    caller: Authorized<need::AuditHold>,
    state: web::Data<AppState>,
    body: crate::json::Json<NewHold>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    reason_ok(&body.reason)?;
    body.target.validate().map_err(|e| Problem::bad_request(e.to_string()).field("target"))?;
    if let HoldTarget::Run(id) = &body.target {
        let known = state.queue.get(*id).await?.is_some() || !state.store.list(&id.artifact_prefix()).await?.is_empty();
        if !known {
            return Err(Problem::not_found(format!("no run {id} in the queue or in object storage")));
        }
    }
    let hold = LegalHold {
        id: ulid::Ulid::new().to_string().to_lowercase(),
        target: body.target,
        reason: body.reason,
        placed_by: caller.principal.clone(),
        placed_at_ms: now_ms(),
        released_by: None,
        released_at_ms: None,
        release_reason: None,
    };
    let event = caller.event("legal_hold.place", hold_object(&state, &hold).await?).change(None::<&()>, Some(&hold));
    state.identity().put_hold(&hold, &event.reason(hold.reason.clone())).await?;
    Ok(HttpResponse::build(StatusCode::CREATED).json(hold))
}

/// Release a legal hold: the sweeper deletes what is past retention again.
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "The hold's id")),
    request_body = Reason,
    responses(
        (status = 200, body = LegalHold),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["audit.hold"]))
)]
#[post("/v1/legal-holds/{id}/release")]
pub async fn release_hold(
    caller: Authorized<need::AuditHold>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: crate::json::Json<Reason>,
) -> Result<web::Json<LegalHold>, Problem> {
    reason_ok(&body.reason)?;
    let identity = state.identity();
    let Some(before) = identity.hold(&id).await? else {
        return Err(Problem::not_found(format!("no legal hold {id}")));
    };
    if !before.active() {
        return Err(Problem::new(ErrorCode::HoldReleased)
            .detail(format!("released by {} already", before.released_by.as_deref().unwrap_or("someone"))));
    }
    let mut hold = before.clone();
    hold.released_by = Some(caller.principal.clone());
    hold.released_at_ms = Some(now_ms());
    hold.release_reason = Some(body.reason.clone());
    let event = caller
        .event("legal_hold.release", hold_object(&state, &hold).await?)
        .change(Some(&before), Some(&hold))
        .reason(body.reason.clone());
    identity.put_hold(&hold, &event).await?;
    Ok(web::Json(hold))
}

/// Every legal hold, active and released, oldest first.
#[utoipa::path(
    tag = "audit",
    responses(
        (status = 200, body = Vec<LegalHold>),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/legal-holds")]
pub async fn list_holds(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<Vec<LegalHold>>, Problem> {
    let mut holds = state.identity().holds().await?;
    holds.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(web::Json(holds))
}

/// One class of stored objects and how long it is kept (model-call
/// metadata: the provider policy's `logging.metadata` when one is set).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassRetention {
    pub class: RetentionClass,
    /// `None`: kept forever.
    pub days: Option<u32>,
    /// Where its objects live.
    #[schema(example = "runs/<id>/logs.txt")]
    pub keys: String,
}

/// A bucket lifecycle rule Paddock keeps, and whether the store took it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LifecycleRule {
    #[schema(example = "paddock-exports")]
    pub rule: String,
    pub class: RetentionClass,
    pub days: u32,
    pub installed: bool,
    /// What the store answered when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Installs the lifecycle rules that need no legal-hold awareness: export
/// bundles (their own prefix, never held) expire by the bucket's lifecycle.
/// Run objects and the audit trail are the sweeper's: a lifecycle rule
/// would delete what a legal hold covers on stores without Object Lock.
pub async fn install_lifecycle_rules(config: &common::config::Config, store: &objstore::S3Store) -> Vec<LifecycleRule> {
    let Some(days) = config.retention.days(RetentionClass::Exports) else { return Vec::new() };
    let rule = "paddock-exports".to_owned();
    let prefix = format!("{}/", config.audit.export_prefix.trim_end_matches('/'));
    let result = store.ensure_expiration_rule(&rule, &prefix, days).await;
    if let Err(error) = &result {
        tracing::warn!(%error, "the bucket refused the lifecycle rule for exports; the sweeper expires them");
    }
    let error = result.err().map(|e| e.to_string());
    vec![LifecycleRule { rule, class: RetentionClass::Exports, days, installed: error.is_none(), error }]
}

/// The retention policy in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetentionStatus {
    pub classes: Vec<ClassRetention>,
    /// How deletion happens: `sweeper` (a worker of the fleet, every
    /// `sweep_interval_seconds`, honouring legal holds) or `none`.
    #[schema(example = "sweeper")]
    pub enforcement: String,
    /// Bucket lifecycle rules installed at start, as a second line for
    /// classes no hold covers.
    pub lifecycle_rules: Vec<LifecycleRule>,
    pub sweep_interval_seconds: u64,
    pub active_holds: usize,
    /// What the last sweep deleted and kept.
    pub last_sweep: Option<SweepReport>,
}

/// The retention policy: days per class of stored object, how it is
/// enforced, active holds and the last sweep.
#[utoipa::path(
    tag = "audit",
    responses(
        (status = 200, body = RetentionStatus),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/retention")]
pub async fn retention(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<RetentionStatus>, Problem> {
    let identity = state.identity();
    let retention_config = state.config.retention.with_policy(state.queue.llm_policy().await?.as_ref());
    let audit = state.config.audit.prefix.trim_end_matches('/');
    let exports = state.config.audit.export_prefix.trim_end_matches('/');
    let classes = RetentionClass::ALL
        .into_iter()
        .map(|class| ClassRetention {
            class,
            days: retention_config.days(class),
            keys: match class {
                RetentionClass::Artifacts => "runs/<id>/diff.patch, runs/<id>/summary.json".to_owned(),
                RetentionClass::Logs => "runs/<id>/logs.txt".to_owned(),
                RetentionClass::Transcripts => "runs/<id>/transcript.jsonl".to_owned(),
                RetentionClass::GatewayMetadata => "runs/<id>/model-calls.jsonl".to_owned(),
                RetentionClass::Audit => format!("{audit}/segments/, {audit}/digests/"),
                RetentionClass::Exports => format!("{exports}/"),
            },
        })
        .collect();
    let interval = state.config.retention.sweep_interval_seconds;
    Ok(web::Json(RetentionStatus {
        classes,
        enforcement: if interval > 0 { "sweeper" } else { "none" }.to_owned(),
        sweep_interval_seconds: interval,
        lifecycle_rules: state.lifecycle.clone(),
        active_holds: identity.holds().await?.iter().filter(|h| h.active()).count(),
        last_sweep: identity.last_sweep().await?,
    }))
}
