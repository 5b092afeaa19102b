//! The route table and the OpenAPI document, built from the same
//! registration so the spec cannot miss a route.

use actix_web::App;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi};
use utoipa_actix_web::AppExt;

use crate::problem::ErrorCode;
use crate::{
    audit, costs, health, identity, limits, people, policies, problem, providers, queue, runs, secrets, startup,
    tenants, webhooks,
};

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
        .service(health::metrics)
        .service(runs::handlers::create_run)
        .service(runs::handlers::list_runs)
        .service(runs::handlers::get_run)
        .service(runs::handlers::run_logs)
        .service(runs::handlers::cancel_run)
        .service(runs::handlers::approve_run)
        .service(runs::record::run_record)
        .service(limits::handlers::get_limits)
        .service(limits::handlers::put_tenant_limits)
        .service(limits::handlers::put_repo_limit)
        .service(queue::handlers::get_queue)
        .service(policies::handlers::get_policies)
        .service(policies::handlers::put_tenant_policy)
        .service(policies::handlers::put_repo_policy)
        .service(providers::handlers::get_llm_policy)
        .service(providers::handlers::put_llm_policy)
        .service(tenants::handlers::list_tenants)
        .service(tenants::handlers::get_tenant)
        .service(tenants::handlers::put_tenant)
        .service(tenants::handlers::delete_tenant)
        .service(secrets::handlers::put_secret)
        .service(secrets::handlers::list_secrets)
        .service(costs::tenant_costs)
        .service(secrets::handlers::delete_secret)
        .service(webhooks::handlers::github_webhook)
        .service(identity::handlers::list_bindings)
        .service(identity::handlers::create_binding)
        .service(identity::handlers::delete_binding)
        .service(people::list_people)
        .service(people::declare_person)
        .service(identity::handlers::list_service_accounts)
        .service(identity::handlers::create_service_account)
        .service(identity::handlers::create_token)
        .service(identity::handlers::list_tokens)
        .service(identity::handlers::revoke_token)
        .service(identity::revoke::revoke)
        .service(identity::revoke::deactivate_user)
        .service(identity::revoke::activate_user)
        .service(identity::revoke::get_user)
        .service(audit::handlers::audit_events)
        .service(audit::handlers::verify_audit)
        .service(audit::handlers::audit_status)
        .service(audit::holds::place_hold)
        .service(audit::holds::release_hold)
        .service(audit::holds::list_holds)
        .service(audit::holds::retention)
        .service(audit::exports::create_export)
        .service(audit::exports::get_export)
        .service(audit::exports::verify_bundle)
        .service(audit::exports::download_bundle)
        .default_service(actix_web::web::to(problem::not_found))
        .split_for_parts();
    doc.info = InfoBuilder::new()
        .title("Paddock API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Runs coding agents on your issues inside your infrastructure and hands back draft pull requests.",
        ))
        .build();
    problem_responses(&mut doc);
    crate::contract::constrain_parameters(&mut doc);
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

/// Adds to every operation the problem+json answers its shape implies, so
/// handlers document only the answers of their own (an operation's own
/// description of a status wins):
/// - authenticated: 401 and 403 (a webhook: 401 for a bad signature);
/// - a JSON body: 400, 413 and 415;
/// - path parameters: 400 (malformed) and 404; query parameters: 400;
/// - anything that reads the store: 503.
fn problem_responses(doc: &mut OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    for (path, operation) in operations_mut(doc) {
        let params = operation.parameters.as_deref().unwrap_or_default();
        let in_path = params.iter().any(|p| p.parameter_in == ParameterIn::Path);
        let in_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
        let security = operation.security.as_deref().unwrap_or_default();
        let signed = security.iter().any(|s| serde_json::to_string(s).unwrap_or_default().contains("github_signature"));
        let authenticated = !security.is_empty() && !security.iter().all(|s| *s == Default::default());
        let mut codes: Vec<ErrorCode> = Vec::new();
        if operation.request_body.is_some() || in_path || in_query {
            codes.push(ErrorCode::InvalidRequest);
        }
        if authenticated {
            codes.push(if signed { ErrorCode::BadSignature } else { ErrorCode::Unauthorized });
            if !signed {
                codes.push(ErrorCode::Forbidden);
            }
        }
        if in_path {
            codes.push(ErrorCode::NotFound);
        }
        if operation.request_body.is_some() {
            codes.extend([ErrorCode::PayloadTooLarge, ErrorCode::UnsupportedMediaType]);
        }
        if path != "/healthz" {
            codes.push(ErrorCode::Unavailable);
        }
        for code in codes {
            let status = code.status().as_u16().to_string();
            operation.responses.responses.entry(status).or_insert_with(|| problem_response(code.title()).into());
        }
    }
}

