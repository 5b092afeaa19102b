//! `/v1/tenants`: every tenant and what it owns; tenants declared through
//! the API are changed here, audited before the change takes effect, and
//! never claim a repository another tenant claims.

use std::time::Duration;

use actix_web::{HttpResponse, delete, get, put, web};
use common::audit::{ObjectRef, now_ms};
use common::tenancy::{RepoPattern, Tenant, TenantSource};
use common::validate_tenant;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Authorized, need};
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// What a tenant owns.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"repositories": ["acme/ledger", "acme/payments-*"]}))]
pub struct TenantInput {
    /// `owner/name` patterns, `*` matching any characters but `/`; `*`
    /// alone only for the default tenant.
    pub repositories: Vec<RepoPattern>,
}

/// Every tenant, from configuration and the API.
#[utoipa::path(
    tag = "tenants",
    responses(
        (status = 200, body = Vec<Tenant>),
    ),
    security(("bearer" = ["tenants.manage"]))
)]
#[get("/v1/tenants")]
pub async fn list_tenants(
    _caller: Authorized<need::TenantsManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<Vec<Tenant>>, Problem> {
    let mut tenants = super::tenancy(&state).await?.tenants().to_vec();
    tenants.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(web::Json(tenants))
}

/// One tenant and what it owns.
#[utoipa::path(
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    responses(
        (status = 200, body = Tenant),
    ),
    security(("bearer" = ["tenants.manage"]))
)]
#[get("/v1/tenants/{tenant}")]
pub async fn get_tenant(
    _caller: Authorized<need::TenantsManage>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
) -> Result<web::Json<Tenant>, Problem> {
    validate_tenant(&tenant)?;
    let tenancy = super::tenancy(&state).await?;
    let found = tenancy.get(&tenant).ok_or_else(|| Problem::not_found(format!("no tenant {tenant}")))?;
    Ok(web::Json(found.clone()))
}

/// Declare a tenant or replace what it owns. Refused (409) when a pattern
/// overlaps another tenant's or the tenant is declared in configuration.
/// Runs already accepted keep the tenant they were accepted under.
#[utoipa::path(
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    request_body = TenantInput,
    responses(
        (status = 200, body = Tenant),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Overlaps another tenant, or declared in configuration"),
    ),
    security(("bearer" = ["tenants.manage"]))
)]
#[put("/v1/tenants/{tenant}")]
pub async fn put_tenant(
    caller: Authorized<need::TenantsManage>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
    body: crate::json::Json<TenantInput>,
) -> Result<web::Json<Tenant>, Problem> {
    let name = tenant.into_inner();
    validate_tenant(&name)?;
    let mut repositories = body.into_inner().repositories;
    repositories.sort();
    repositories.dedup();
    let candidate = Tenant {
        name: name.clone(),
        repositories,
        source: TenantSource::Api,
        changed_by: Some(caller.principal.clone()),
        changed_at_ms: Some(now_ms()),
    };
    let _lock = TenantsLock::take(&state).await?;
    let tenancy = super::tenancy(&state).await?;
    let before = tenancy.get(&name).cloned();
    refuse_config(&state, &name)?;
    tenancy
        .admits(&candidate)
        .map_err(|e| Problem::new(ErrorCode::TenantConflict).detail(e.message).field("repositories"))?;
    let event = caller.event("tenant.set", object(&name)).change(before.as_ref(), Some(&candidate));
    state.identity().put_tenant(&candidate, &event).await?;
    tracing::info!(by = %caller.principal, tenant = %name, patterns = candidate.repositories.len(), "tenant declared");
    Ok(web::Json(candidate))
}

/// Remove a tenant declared through the API: its repositories get no new
/// runs until another tenant claims them (accepted runs keep it).
#[utoipa::path(
    tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    responses(
        (status = 204, description = "Removed"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Declared in configuration"),
    ),
    security(("bearer" = ["tenants.manage"]))
)]
#[delete("/v1/tenants/{tenant}")]
pub async fn delete_tenant(
    caller: Authorized<need::TenantsManage>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let name = tenant.into_inner();
    validate_tenant(&name)?;
    refuse_config(&state, &name)?;
    let _lock = TenantsLock::take(&state).await?;
    let store = state.identity();
    let before = store.tenants().await?.into_iter().find(|t| t.name == name);
    let before = before.ok_or_else(|| Problem::not_found(format!("no tenant {name}")))?;
    let event = caller.event("tenant.delete", object(&name)).change(Some(&before), None::<&Tenant>);
    store.remove_tenant(&name, &event).await?;
    tracing::info!(by = %caller.principal, tenant = %name, "tenant removed");
    Ok(HttpResponse::NoContent().finish())
}

fn object(name: &str) -> ObjectRef {
    let mut object = ObjectRef::new("tenant", name);
    object.tenant = Some(name.to_owned());
    object
}

fn refuse_config(state: &AppState, name: &str) -> Result<(), Problem> {
    if state.tenants.iter().any(|t| t.name == name) {
        return Err(Problem::new(ErrorCode::TenantConflict)
            .detail(format!("tenant {name} is declared in configuration (`tenants.{name}`); change it there")));
    }
    Ok(())
}

/// The fleet-wide lock that makes "check for overlaps, then write" one
/// step across API replicas; released when dropped, if still ours.
struct TenantsLock {
    store: store::identity::IdentityStore,
    token: String,
}

const LOCK: &str = "tenants";

impl TenantsLock {
    async fn take(state: &AppState) -> Result<Self, Problem> {
        let store = state.identity();
        for _ in 0..50 {
            if let Some(token) = store.lock(LOCK, Duration::from_secs(30)).await? {
                return Ok(Self { store, token });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Problem::unavailable("another change to tenants is in progress; try again"))
    }
}

impl Drop for TenantsLock {
    fn drop(&mut self) {
        let (store, token) = (self.store.clone(), std::mem::take(&mut self.token));
        tokio::spawn(async move {
            if let Err(error) = store.unlock(LOCK, &token).await {
                tracing::warn!(%error, "the tenants lock stays until it expires");
            }
        });
    }
}
