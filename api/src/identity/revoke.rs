//! Emergency revocation: a person's identity-provider tokens (refused if
//! issued before now) or service-account tokens, and with them every live
//! run they started: its run token is deleted at once (the gateway refuses
//! the next call) and the run is cancelled, so its worker kills the sandbox
//! and revokes the run's git token within seconds. The revoker is recorded
//! on each cancelled run and in the audit trail.

use actix_web::{get, post, web};
use common::audit::{ObjectRef, now_ms};
use common::identity::Subject;
use common::{RunRecord, RunState};
use serde::{Deserialize, Serialize};
use store::identity::{IdentityStore, TokenRecord, UserStatus};
use utoipa::ToSchema;

use crate::auth::{Authorized, Caller, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// What to revoke: exactly one of `user` and `service_accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user": "mallory@example.com", "reason": "laptop stolen"}))]
pub struct RevokeRequest {
    /// A person: their identity-provider tokens issued until now stop
    /// working, and their live runs are cancelled.
    #[serde(default)]
    pub user: Option<String>,
    /// A service account's name, or `*` for all: their tokens are revoked
    /// and the live runs they started are cancelled.
    #[serde(default)]
    pub service_accounts: Option<String>,
    /// Why; recorded in the audit trail.
    pub reason: String,
}

/// What a revocation did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevokeReport {
    /// Service-account tokens revoked (ids).
    pub revoked_tokens: Vec<String>,
    /// The person's identity-provider tokens issued before this instant
    /// (ms since the epoch) are refused.
    pub user_tokens_revoked_before_ms: Option<u64>,
    /// Runs cancelled (ids); running ones end within seconds.
    pub cancelled_runs: Vec<String>,
    /// Live run tokens (model gateway) deleted at once.
    pub run_tokens_revoked: usize,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "left the company"}))]
pub struct Reason {
    pub reason: String,
}

pub(crate) fn reason_ok(reason: &str) -> Result<(), Problem> {
    if reason.trim().is_empty() || reason.chars().count() > 1024 {
        return Err(Problem::bad_request("`reason` must be 1-1024 characters").field("reason"));
    }
    Ok(())
}

pub(crate) fn person_ok(user: &str, field: &str) -> Result<(), Problem> {
    if user.is_empty() || user.len() > 256 || !user.chars().all(|c| c.is_ascii_graphic()) {
        return Err(
            Problem::bad_request(format!("`{field}` must name a person (1-256 printable characters)")).field(field)
        );
    }
    Ok(())
}

/// Marks a token revoked, with its audit event.
pub async fn revoke_token(
    store: &IdentityStore,
    caller: &Caller,
    mut token: TokenRecord,
    reason: &str,
) -> Result<TokenRecord, Problem> {
    if token.revoked_at_ms.is_some() {
        return Ok(token);
    }
    let before = token.clone();
    token.revoked_at_ms = Some(now_ms());
    token.revoked_by = Some(caller.principal.clone());
    let event = caller
        .event("token.revoke", ObjectRef::new("token", &token.id))
        .reason(reason)
        .change(Some(&before), Some(&token));
    store.update_token(&token, &event).await?;
    tracing::warn!(by = %caller.principal, token_id = %token.id, account = %token.account, "service-account token revoked");
    Ok(token)
}

/// The live runs `which` picks.
async fn live_runs_where(state: &AppState, which: impl Fn(&RunRecord) -> bool) -> Result<Vec<RunRecord>, Problem> {
    Ok(state.queue.live_runs().await?.into_iter().filter(|r| which(r)).collect())
}

/// Cancels `runs` (deleting their run tokens first); fills the report.
async fn cancel_runs(
    state: &AppState,
    caller: &Caller,
    runs: Vec<RunRecord>,
    report: &mut RevokeReport,
) -> Result<(), Problem> {
    for run in runs {
        if state.queue.revoke_run_gateway_token(run.id).await? {
            report.run_tokens_revoked += 1;
        }
        if let Some((after, _)) = state.queue.cancel(run.id, &caller.principal).await?
            && matches!(after, RunState::Cancelled | RunState::Cancelling)
        {
            tracing::warn!(run_id = %run.id, by = %caller.principal, "run cancelled by revocation");
            report.cancelled_runs.push(run.id.to_string());
        }
    }
    Ok(())
}

