//! The route table and the OpenAPI document, built from the same
//! registration so the spec cannot miss a route.

use actix_web::App;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};
use utoipa_actix_web::AppExt;

use crate::{health, limits, policies, problem, providers, queue, runs, secrets, startup, webhooks};

/// Registers every route on `app`; returns the app and its OpenAPI document.
pub fn routes<T>(app: App<T>) -> (App<T>, OpenApi)
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        >,
{
    let (app, mut doc) = app
        .configure(startup::extractor_config)
        .into_utoipa_app()
        .service(health::healthz)
        .service(health::readyz)
        .service(runs::handlers::create_run)
        .service(runs::handlers::list_runs)
        .service(runs::handlers::get_run)
        .service(runs::handlers::run_logs)
        .service(runs::handlers::cancel_run)
        .service(limits::handlers::get_limits)
        .service(limits::handlers::put_tenant_limits)
        .service(limits::handlers::put_repo_limit)
        .service(queue::handlers::get_queue)
        .service(policies::handlers::get_policies)
        .service(policies::handlers::put_tenant_policy)
        .service(policies::handlers::put_repo_policy)
        .service(providers::handlers::get_llm_policy)
        .service(providers::handlers::put_llm_policy)
        .service(secrets::handlers::put_secret)
        .service(secrets::handlers::list_secrets)
        .service(secrets::handlers::delete_secret)
        .service(webhooks::handlers::github_webhook)
        .default_service(actix_web::web::to(problem::not_found))
        .split_for_parts();
    doc.info = InfoBuilder::new()
        .title("Paddock API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Runs coding agents on your issues inside your infrastructure and hands back draft pull requests.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    components.add_security_scheme(
        "github_signature",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Hub-Signature-256",
            "HMAC-SHA256 of the body under the GitHub App's webhook secret, as `sha256=<hex>`",
        ))),
    );
    (app, doc)
}

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn document() -> OpenApi {
    routes(App::new()).1
}

/// The document rendered exactly as it is committed.
pub fn document_json() -> String {
    let mut json = document().to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}
