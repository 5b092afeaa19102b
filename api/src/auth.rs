//! Authentication and authorization as extractors: a handler names the
//! permission it needs in its signature, so it cannot run for a caller who
//! is unauthenticated (401) or lacks the permission (403).
//!
//! - `Authorized<need::X>`: the permission must be held globally.
//! - `Scoped<need::X>`: the permission must be held somewhere; the handler
//!   gets at the caller only through `.on(tenant, repository)`, which checks
//!   that a binding's scope covers the object (403 otherwise).
//!
//! Callers: OIDC bearer tokens from the identity provider (groups map to
//! roles by `identity.oidc.role_bindings` and by bindings made through the
//! API); service-account tokens (`pdk_sa_…`, whose scopes narrow the
//! account's bindings, never to `tools.approve`); and the bootstrap token
//! (`api.bootstrap_admin_token`), a break-glass credential holding every
//! permission, meant for first set-up and emergencies.

use std::marker::PhantomData;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use common::audit::{Actor, AuditEvent, ObjectRef, now_ms};
use common::identity::{Grants, Permission, Subject, is_service_token};
use futures::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

pub const BOOTSTRAP_PRINCIPAL: &str = "bootstrap-admin";

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerKind {
    Bootstrap,
    User,
    /// A service account, by name; `principal` is its accountable owner.
    ServiceAccount(String),
}

/// An authenticated caller and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The person recorded on what they do (a service account's owner; the
    /// break-glass principal for the bootstrap token).
    pub principal: String,
    pub kind: CallerKind,
    pub grants: Grants,
    /// The peer address, for audit.
    pub source_ip: Option<String>,
    /// This request's `x-request-id`, for audit.
    pub request_id: Option<String>,
    /// Every name of the person behind the credential (their subject and
    /// each address they were seen with; a service account's owner), to
    /// compare people rather than tokens.
    pub names: Vec<String>,
}

impl Caller {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        let (method, via) = match &self.kind {
            CallerKind::Bootstrap => ("bootstrap", None),
            CallerKind::User => ("oidc", None),
            CallerKind::ServiceAccount(name) => ("service-account", Some(Subject::ServiceAccount(name.clone()))),
        };
        Actor { principal: self.principal.clone(), method: method.to_owned(), via: via.map(|s| s.to_string()) }
    }

    /// An audit event of an action by this caller on `object`.
    pub fn event(&self, action: &str, object: ObjectRef) -> AuditEvent {
        AuditEvent::new(action, self.actor(), object)
            .source_ip(self.source_ip.clone())
            .request_id(self.request_id.clone())
    }

    /// Who holds this credential, for scoping what it names (idempotency
    /// keys): a person and their service account are different holders.
    pub fn holder(&self) -> String {
        match &self.kind {
            CallerKind::Bootstrap => BOOTSTRAP_PRINCIPAL.to_owned(),
            CallerKind::User => Subject::User(self.principal.clone()).to_string(),
            CallerKind::ServiceAccount(name) => Subject::ServiceAccount(name.clone()).to_string(),
        }
    }

    pub fn is_service_account(&self) -> bool {
        matches!(self.kind, CallerKind::ServiceAccount(_))
    }
}

/// What a route needs: any one of these permissions.
pub trait Requirement {
    const ANY_OF: &'static [Permission];
}

/// The permissions routes need, one marker type each.
pub mod need {
    use common::identity::Permission;

    use super::Requirement;

    macro_rules! requirement {
        ($name:ident, $($permission:ident),+) => {
            pub struct $name;
            impl Requirement for $name {
                const ANY_OF: &'static [Permission] = &[$(Permission::$permission),+];
            }
        };
    }

    requirement!(RunsCreate, RunsCreate);
    // Run metadata: requesters, log viewers, and approvers deciding on it.
    requirement!(RunsRead, RunsCreate, LogsRead, ToolsApprove);
    requirement!(LogsRead, LogsRead);
    requirement!(ToolsApprove, ToolsApprove);
    requirement!(ProvidersConfigure, ProvidersConfigure);
    requirement!(LimitsManage, LimitsManage);
    requirement!(RbacManage, RbacManage);
    requirement!(AuditRead, AuditRead);
    requirement!(SecurityRevoke, SecurityRevoke);
    requirement!(AuditHold, AuditHold);
    requirement!(TenantsManage, TenantsManage);
    // Deactivating a person: role managers and security responders.
    requirement!(UsersManage, RbacManage, SecurityRevoke);
}

