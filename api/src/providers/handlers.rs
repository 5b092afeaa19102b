//! The provider policy: set here, it replaces the configured allowlist for
//! every run that starts afterwards. (The `providers.configure` permission
//! arrives with identity; until then the bootstrap admin sets it.)

use actix_web::{get, put, web};
use common::audit::ObjectRef;
use common::policy::LlmPolicy;

use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// The provider policy in force: the one set through the API, or the one
/// the gateway configuration implies.
#[utoipa::path(
    tag = "providers",
    responses(
        (status = 200, body = LlmPolicy, example = json!({"default_provider": "azure-openai-prod", "allowed_providers": ["azure-openai-prod", "bedrock-prod"], "disallowed": ["personal-api-keys", "unmanaged-proxies"], "logging": {"prompt_content": "redacted", "metadata": "retained_180_days"}})),
    ),
    security(("bearer" = ["providers.configure"]))
)]
#[get("/v1/llm-policy")]
pub async fn get_llm_policy(
    _caller: Authorized<need::ProvidersConfigure>,
    state: web::Data<AppState>,
) -> Result<web::Json<LlmPolicy>, Problem> {
    if let Some(policy) = state.queue.llm_policy().await? {
        return Ok(web::Json(policy));
    }
    let gateway = &state.config.gateway;
    Ok(web::Json(LlmPolicy {
        default_provider: gateway.allowed_providers.first().cloned(),
        allowed_providers: gateway.allowed_providers.clone(),
        disallowed: Vec::new(),
        logging: common::policy::LlmLogging { prompt_content: gateway.prompt_content, ..Default::default() },
    }))
}

/// Replace the provider policy. Only providers in the gateway configuration
/// can be allowed; runs that start afterwards use it.
#[utoipa::path(
    tag = "providers",
    request_body(content = LlmPolicy, example = json!({"default_provider": "azure-openai-prod", "allowed_providers": ["azure-openai-prod"], "disallowed": ["personal-api-keys"], "logging": {"prompt_content": "redacted", "metadata": "retained_180_days"}})),
    responses(
        (status = 200, body = LlmPolicy),
    ),
    security(("bearer" = ["providers.configure"]))
)]
#[put("/v1/llm-policy")]
pub async fn put_llm_policy(
    caller: Authorized<need::ProvidersConfigure>,
    state: web::Data<AppState>,
    body: crate::json::Json<LlmPolicy>,
) -> Result<web::Json<LlmPolicy>, Problem> {
    let policy = body.into_inner();
    policy.validate(&state.config.gateway)?;
    let before = state.queue.llm_policy().await?;
    let event =
        caller.event("llm_policy.set", ObjectRef::new("llm-policy", "global")).change(before.as_ref(), Some(&policy));
    state.identity().append_audit(&event).await?;
    state.queue.set_llm_policy(&policy).await?;
    tracing::info!(by = %caller.principal, allowed = ?policy.allowed_providers, "provider policy changed");
    Ok(web::Json(policy))
}
