//! Registered secrets are write-only: the API stores them sealed and shows
//! only a fingerprint. Every run of the tenant that starts afterwards
//! redacts them by exact match, wherever they appear.

use actix_web::{HttpResponse, delete, get, put, web};
use common::audit::ObjectRef;
use common::sealed::{SecretBox, fingerprint};
use common::{ValidationError, validate_tenant};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use store::StoredSecret;
use utoipa::ToSchema;

use crate::auth::{Scoped, need};
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The secret itself: 8 to 4096 characters.
    #[schema(example = "s3cr3t-deploy-key-value")]
    pub value: String,
}

/// A registered secret as the API shows it: never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretInfo {
    #[schema(example = "deploy-key")]
    pub name: String,
    /// First 12 hex digits of the value's SHA-256.
    #[schema(example = "3f1c9a0b2d4e")]
    pub fingerprint: String,
    pub created_at_ms: u64,
    #[schema(example = "bootstrap-admin")]
    pub created_by: String,
}

impl SecretInfo {
    fn of(name: String, stored: StoredSecret) -> Self {
        Self {
            name,
            fingerprint: stored.fingerprint,
            created_at_ms: stored.created_at_ms,
            created_by: stored.created_by,
        }
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("name", "must be 1-64 characters of letters, digits, `-`, `_`, `.`"))
    }
}

/// Register or replace a secret of a tenant. Its runs redact it from then on.
#[utoipa::path(
    tag = "secrets",
    params(
        ("tenant" = String, Path, description = "Tenant name", example = "payments"),
        ("name" = String, Path, description = "A name for the secret", example = "deploy-key"),
    ),
    request_body(content = SecretValue),
    responses(
        (status = 200, body = SecretInfo),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "secrets.encryption_key is not configured"),
    ),
    security(("bearer" = ["providers.configure"]))
)]
#[put("/v1/tenants/{tenant}/secrets/{name}")]
pub async fn put_secret(
    caller: Scoped<need::ProvidersConfigure>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: crate::json::Json<SecretValue>,
) -> Result<web::Json<SecretInfo>, Problem> {
    let (tenant, name) = path.into_inner();
    validate_tenant(&tenant)?;
    let caller = caller.on_tenant(&tenant)?;
    validate_name(&name)?;
    let value = body.into_inner().value;
    if !(8..=4096).contains(&value.chars().count()) {
        return Err(ValidationError::new("value", "must be 8 to 4096 characters").into());
    }
    let Some(key) = &state.config.secrets.encryption_key else {
        return Err(Problem::new(ErrorCode::SecretsUnavailable)
            .detail("secrets.encryption_key is not configured on this server"));
    };
    let vault = SecretBox::new(key.expose_secret()).map_err(|_| Problem::internal())?;
    let stored = StoredSecret {
        sealed: vault.seal(&value),
        fingerprint: fingerprint(&value),
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        created_by: caller.principal.clone(),
    };
    let mut object = ObjectRef::new("secret", format!("{tenant}/{name}"));
    object.tenant = Some(tenant.clone());
    let after = serde_json::json!({"name": name, "fingerprint": stored.fingerprint});
    state.identity().append_audit(&caller.event("secret.put", object).change(None::<&()>, Some(&after))).await?;
    state.queue.put_tenant_secret(&tenant, &name, &stored).await?;
    tracing::info!(by = %caller.principal, %tenant, %name, fingerprint = %stored.fingerprint, "tenant secret registered");
    Ok(web::Json(SecretInfo::of(name, stored)))
}

/// A tenant's registered secrets: names and fingerprints, never values.
#[utoipa::path(
    tag = "secrets",
    params(("tenant" = String, Path, description = "Tenant name", example = "payments")),
    responses(
        (status = 200, body = Vec<SecretInfo>),
    ),
    security(("bearer" = ["providers.configure"]))
)]
#[get("/v1/tenants/{tenant}/secrets")]
pub async fn list_secrets(
    caller: Scoped<need::ProvidersConfigure>,
    state: web::Data<AppState>,
    tenant: web::Path<String>,
) -> Result<web::Json<Vec<SecretInfo>>, Problem> {
    let tenant = tenant.into_inner();
    validate_tenant(&tenant)?;
    caller.on_tenant(&tenant)?;
    let secrets = state.queue.tenant_secrets(&tenant).await?;
    Ok(web::Json(secrets.into_iter().map(|(name, stored)| SecretInfo::of(name, stored)).collect()))
}

/// Forget a registered secret; runs that start afterwards no longer redact it.
#[utoipa::path(
    tag = "secrets",
    params(
        ("tenant" = String, Path, description = "Tenant name", example = "payments"),
        ("name" = String, Path, description = "The secret's name", example = "deploy-key"),
    ),
    responses(
        (status = 204, description = "Removed"),
    ),
    security(("bearer" = ["providers.configure"]))
)]
#[delete("/v1/tenants/{tenant}/secrets/{name}")]
pub async fn delete_secret(
    caller: Scoped<need::ProvidersConfigure>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (tenant, name) = path.into_inner();
    validate_tenant(&tenant)?;
    let caller = caller.on_tenant(&tenant)?;
    validate_name(&name)?;
    let mut object = ObjectRef::new("secret", format!("{tenant}/{name}"));
    object.tenant = Some(tenant.clone());
    state.identity().append_audit(&caller.event("secret.delete", object)).await?;
    if !state.queue.delete_tenant_secret(&tenant, &name).await? {
        return Err(Problem::not_found(format!("tenant `{tenant}` has no secret `{name}`")));
    }
    tracing::info!(by = %caller.principal, %tenant, %name, "tenant secret removed");
    Ok(HttpResponse::NoContent().finish())
}