fn forbidden(caller: &Caller, needed: &[Permission], on: &str) -> Problem {
    let needed: Vec<&str> = needed.iter().map(|p| p.as_str()).collect();
    Problem::new(ErrorCode::Forbidden).detail(format!(
        "{} needs the permission {} {on}",
        caller.principal,
        needed.join(" or ")
    ))
}

/// A caller holding one of `R::ANY_OF` at global scope.
pub struct Authorized<R: Requirement> {
    caller: Caller,
    requirement: PhantomData<R>,
}

impl<R: Requirement> std::ops::Deref for Authorized<R> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<R: Requirement + 'static> FromRequest for Authorized<R> {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let caller = holding::<R>(&req, true).await?;
            Ok(Self { caller, requirement: PhantomData })
        })
    }
}

/// A caller holding one of `R::ANY_OF` at some scope; which objects it
/// covers is checked by `on`.
pub struct Scoped<R: Requirement> {
    caller: Caller,
    requirement: PhantomData<R>,
}

impl<R: Requirement> Scoped<R> {
    /// The caller, if one of its bindings covers `repository` of `tenant`.
    pub fn on(&self, tenant: &str, repository: &str) -> Result<&Caller, Problem> {
        if self.allows(tenant, repository) {
            Ok(&self.caller)
        } else {
            Err(forbidden(&self.caller, R::ANY_OF, &format!("on {repository} of tenant {tenant}")))
        }
    }

    /// The caller, if one of its bindings covers all of `tenant`.
    pub fn on_tenant(&self, tenant: &str) -> Result<&Caller, Problem> {
        if R::ANY_OF.iter().any(|&p| self.caller.grants.allows(p, Some(tenant), None)) {
            Ok(&self.caller)
        } else {
            Err(forbidden(&self.caller, R::ANY_OF, &format!("on tenant {tenant}")))
        }
    }

    /// Like [`Scoped::on`], with a refusal that names the repository only:
    /// a caller who may not act there learns nothing of who owns it.
    pub fn on_repository(&self, tenant: &str, repository: &str) -> Result<&Caller, Problem> {
        if self.allows(tenant, repository) {
            Ok(&self.caller)
        } else {
            Err(forbidden(&self.caller, R::ANY_OF, &format!("on {repository}")))
        }
    }

    /// The caller, for recording that it was refused (not for acting).
    pub fn refused(&self) -> &Caller {
        &self.caller
    }

    pub fn allows(&self, tenant: &str, repository: &str) -> bool {
        R::ANY_OF.iter().any(|&p| self.caller.grants.allows(p, Some(tenant), Some(repository)))
    }
}

impl<R: Requirement + 'static> FromRequest for Scoped<R> {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let caller = holding::<R>(&req, false).await?;
            Ok(Self { caller, requirement: PhantomData })
        })
    }
}

/// The authenticated caller, if it holds one of `R::ANY_OF` globally (or,
/// without `global`, anywhere).
async fn holding<R: Requirement>(req: &HttpRequest, global: bool) -> Result<Caller, Problem> {
    let mut caller = authenticate(req).await?;
    caller.request_id = crate::request_id::of(req);
    let held =
        |p: Permission| if global { caller.grants.allows(p, None, None) } else { caller.grants.holds_somewhere(p) };
    if !R::ANY_OF.iter().any(|&p| held(p)) {
        return Err(forbidden(&caller, R::ANY_OF, if global { "at global scope" } else { "at any scope" }));
    }
    Ok(caller)
}

/// SHA-256 of a token; tokens are compared by digest so the comparison time
/// does not depend on how much of a guess was right.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn token_hash_hex(token: &str) -> String {
    common::hash::hex(&token_digest(token))
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(ErrorCode::Unauthorized).detail(detail)
}

