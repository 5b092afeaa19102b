//! `/v1/rbac/bindings`, `/v1/service-accounts`. Every
//! change is written together with its audit event (who, what, before,
//! after); nothing here ever shows a token again after it is issued.

use actix_web::{HttpResponse, delete, get, post, web};
use common::audit::{ObjectRef, now_ms};
use common::identity::{Binding, Permission, Role, Scope, Subject, new_service_token, validate_account_name};
use serde::{Deserialize, Serialize};
use store::identity::{ServiceAccount, TokenRecord};
use utoipa::ToSchema;

use crate::auth::{Authorized, need, token_hash_hex};
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

fn new_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// A role to bind to a subject at a scope.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"subject": "group:payments-devs", "role": "requester", "scope": "tenant:payments"}))]
pub struct NewBinding {
    pub subject: Subject,
    pub role: Role,
    pub scope: Scope,
}

/// Every role binding made through the API (configuration bindings from
/// `identity.oidc.role_bindings` are global and not listed).
#[utoipa::path(
    tag = "rbac",
    responses(
        (status = 200, body = Vec<Binding>),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[get("/v1/rbac/bindings")]
pub async fn list_bindings(
    _caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<Vec<Binding>>, Problem> {
    let mut bindings = state.identity().bindings().await?;
    bindings.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(web::Json(bindings))
}

/// Bind a role to a user, group or service account at global, tenant or
/// repository scope. Audited with the binding as `after`.
#[utoipa::path(
    tag = "rbac",
    request_body = NewBinding,
    responses(
        (status = 201, body = Binding),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "The service account does not exist"),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[post("/v1/rbac/bindings")]
pub async fn create_binding(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    body: crate::json::Json<NewBinding>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let store = state.identity();
    if let Subject::ServiceAccount(name) = &body.subject
        && store.service_account(name).await?.is_none()
    {
        return Err(Problem::not_found(format!("service account {name} does not exist")).field("subject"));
    }
    let binding = Binding {
        id: new_id(),
        subject: body.subject,
        role: body.role,
        scope: body.scope,
        created_by: caller.principal.clone(),
        created_at_ms: now_ms(),
    };
    let event =
        caller.event("binding.create", ObjectRef::new("binding", &binding.id)).change(None::<&Binding>, Some(&binding));
    store.add_binding(&binding, &event).await?;
    tracing::info!(by = %caller.principal, subject = %binding.subject, role = binding.role.as_str(), scope = %binding.scope, "role bound");
    Ok(HttpResponse::Created().json(binding))
}

/// Remove a role binding. Audited with the binding as `before`.
#[utoipa::path(
    tag = "rbac",
    params(("id" = String, Path, description = "Binding id")),
    responses(
        (status = 204, description = "Removed"),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[delete("/v1/rbac/bindings/{id}")]
pub async fn delete_binding(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let store = state.identity();
    let binding =
        store.binding(&id).await?.ok_or_else(|| Problem::not_found(format!("binding {id} does not exist")))?;
    let event =
        caller.event("binding.delete", ObjectRef::new("binding", &binding.id)).change(Some(&binding), None::<&Binding>);
    store.remove_binding(&binding.id, &event).await?;
    tracing::info!(by = %caller.principal, subject = %binding.subject, role = binding.role.as_str(), scope = %binding.scope, "role unbound");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "portal", "description": "Internal developer portal", "owner": "alice@example.com"}))]
pub struct NewServiceAccount {
    /// 1-64 lowercase letters, digits and `-`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The person accountable for the account (recorded on its actions).
    pub owner: String,
}

/// Service accounts.
#[utoipa::path(
    tag = "rbac",
    responses(
        (status = 200, body = Vec<ServiceAccount>),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[get("/v1/service-accounts")]
pub async fn list_service_accounts(
    _caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<Vec<ServiceAccount>>, Problem> {
    Ok(web::Json(state.identity().service_accounts().await?))
}

/// Create a service account for a portal or automation. It holds nothing
/// until roles are bound to `service-account:<name>`, and acts only through
/// tokens, which must name the person each run is for.
#[utoipa::path(
    tag = "rbac",
    request_body = NewServiceAccount,
    responses(
        (status = 201, body = ServiceAccount),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "The owner is not a known person"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The name is taken"),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[post("/v1/service-accounts")]
pub async fn create_service_account(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    body: crate::json::Json<NewServiceAccount>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    validate_account_name(&body.name)?;
    let owner_ok =
        !body.owner.is_empty() && body.owner.len() <= 256 && body.owner.chars().all(|c| c.is_ascii_graphic());
    if !owner_ok {
        return Err(Problem::bad_request("`owner` must name a person (1-256 printable characters)").field("owner"));
    }
    // Accountable means someone Paddock knows, so that deactivating them
    // stops the account too: recorded by their verified address (or subject).
    let owner = state
        .identity()
        .person_named(&body.owner, state.issuer())
        .await?
        .and_then(|p| p.email.or(p.subject))
        .ok_or_else(|| {
        Problem::not_found(format!(
            "{} is not a known person: they sign in once, or an administrator declares them (POST /v1/people)",
            body.owner
        ))
        .field("owner")
    })?;
    if body.description.len() > 1024 {
        return Err(Problem::bad_request("`description` must be at most 1024 bytes").field("description"));
    }
    let account = ServiceAccount {
        name: body.name,
        description: body.description,
        owner,
        created_by: caller.principal.clone(),
        created_at_ms: now_ms(),
    };
    let event = caller
        .event("service_account.create", ObjectRef::new("service-account", &account.name))
        .change(None::<&ServiceAccount>, Some(&account));
    if !state.identity().create_service_account(&account, &event).await? {
        return Err(Problem::new(ErrorCode::Exists)
            .detail(format!("a service account named {} exists", account.name))
            .field("name"));
    }
    Ok(HttpResponse::Created().json(account))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"scopes": ["runs.create"], "expires_in_days": 30}))]
