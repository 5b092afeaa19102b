//! People Paddock knows, and who a run may be attributed to. A person is
//! who the identity provider says (issuer and `sub`, with the addresses it
//! verified), or someone an administrator declared before they signed in.
//! `on_behalf_of` must name such a person, active, holding `runs.create`
//! where the run goes.

use actix_web::{HttpResponse, get, post, web};
use common::audit::{ObjectRef, now_ms};
use common::identity::Permission;
use serde::Deserialize;
use store::people::Person;
use utoipa::ToSchema;

use crate::auth::{Authorized, need};
use crate::oidc::Identity;
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// Whether `email` is an address Paddock accepts as a person's name:
/// `local@domain`, at most 254 characters of letters, digits and
/// `. _ % + -`, so it can never carry Markdown, HTML or a mention.
pub fn email_ok(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    let local_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-');
    // Dot-separated labels of letters, digits and inner `-`, at least two.
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    email.len() <= 254
        && !local.is_empty()
        && local.chars().all(local_ok)
        && domain.split('.').count() >= 2
        && domain.split('.').all(label_ok)
}

/// What a verified token says about its person.
pub fn sighting(identity: &Identity) -> Person {
    Person {
        id: Person::id_of(&identity.issuer, &identity.subject),
        issuer: Some(identity.issuer.clone()),
        subject: Some(identity.subject.clone()),
        email: identity.email.clone(),
        emails: identity.email.iter().cloned().collect(),
        groups: identity.groups.clone(),
        first_seen_ms: None,
        last_seen_ms: None,
        declared_by: None,
    }
}

/// The person `on_behalf_of` names, checked: a valid address of a known,
/// active person who may request runs on `repository` of `tenant`.
pub async fn attributable(state: &AppState, email: &str, tenant: &str, repository: &str) -> Result<String, Problem> {
    let field = |p: Problem| p.field("on_behalf_of");
    if !email_ok(email) {
        return Err(field(Problem::bad_request(
            "`on_behalf_of` must be a person's email address (letters, digits, `._%+-`, one `@`)",
        )));
    }
    let email = email.to_lowercase();
    let store = state.identity();
    let person = store.person_by_email(&email).await?.ok_or_else(|| {
        field(Problem::new(ErrorCode::Forbidden).detail(format!(
            "{email} is not a known person: nobody with that verified address has signed in, and no administrator declared them"
        )))
    })?;
    if store.status_of(&person.status_keys()).await?.deactivated {
        return Err(field(Problem::new(ErrorCode::Forbidden).detail(format!("{email} is deactivated"))));
    }
    // Groups only as recently as the identity provider vouched for them.
    let trusted_ms = state.config.identity.oidc.as_ref().map_or(0, |o| o.groups_trusted_seconds * 1000);
    let fresh = person.last_seen_ms.is_some_and(|seen| now_ms().saturating_sub(seen) <= trusted_ms);
    let groups = if fresh { person.groups.as_slice() } else { &[] };
    let grants = crate::auth::grants_of(state, &email, groups).await?;
    if !grants.allows(Permission::RunsCreate, Some(tenant), Some(repository)) {
        return Err(field(Problem::new(ErrorCode::Forbidden).detail(format!(
            "{email} does not hold runs.create on {repository} of tenant {tenant}, so no run there can be theirs"
        ))));
    }
    Ok(email)
}

/// A person to declare before they have signed in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "bob@example.com"}))]
pub struct NewPerson {
    /// Their address at the identity provider.
    pub email: String,
}

/// Everyone Paddock knows: seen through the identity provider or declared.
#[utoipa::path(
    tag = "rbac",
    responses(
        (status = 200, body = Vec<Person>),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[get("/v1/people")]
pub async fn list_people(
    _caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<Vec<Person>>, Problem> {
    let mut people = state.identity().people().await?;
    people.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(web::Json(people))
}

/// Declare a person who has not signed in yet, so that a service account
/// may request runs for them. Refused (409) for an address already known.
#[utoipa::path(
    tag = "rbac",
    request_body = NewPerson,
    responses(
        (status = 201, body = Person),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The address belongs to a known person"),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[post("/v1/people")]
pub async fn declare_person(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    body: crate::json::Json<NewPerson>,
) -> Result<HttpResponse, Problem> {
    let email = body.into_inner().email;
    if !email_ok(&email) {
        return Err(
            Problem::bad_request("`email` must be an email address (letters, digits, `._%+-`, one `@`)").field("email")
        );
    }
    let email = email.to_lowercase();
    let store = state.identity();
    if store.person_by_email(&email).await?.is_some() {
        return Err(Problem::new(ErrorCode::Exists).detail(format!("{email} is a known person")).field("email"));
    }
    let person = Person {
        id: format!("declared#{email}"),
        issuer: None,
        subject: None,
        email: Some(email.clone()),
        emails: vec![email.clone()],
        groups: Vec::new(),
        first_seen_ms: None,
        last_seen_ms: None,
        declared_by: Some(caller.principal.clone()),
    };
    let event = caller.event("person.declare", ObjectRef::new("person", &person.id)).change(None::<&()>, Some(&person));
    store.declare_person(&person, &email, &event).await?;
    tracing::info!(by = %caller.principal, %email, at = now_ms(), "person declared");
    Ok(HttpResponse::Created().json(person))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_addresses_name_people() {
        for good in ["alice@example.com", "a.b+tag@sub.example.co", "x_y-z%1@e.io"] {
            assert!(email_ok(good), "{good}");
        }
        let bad = [
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "[alice](https://evil)@x.com",
            "alice@example.com\n# Approved",
            "**bob**@x.com",
            "<img>@x.com",
            "a@b@c.com",
            "`x`@y.com",
            "alice@.example.com",
            "@here",
        ];
        for bad in bad {
            assert!(!email_ok(bad), "{bad}");
        }
    }
}
