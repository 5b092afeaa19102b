//! Authentication and authorization as an extractor: a handler names the
//! permission it needs in its signature (`Authorized<need::RunsCreate>`), so
//! it cannot run for a caller who is unauthenticated (401) or lacks that
//! permission (403). Deny by default: a caller holds only what its roles
//! grant.
//!
//! Callers: OIDC bearer tokens from the identity provider, whose groups map
//! to roles by `identity.oidc.role_bindings`; and the bootstrap token
//! (`api.bootstrap_admin_token`), a break-glass credential holding every
//! permission, meant for first set-up and emergencies.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::ops::Deref;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use common::identity::Permission;
use futures::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::startup::AppState;

pub const BOOTSTRAP_PRINCIPAL: &str = "bootstrap-admin";

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    Bootstrap,
    User,
}

/// An authenticated caller and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The person (or break-glass principal) recorded on what they do.
    pub principal: String,
    pub kind: CallerKind,
    pub permissions: BTreeSet<Permission>,
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
    // Run metadata: its requester or a log viewer.
    requirement!(RunsRead, RunsCreate, LogsRead);
    requirement!(LogsRead, LogsRead);
    requirement!(ProvidersConfigure, ProvidersConfigure);
    requirement!(LimitsManage, LimitsManage);
}

/// A caller holding one of `R::ANY_OF`.
pub struct Authorized<R: Requirement> {
    caller: Caller,
    requirement: PhantomData<R>,
}

impl<R: Requirement> Deref for Authorized<R> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

/// SHA-256 of a token; tokens are compared by digest so the comparison time
/// does not depend on how much of a guess was right.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl<R: Requirement + 'static> FromRequest for Authorized<R> {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let caller = authenticate(&req).await?;
            if !R::ANY_OF.iter().any(|p| caller.permissions.contains(p)) {
                let needed: Vec<&str> = R::ANY_OF.iter().map(|p| p.as_str()).collect();
                return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Permission denied").detail(format!(
                    "{} needs the permission {}",
                    caller.principal,
                    needed.join(" or ")
                )));
            }
            Ok(Self { caller, requirement: PhantomData })
        })
    }
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required").detail(detail)
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
    let presented = token_digest(token);
    let bootstrap = presented.iter().zip(state.admin_token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if bootstrap {
        let permissions = Permission::ALL.into_iter().collect();
        return Ok(Caller { principal: BOOTSTRAP_PRINCIPAL.to_owned(), kind: CallerKind::Bootstrap, permissions });
    }
    let (Some(verifier), Some(oidc)) = (&state.oidc, &state.config.identity.oidc) else {
        return Err(unauthorized("the token is not valid"));
    };
    if token.split('.').count() != 3 {
        return Err(unauthorized("the token is not valid"));
    }
    let identity = verifier.verify(token).await.map_err(|why| unauthorized(&why))?;
    let permissions = identity
        .groups
        .iter()
        .filter_map(|group| oidc.role_bindings.get(group))
        .flatten()
        .flat_map(|role| role.permissions().iter().copied())
        .collect();
    let principal = identity.email.unwrap_or(identity.subject);
    Ok(Caller { principal, kind: CallerKind::User, permissions })
}