/// Every operation of the document, with its path.
pub(crate) fn operations_mut(
    doc: &mut OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        operations.into_iter().flatten().map(move |operation| (&*path, operation))
    })
}

/// A problem+json answer described as `description`.
fn problem_response(description: &str) -> utoipa::openapi::Response {
    let schema = utoipa::openapi::Ref::from_schema_name("Problem");
    let content = utoipa::openapi::ContentBuilder::new().schema(Some(schema)).build();
    utoipa::openapi::ResponseBuilder::new().description(description).content(problem::CONTENT_TYPE, content).build()
}

/// The methods the document gives the path `path` matches, or `None` when
/// no documented path matches it. From the document, so an answer of 405
/// and its `Allow` header list exactly what is routed.
pub fn allowed_methods(path: &str) -> Option<&'static [String]> {
    static TEMPLATES: std::sync::LazyLock<Vec<(Vec<String>, Vec<String>)>> = std::sync::LazyLock::new(|| {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap_or_default();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        paths
            .into_iter()
            .map(|(template, item)| {
                let segments = template.split('/').map(str::to_owned).collect();
                let methods = item.as_object().into_iter().flatten().map(|(m, _)| m.to_uppercase()).collect();
                (segments, methods)
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |template: &[String]| {
        template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| if t.starts_with('{') { !s.is_empty() } else { t == s })
    };
    TEMPLATES.iter().find(|(template, _)| matches(template)).map(|(_, methods)| methods.as_slice())
}

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn document() -> OpenApi {
    routes(App::new()).1
}

/// The permission matrix in Markdown, as the README carries it: which role
/// grants which permission, then which permissions each operation accepts
/// (any one of them), from the document's security requirements.
pub fn permission_matrix_markdown() -> String {
    use common::identity::{Permission, Role};
    let mut out = String::from("| Permission |");
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Role::ALL.len()));
    out.push('\n');
    for permission in Permission::ALL {
        out.push_str(&format!("| `{}` |", permission.as_str()));
        for role in Role::ALL {
            out.push_str(if role.permissions().contains(&permission) { " ✔ |" } else { " – |" });
        }
        out.push('\n');
    }
    out.push_str("\n| Operation | Needs (any one) | Binding scope that counts |\n|---|---|---|\n");
    let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap_or_default();
    let mut rows = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let mut needs = Vec::new();
            for requirement in op["security"].as_array().into_iter().flatten() {
                match requirement.as_object() {
                    Some(r) if r.is_empty() => needs.push("nothing (probe)".to_owned()),
                    Some(r) if r.contains_key("github_signature") => needs.push("GitHub webhook signature".to_owned()),
                    Some(r) => needs.extend(
                        r.get("bearer")
                            .and_then(|s| s.as_array())
                            .into_iter()
                            .flatten()
                            .filter_map(|s| s.as_str())
                            .map(|s| format!("`{s}`")),
                    ),
                    None => {}
                }
            }
            let reach = if needs.iter().all(|n| !n.starts_with('`')) {
                "–"
            } else if method == "get" && path == "/v1/runs" {
                "any (lists what it covers)"
            } else if path.starts_with("/v1/runs") || path.contains("{owner}/{name}") {
                "global, the run's tenant or repository"
            } else if path == "/v1/tenants/{tenant}" {
                // Declaring what a tenant owns is never the tenant's own call.
                "global"
            } else if path.contains("{tenant}") {
                "global or that tenant"
            } else {
                "global"
            };
            rows.push((path.clone(), method.to_uppercase(), needs.join(", "), reach));
        }
    }
    rows.sort();
    for (path, method, needs, reach) in rows {
        out.push_str(&format!("| `{method} {path}` | {needs} | {reach} |\n"));
    }
    out
}

/// The document rendered exactly as it is committed.
pub fn document_json() -> String {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    crate::contract::constrain_bodies(&mut doc);
    let mut json = serde_json::to_string_pretty(&doc).unwrap_or_default();
    json.push('\n');
    json
}