/// Refuses `user`'s tokens issued until now (and, with `deactivate`, all
/// of their tokens until reactivated) and cancels their live runs.
async fn revoke_user(
    state: &AppState,
    caller: &Caller,
    user: &str,
    reason: &str,
    deactivate: bool,
) -> Result<RevokeReport, Problem> {
    let store = state.identity();
    // Under every name the person is known by (any address they were seen
    // with, their subject), so that no token of theirs passes.
    let names = store.names_of(user, state.issuer()).await?;
    let before = store.status_of(&names).await?;
    let now = now_ms();
    let after = UserStatus {
        deactivated: deactivate || before.deactivated,
        tokens_revoked_before_ms: Some(now),
        changed_by: Some(caller.principal.clone()),
        changed_at_ms: Some(now),
    };
    let action = if deactivate { "user.deactivate" } else { "user.revoke" };
    let event = caller.event(action, ObjectRef::new("user", user)).reason(reason).change(Some(&before), Some(&after));
    store.set_users(&names, &after, &event).await?;
    let mut report = RevokeReport {
        revoked_tokens: Vec::new(),
        user_tokens_revoked_before_ms: Some(now),
        cancelled_runs: Vec::new(),
        run_tokens_revoked: 0,
    };
    // Their runs: requested by them, or through a service account they own.
    let theirs = |who: &str| names.iter().any(|n| n.eq_ignore_ascii_case(who));
    let accounts: Vec<String> = store
        .service_accounts()
        .await?
        .into_iter()
        .filter(|a| theirs(&a.owner))
        .map(|a| Subject::ServiceAccount(a.name).to_string())
        .collect();
    let runs = live_runs_where(state, |r| {
        theirs(&r.spec.requested_by)
            || r.spec.submitted_by.as_deref().is_some_and(theirs)
            || r.spec.via.as_ref().is_some_and(|v| accounts.contains(v))
    })
    .await?;
    cancel_runs(state, caller, runs, &mut report).await?;
    tracing::warn!(by = %caller.principal, %user, deactivate, cancelled = report.cancelled_runs.len(), "user revoked");
    Ok(report)
}

/// Revoke credentials at once: a person's identity-provider tokens, or one
/// or all service accounts' tokens; every live run they started is
/// cancelled, its run token deleted and its git token revoked by its worker
/// within seconds. The revoker is recorded on each run.
#[utoipa::path(
    tag = "security",
    request_body = RevokeRequest,
    responses(
        (status = 200, body = RevokeReport),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "A named service account does not exist"),
    ),
    security(("bearer" = ["security.revoke"]))
)]
#[post("/v1/security/revoke")]
pub async fn revoke(
    caller: Authorized<need::SecurityRevoke>,
    state: web::Data<AppState>,
    body: crate::json::Json<RevokeRequest>,
) -> Result<web::Json<RevokeReport>, Problem> {
    let body = body.into_inner();
    reason_ok(&body.reason)?;
    match (&body.user, &body.service_accounts) {
        (Some(user), None) => {
            person_ok(user, "user")?;
            Ok(web::Json(revoke_user(&state, &caller, user, &body.reason, false).await?))
        }
        (None, Some(which)) => Ok(web::Json(revoke_service_accounts(&state, &caller, which, &body.reason).await?)),
        _ => Err(Problem::bad_request("name exactly one of `user` and `service_accounts`").field("user")),
    }
}

