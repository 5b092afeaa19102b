//! Authentication as an extractor: a handler that takes [`Admin`] cannot run
//! for an unauthenticated caller. Until identity lands, the only credential
//! is the configured bootstrap admin token.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::startup::AppState;

/// The caller, authenticated as the bootstrap administrator.
#[derive(Debug, Clone)]
pub struct Admin {
    pub principal: String,
}

pub const BOOTSTRAP_PRINCIPAL: &str = "bootstrap-admin";

/// SHA-256 of a token; tokens are compared by digest so the comparison time
/// does not depend on how much of a guess was right.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl FromRequest for Admin {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Admin, Problem> {
    let unauthorized =
        |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required").detail(detail);
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
    let equal = presented.iter().zip(state.admin_token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if equal {
        Ok(Admin { principal: BOOTSTRAP_PRINCIPAL.to_owned() })
    } else {
        Err(unauthorized("the token is not valid"))
    }
}