pub struct NewToken {
    /// Permissions the token may use, within the account's bindings.
    /// `tools.approve` is refused: service accounts never approve.
    pub scopes: Vec<Permission>,
    /// 1 to 365.
    pub expires_in_days: u32,
}

/// A new token: the only time its value is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    /// Shown once; Paddock keeps only its SHA-256.
    #[schema(example = "pdk_sa_4Qm0cT8v1ZkX3yR7pLw2nB6dF9hJ5sA0eG1iK3oU00aB3c")]
    pub token: String,
    #[serde(flatten)]
    pub record: TokenRecord,
}

/// Issue a token for a service account. The value is in this answer only.
#[utoipa::path(
    tag = "rbac",
    params(("name" = String, Path, description = "Service account", example = "portal")),
    request_body = NewToken,
    responses(
        (status = 201, body = IssuedToken),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[post("/v1/service-accounts/{name}/tokens")]
pub async fn create_token(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: crate::json::Json<NewToken>,
) -> Result<HttpResponse, Problem> {
    let store = state.identity();
    let account = store
        .service_account(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("service account {name} does not exist")))?;
    let body = body.into_inner();
    if body.scopes.is_empty() {
        return Err(Problem::bad_request("`scopes` must name at least one permission").field("scopes"));
    }
    if body.scopes.contains(&Permission::ToolsApprove) {
        return Err(Problem::bad_request("service accounts never approve tools: `tools.approve` cannot be a scope")
            .field("scopes"));
    }
    if !(1..=365).contains(&body.expires_in_days) {
        return Err(Problem::bad_request("`expires_in_days` must be 1 to 365").field("expires_in_days"));
    }
    let token = new_service_token();
    let now = now_ms();
    let mut scopes = body.scopes;
    scopes.sort();
    scopes.dedup();
    let record = TokenRecord {
        id: new_id(),
        account: account.name.clone(),
        scopes,
        expires_at_ms: now + u64::from(body.expires_in_days) * 86_400_000,
        last4: token[token.len() - 4..].to_owned(),
        created_by: caller.principal.clone(),
        created_at_ms: now,
        revoked_at_ms: None,
        revoked_by: None,
    };
    let event =
        caller.event("token.create", ObjectRef::new("token", &record.id)).change(None::<&TokenRecord>, Some(&record));
    store.add_token(&token_hash_hex(&token), &record, &event).await?;
    tracing::info!(by = %caller.principal, account = %account.name, token_id = %record.id, "service-account token issued");
    Ok(HttpResponse::Created().json(IssuedToken { token, record }))
}

/// A service account's tokens (never their values).
#[utoipa::path(
    tag = "rbac",
    params(("name" = String, Path, description = "Service account", example = "portal")),
    responses(
        (status = 200, body = Vec<TokenRecord>),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[get("/v1/service-accounts/{name}/tokens")]
pub async fn list_tokens(
    _caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<web::Json<Vec<TokenRecord>>, Problem> {
    let store = state.identity();
    if store.service_account(&name).await?.is_none() {
        return Err(Problem::not_found(format!("service account {name} does not exist")));
    }
    Ok(web::Json(store.tokens().await?.into_iter().filter(|t| t.account == *name).collect()))
}

/// Revoke one token at once; requests with it fail from now on.
#[utoipa::path(
    tag = "rbac",
    params(
        ("name" = String, Path, description = "Service account", example = "portal"),
        ("id" = String, Path, description = "Token id"),
    ),
    responses(
        (status = 200, body = TokenRecord),
    ),
    security(("bearer" = ["rbac.manage"]))
)]
#[delete("/v1/service-accounts/{name}/tokens/{id}")]
pub async fn revoke_token(
    caller: Authorized<need::RbacManage>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<web::Json<TokenRecord>, Problem> {
    let (name, id) = path.into_inner();
    let store = state.identity();
    let token = store
        .token(&id)
        .await?
        .filter(|t| t.account == name)
        .ok_or_else(|| Problem::not_found(format!("service account {name} has no token {id}")))?;
    Ok(web::Json(super::revoke::revoke_token(&store, &caller, token, "revoked by an administrator").await?))
}
