//! Caps and weights are read by the claim script; changing one parks or
//! un-parks the tenant or repository at once.

use actix_web::{get, put, web};
use common::audit::ObjectRef;
use common::{RepoName, validate_tenant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Authorized, Scoped, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// The largest fair-share weight a tenant may have.
pub const MAX_WEIGHT: f64 = 1000.0;

/// The largest cap on running runs a tenant or repository may have.
pub const MAX_RUNNING: u32 = 1_000_000;

fn cap_ok(max_running: Option<u32>) -> Result<(), Problem> {
    match max_running {
        Some(cap) if cap > MAX_RUNNING => {
            Err(Problem::bad_request("`max_running` must be at most 1000000").field("max_running"))
        }
        _ => Ok(()),
    }
}

/// A tenant's cap on running runs and its fair-share weight.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_running": 20, "weight": 3.0}))]
pub struct TenantLimitsInput {
    /// Most runs of this tenant running at once; `null` or absent for no cap
    /// (0 pauses the tenant).
    pub max_running: Option<u32>,
    /// Share of the workers relative to other tenants in the same priority
    /// band (default 1); absent leaves it unchanged.
    pub weight: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({"tenant": "payments", "max_running": 20, "weight": 3.0}))]
pub struct TenantLimitsView {
    pub tenant: String,
    pub max_running: Option<u32>,
    pub weight: f64,
}

/// A repository's cap on running runs.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_running": 2}))]
pub struct RepoLimitInput {
    /// Most runs of this repository running at once; `null` or absent for no cap.
    pub max_running: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({"tenant": "payments", "repository": "acme/ledger", "max_running": 2, "applies": true}))]
pub struct RepoLimitView {
    pub tenant: String,
    pub repository: String,
    pub max_running: Option<u32>,
    /// Whether runs are held to it: false when the tenant does not own the
    /// repository (set it again under the owner).
    pub applies: bool,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LimitsView {
    pub tenants: Vec<TenantLimitsView>,
    pub repositories: Vec<RepoLimitView>,
}

/// Every cap and weight that is set.
#[utoipa::path(
    tag = "limits",
    responses(
        (status = 200, body = LimitsView, example = json!({"tenants": [{"tenant": "payments", "max_running": 20, "weight": 3.0}], "repositories": [{"tenant": "payments", "repository": "acme/ledger", "max_running": 2, "applies": true}]})),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[get("/v1/limits")]
pub async fn get_limits(
    _caller: Authorized<need::LimitsManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<LimitsView>, Problem> {
    let limits = state.queue.limits().await?;
    let tenancy = crate::tenants::tenancy(&state).await?;
    Ok(web::Json(LimitsView {
        tenants: limits
            .tenants
            .into_iter()
            .map(|(tenant, l)| TenantLimitsView { tenant, max_running: l.max_running, weight: l.weight.unwrap_or(1.0) })
            .collect(),
        repositories: limits
            .repositories
            .into_iter()
            .map(|((tenant, repository), cap)| {
                let applies = crate::tenants::owns(&tenancy, &tenant, &repository);
                RepoLimitView { tenant, repository, max_running: Some(cap), applies }
            })
            .collect(),
    }))
}

/// Set a tenant's cap on running runs and its weight.
#[utoipa::path(
    tag = "limits",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    request_body = TenantLimitsInput,
    responses(
        (status = 200, body = TenantLimitsView),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[put("/v1/limits/tenants/{tenant}")]
pub async fn put_tenant_limits(
    caller: Scoped<need::LimitsManage>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
    body: crate::json::Json<TenantLimitsInput>,
) -> Result<web::Json<TenantLimitsView>, Problem> {
    let tenant = tenant.into_inner();
    validate_tenant(&tenant)?;
    let caller = caller.on_tenant(&tenant)?;
    cap_ok(body.max_running)?;
    if let Some(weight) = body.weight
        && !(weight > 0.0 && weight <= MAX_WEIGHT)
    {
        return Err(Problem::bad_request("`weight` must be greater than 0 and at most 1000").field("weight"));
    }
    let mut object = ObjectRef::new("limits", &tenant);
    object.tenant = Some(tenant.clone());
    let after = serde_json::json!({"max_running": body.max_running, "weight": body.weight});
    state.identity().append_audit(&caller.event("limits.set", object).change(None::<&()>, Some(&after))).await?;
    state.queue.set_tenant_limits(&tenant, body.max_running, body.weight).await?;
    let limits = state.queue.limits().await?;
    let current = limits.tenants.get(&tenant).cloned().unwrap_or_default();
    Ok(web::Json(TenantLimitsView { tenant, max_running: current.max_running, weight: current.weight.unwrap_or(1.0) }))
}

/// Set a repository's cap on running runs (for one tenant's runs on it).
#[utoipa::path(
    tag = "limits",
    params(
        ("tenant" = String, Path, description = "Tenant name", example = "payments"),
        ("owner" = String, Path, description = "Repository owner", example = "acme"),
        ("name" = String, Path, description = "Repository name", example = "ledger"),
    ),
    request_body = RepoLimitInput,
    responses(
        (status = 200, body = RepoLimitView),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[put("/v1/limits/tenants/{tenant}/repositories/{owner}/{name}")]
pub async fn put_repo_limit(
    caller: Scoped<need::LimitsManage>,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    body: crate::json::Json<RepoLimitInput>,
) -> Result<web::Json<RepoLimitView>, Problem> {
    let (tenant, owner, name) = path.into_inner();
    validate_tenant(&tenant)?;
    let repository: RepoName = format!("{owner}/{name}").parse()?;
    // An override for a tenant that does not own the repository could never apply.
    crate::tenants::check_named(&crate::tenants::owner(&state, &repository).await?, Some(&tenant))?;
    let caller = caller.on(&tenant, &repository.to_string())?;
    let mut object = ObjectRef::new("limits", format!("{tenant}/{repository}"));
    (object.tenant, object.repository) = (Some(tenant.clone()), Some(repository.to_string()));
    cap_ok(body.max_running)?;
    let after = serde_json::json!({"max_running": body.max_running});
    state.identity().append_audit(&caller.event("limits.set", object).change(None::<&()>, Some(&after))).await?;
    state.queue.set_repo_limit(&tenant, &repository.to_string(), body.max_running).await?;
    let repository = repository.to_string();
    Ok(web::Json(RepoLimitView { tenant, repository, max_running: body.max_running, applies: true }))
}