async fn authenticate(req: &HttpRequest) -> Result<Caller, Problem> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        tracing::error!("application state missing");
        return Err(Problem::internal());
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send `Authorization: Bearer <token>`"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let source_ip = req.peer_addr().map(|a| a.ip().to_string());
    let presented = token_digest(token);
    let bootstrap = common::hash::ct_eq(&presented, &state.admin_token_digest);
    if bootstrap {
        return Ok(Caller {
            principal: BOOTSTRAP_PRINCIPAL.to_owned(),
            kind: CallerKind::Bootstrap,
            grants: Grants::everything(),
            source_ip,
            request_id: None,
            names: vec![BOOTSTRAP_PRINCIPAL.to_owned()],
        });
    }
    if token.starts_with(common::identity::SERVICE_TOKEN_PREFIX) {
        return service_account(state, token, source_ip).await;
    }
    let Some(verifier) = &state.oidc else {
        return Err(unauthorized("the token is not valid"));
    };
    if token.split('.').count() != 3 {
        return Err(unauthorized("the token is not valid"));
    }
    let identity = verifier.verify(token).await.map_err(|why| unauthorized(&why))?;
    let store = state.identity();
    let person = store.saw_person(crate::people::sighting(&identity), now_ms()).await?;
    // Without a verified address a person is known by their subject only.
    let principal = identity.email.clone().unwrap_or(identity.subject.clone());
    // Whatever this token carries, the person's every name is checked.
    let status = store.status_of(&person.status_keys()).await?;
    if status.deactivated {
        return Err(unauthorized(&format!("{principal} is deactivated")));
    }
    if let Some(before_ms) = status.tokens_revoked_before_ms {
        // A token without `iat` cannot show it came after the revocation.
        if identity.issued_at.is_none_or(|iat| iat * 1000 <= before_ms) {
            return Err(unauthorized("the token was revoked; sign in again"));
        }
    }
    let grants = grants_of(state, &principal, &identity.groups).await?;
    let mut names = person.status_keys();
    names.push(principal.clone());
    Ok(Caller { principal, kind: CallerKind::User, grants, source_ip, request_id: None, names })
}

/// What a person holds: roles their groups map to in configuration, and
/// bindings to `user:<principal>` or any of their groups.
pub async fn grants_of(state: &AppState, principal: &str, groups: &[String]) -> Result<Grants, Problem> {
    let mut grants = Grants::default();
    if let Some(oidc) = &state.config.identity.oidc {
        for role in groups.iter().filter_map(|g| oidc.role_bindings.get(g)).flatten() {
            grants.add_role(*role, &common::identity::Scope::Global);
        }
    }
    let mut subjects: Vec<Subject> = groups.iter().map(|g| Subject::Group(g.clone())).collect();
    subjects.push(Subject::User(principal.to_owned()));
    for binding in state.identity().bindings().await?.iter().filter(|b| subjects.contains(&b.subject)) {
        grants.add_role(binding.role, &binding.scope);
    }
    Ok(grants)
}

async fn service_account(state: &AppState, token: &str, source_ip: Option<String>) -> Result<Caller, Problem> {
    if !is_service_token(token) {
        return Err(unauthorized("the token is not a Paddock service-account token (bad checksum)"));
    }
    let store = state.identity();
    let record =
        store.token_by_hash(&token_hash_hex(token)).await?.ok_or_else(|| unauthorized("the token is not valid"))?;
    if record.revoked_at_ms.is_some() {
        return Err(unauthorized("the token was revoked"));
    }
    if now_ms() >= record.expires_at_ms {
        return Err(unauthorized("the token expired"));
    }
    let account = store
        .service_account(&record.account)
        .await?
        .ok_or_else(|| unauthorized("the token's service account no longer exists"))?;
    // An account acts for its owner: it stops when they are deactivated
    // (and works again on their activation).
    if store.status_named(&account.owner, state.issuer()).await?.deactivated {
        return Err(unauthorized(&format!("the service account's owner {} is deactivated", account.owner)));
    }
    let subject = Subject::ServiceAccount(account.name.clone());
    let mut grants = Grants::default();
    for binding in store.bindings().await?.iter().filter(|b| b.subject == subject) {
        grants.add_role(binding.role, &binding.scope);
    }
    // Service accounts never approve, whatever their bindings say.
    grants.retain(|p| p != Permission::ToolsApprove && record.scopes.contains(&p));
    let kind = CallerKind::ServiceAccount(account.name);
    let names = store.names_of(&account.owner, state.issuer()).await?;
    Ok(Caller { principal: account.owner, kind, grants, source_ip, request_id: None, names })
}
