//! A run's sandbox policy is the configured default, then its tenant's
//! override, then its repository's; it is resolved and recorded on the run
//! when the run is accepted.

use actix_web::{get, put, web};
use common::audit::ObjectRef;
use common::policy::{PolicyOverride, SandboxPolicy};
use common::{RepoName, validate_tenant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Authorized, Scoped, need};
use crate::problem::Problem;
use crate::startup::AppState;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct PolicyEntry {
    pub tenant: String,
    /// Absent for a tenant-wide override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(rename = "override")]
    pub policy_override: PolicyOverride,
    /// Whether runs get it: false for a repository override stored under a
    /// tenant that does not own the repository (set it again under the owner).
    pub applies: bool,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct PoliciesView {
    /// What runs get when nothing overrides it.
    pub defaults: SandboxPolicy,
    pub overrides: Vec<PolicyEntry>,
}

/// The default sandbox policy and every override.
#[utoipa::path(
    tag = "policies",
    responses(
        (status = 200, body = PoliciesView),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[get("/v1/policies")]
pub async fn get_policies(
    _caller: Authorized<need::LimitsManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<PoliciesView>, Problem> {
    let tenancy = crate::tenants::tenancy(&state).await?;
    let overrides = state
        .queue
        .policies()
        .await?
        .into_iter()
        .map(|(tenant, repository, policy_override)| {
            let applies = repository.as_deref().is_none_or(|r| crate::tenants::owns(&tenancy, &tenant, r));
            PolicyEntry { tenant, repository, policy_override, applies }
        })
        .collect();
    Ok(web::Json(PoliciesView { defaults: state.config.default_policy(), overrides }))
}

fn validated(over: &PolicyOverride) -> Result<(), Problem> {
    over.validate()?;
    if over.egress == Some(common::config::EgressPreset::None)
        && over.egress_allow.as_ref().is_some_and(|a| !a.is_empty())
    {
        return Err(
            Problem::bad_request("`egress_allow` has no effect with egress `none`; use `custom`").field("egress_allow")
        );
    }
    Ok(())
}

/// Replace a tenant's sandbox policy override (`{}` removes it).
#[utoipa::path(
    tag = "policies",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    request_body(content = PolicyOverride, example = json!({"memory_bytes": 4294967296_i64, "timeout_seconds": 1800, "egress": "registries"})),
    responses(
        (status = 200, body = PolicyEntry),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[put("/v1/policies/tenants/{tenant}")]
pub async fn put_tenant_policy(
    caller: Scoped<need::LimitsManage>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
    body: crate::json::Json<PolicyOverride>,
) -> Result<web::Json<PolicyEntry>, Problem> {
    let tenant = tenant.into_inner();
    validate_tenant(&tenant)?;
    let caller = caller.on_tenant(&tenant)?;
    validated(&body)?;
    let mut object = ObjectRef::new("policy", &tenant);
    object.tenant = Some(tenant.clone());
    let event = caller.event("policy.set", object).change(None::<&()>, Some(&*body));
    state.identity().set_policy(&tenant, None, &body, &event).await?;
    Ok(web::Json(PolicyEntry { tenant, repository: None, policy_override: body.into_inner(), applies: true }))
}

/// Replace a repository's sandbox policy override for one tenant (`{}` removes it).
#[utoipa::path(
    tag = "policies",
    params(
        ("tenant" = String, Path, description = "Tenant name", example = "payments"),
        ("owner" = String, Path, description = "Repository owner", example = "acme"),
        ("name" = String, Path, description = "Repository name", example = "ledger"),
    ),
    request_body(content = PolicyOverride, example = json!({"egress": "custom", "egress_allow": ["pypi.org", "*.corp.example"]})),
    responses(
        (status = 200, body = PolicyEntry),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[put("/v1/policies/tenants/{tenant}/repositories/{owner}/{name}")]
pub async fn put_repo_policy(
    caller: Scoped<need::LimitsManage>,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    body: crate::json::Json<PolicyOverride>,
) -> Result<web::Json<PolicyEntry>, Problem> {
    let (tenant, owner, name) = path.into_inner();
    validate_tenant(&tenant)?;
    let repository: RepoName = format!("{owner}/{name}").parse()?;
    // An override for a tenant that does not own the repository could never apply.
    crate::tenants::check_named(&crate::tenants::owner(&state, &repository).await?, Some(&tenant))?;
    let caller = caller.on(&tenant, &repository.to_string())?;
    validated(&body)?;
    let mut object = ObjectRef::new("policy", format!("{tenant}/{repository}"));
    (object.tenant, object.repository) = (Some(tenant.clone()), Some(repository.to_string()));
    let event = caller.event("policy.set", object).change(None::<&()>, Some(&*body));
    state.identity().set_policy(&tenant, Some(&repository.to_string()), &body, &event).await?;
    let repository = Some(repository.to_string());
    Ok(web::Json(PolicyEntry { tenant, repository, policy_override: body.into_inner(), applies: true }))
}
