//! Tenants own repositories; a run's tenant is derived from its repository
//! here, for the API and the webhook alike, and nowhere else.
//! `/v1/tenants` declares tenants beside those in configuration.

pub mod cache;
pub mod handlers;

use common::audit::{Actor, AuditEvent, ObjectRef, Outcome};
use common::tenancy::{Tenancy, Tenant, Unowned};
use common::{RepoName, RunSpec};

use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// A repository and the tenant that owns it; only [`owner`] makes one, so
/// a run's tenant cannot come from anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    tenant: String,
    repository: RepoName,
}

impl Owned {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn repository(&self) -> &RepoName {
        &self.repository
    }

    /// `spec` with this tenant and repository, whatever it held.
    pub fn apply(&self, spec: RunSpec) -> RunSpec {
        RunSpec { tenant: self.tenant.clone(), repository: self.repository.clone(), ..spec }
    }
}

/// Every tenant: configuration's, then the API's (a name configuration
/// declares is configuration's alone).
pub async fn tenancy(state: &AppState) -> Result<Tenancy, Problem> {
    Ok(tenancy_with(state, state.identity().tenants().await?))
}

/// Configuration's tenants, then those of `declared` it does not name.
pub fn tenancy_with(state: &AppState, declared: Vec<Tenant>) -> Tenancy {
    let mut tenants: Vec<Tenant> = state.tenants.clone();
    tenants.extend(declared.into_iter().filter(|t| !state.tenants.iter().any(|c| c.name == t.name)));
    Tenancy::new(tenants, &state.config.api.default_tenant)
}

/// The tenant owning `repository`, or 403 when none does (or two claim it).
pub async fn owner(state: &AppState, repository: &RepoName) -> Result<Owned, Problem> {
    owner_in(&tenancy(state).await?, repository)
}

/// [`owner`] under `tenancy`.
pub fn owner_in(tenancy: &Tenancy, repository: &RepoName) -> Result<Owned, Problem> {
    match tenancy.owner_of(repository) {
        Ok(tenant) => Ok(Owned { tenant: tenant.to_owned(), repository: repository.clone() }),
        Err(unowned @ Unowned::Nobody(_)) => {
            Err(Problem::new(ErrorCode::UnownedRepository).detail(unowned.to_string()).field("repository"))
        }
        Err(contested) => Err(Problem::new(ErrorCode::UnownedRepository).detail(contested.to_string())),
    }
}

/// Whether `tenant` owns `repository` now (so its override applies).
pub fn owns(tenancy: &Tenancy, tenant: &str, repository: &str) -> bool {
    repository.parse::<RepoName>().ok().is_some_and(|r| tenancy.owner_of(&r).is_ok_and(|owner| owner == tenant))
}

/// 403 naming both tenants when `named` is not the owner.
pub fn check_named(owned: &Owned, named: Option<&str>) -> Result<(), Problem> {
    match named {
        Some(named) if named != owned.tenant => Err(Problem::new(ErrorCode::WrongTenant)
            .detail(format!(
                "{} belongs to tenant {}, not {named}; a run's tenant is the tenant that owns its repository",
                owned.repository, owned.tenant
            ))
            .field("tenant")),
        _ => Ok(()),
    }
}

/// The audit event of a request refused for where it points: who asked,
/// for which repository (and tenant, when one owns it), and why.
pub fn refusal(actor: Actor, repository: &RepoName, tenant: Option<&str>, why: &Problem) -> AuditEvent {
    let mut object = ObjectRef::new("repository", repository.to_string());
    object.tenant = tenant.map(str::to_owned);
    object.repository = Some(repository.to_string());
    let mut event =
        AuditEvent::new("run.refuse", actor, object).reason(why.detail.clone().unwrap_or_else(|| why.title.clone()));
    event.outcome = Outcome::Failure;
    event
}