async fn revoke_service_accounts(
    state: &AppState,
    caller: &Caller,
    which: &str,
    reason: &str,
) -> Result<RevokeReport, Problem> {
    let store = state.identity();
    let all = which == "*";
    if !all && store.service_account(which).await?.is_none() {
        return Err(Problem::not_found(format!("service account {which} does not exist")).field("service_accounts"));
    }
    let now = now_ms();
    let mut report = RevokeReport {
        revoked_tokens: Vec::new(),
        user_tokens_revoked_before_ms: None,
        cancelled_runs: Vec::new(),
        run_tokens_revoked: 0,
    };
    for token in store.tokens().await? {
        if (all || token.account == which) && token.live(now) {
            report.revoked_tokens.push(revoke_token(&store, caller, token, reason).await?.id);
        }
    }
    let via = Subject::ServiceAccount(which.to_owned()).to_string();
    let runs = live_runs_where(state, |r| {
        r.spec.via.as_deref().is_some_and(|v| if all { v.starts_with("service-account:") } else { v == via })
    })
    .await?;
    cancel_runs(state, caller, runs, &mut report).await?;
    let event = caller
        .event("security.revoke", ObjectRef::new("service-account", which))
        .reason(reason)
        .change(None::<&()>, Some(&report));
    store.append_audit(&event).await?;
    Ok(report)
}

/// Deactivate a person: every token they hold stops working until they are
/// reactivated, and their live runs are cancelled.
#[utoipa::path(
    tag = "security",
    params(("user" = String, Path, description = "The person, as the identity provider names them", example = "mallory@example.com")),
    request_body = Reason,
    responses(
        (status = 200, body = RevokeReport),
    ),
    security(("bearer" = ["rbac.manage"]), ("bearer" = ["security.revoke"]))
)]
#[post("/v1/users/{user}/deactivate")]
pub async fn deactivate_user(
    caller: Authorized<need::UsersManage>,
    state: web::Data<AppState>,
    user: web::Path<String>,
    body: crate::json::Json<Reason>,
) -> Result<web::Json<RevokeReport>, Problem> {
    person_ok(&user, "user")?;
    reason_ok(&body.reason)?;
    Ok(web::Json(revoke_user(&state, &caller, &user, &body.reason, true).await?))
}

/// Reactivate a person; tokens issued before the deactivation stay refused.
#[utoipa::path(
    tag = "security",
    params(("user" = String, Path, description = "The person", example = "mallory@example.com")),
    request_body = Reason,
    responses(
        (status = 200, body = UserStatus),
    ),
    security(("bearer" = ["rbac.manage"]), ("bearer" = ["security.revoke"]))
)]
#[post("/v1/users/{user}/activate")]
pub async fn activate_user(
    caller: Authorized<need::UsersManage>,
    state: web::Data<AppState>,
    user: web::Path<String>,
    body: crate::json::Json<Reason>,
) -> Result<web::Json<UserStatus>, Problem> {
    person_ok(&user, "user")?;
    reason_ok(&body.reason)?;
    let store = state.identity();
    let before = store.status_named(&user, state.issuer()).await?;
    let after = UserStatus {
        deactivated: false,
        changed_by: Some(caller.principal.clone()),
        changed_at_ms: Some(now_ms()),
        ..before.clone()
    };
    let event = caller
        .event("user.activate", ObjectRef::new("user", user.as_str()))
        .reason(&body.reason)
        .change(Some(&before), Some(&after));
    // A deactivation recorded under any of the person's names ends here.
    store.set_users(&store.names_of(&user, state.issuer()).await?, &after, &event).await?;
    Ok(web::Json(after))
}

/// A person's status in Paddock (deactivated, tokens revoked before).
#[utoipa::path(
    tag = "security",
    params(("user" = String, Path, description = "The person", example = "mallory@example.com")),
    responses(
        (status = 200, body = UserStatus),
    ),
    security(("bearer" = ["rbac.manage"]), ("bearer" = ["security.revoke"]))
)]
#[get("/v1/users/{user}")]
pub async fn get_user(
    _caller: Authorized<need::UsersManage>,
    state: web::Data<AppState>,
    user: web::Path<String>,
) -> Result<web::Json<UserStatus>, Problem> {
    person_ok(&user, "user")?;
    // Under every name the person is known by.
    Ok(web::Json(state.identity().status_named(&user, state.issuer()).await?))
}
