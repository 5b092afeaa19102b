//! The permission matrix, walked: every operation in the OpenAPI document,
//! for every role bound at every kind of scope (and for no credentials at
//! all), answers 401, 403 or success exactly as the matrix says.
//!
//! Expectations come from two independent sources: the permissions each
//! operation declares in the document (its bearer scopes, any one of them
//! suffices) and the roles in `common::identity`; which objects an
//! operation touches is read off its path here, not from the handlers. An
//! operation without a fixture below fails the test, so a new route cannot
//! go unchecked.

use common::identity::{Permission, Role};
use serde_json::{Value, json};
use tests::oidc::OidcIssuer;
use tests::{TestApp, spawn_app};

const TENANT: &str = "matrix";

/// Where a caller's binding applies, relative to the objects under test.
#[derive(Clone, Copy, Debug)]
enum At {
    Global,
    OurTenant,
    OtherTenant,
    OurRepo,
    OtherRepo,
}

impl At {
    const ALL: [At; 5] = [At::Global, At::OurTenant, At::OtherTenant, At::OurRepo, At::OtherRepo];

    fn scope(self, repo: &str) -> String {
        match self {
            At::Global => "global".to_owned(),
            At::OurTenant => format!("tenant:{TENANT}"),
            At::OtherTenant => "tenant:elsewhere".to_owned(),
            At::OurRepo => format!("repo:{repo}"),
            At::OtherRepo => "repo:acme/elsewhere".to_owned(),
        }
    }

    fn covers_our_objects(self) -> bool {
        matches!(self, At::Global | At::OurTenant | At::OurRepo)
    }
}

/// How far an operation reaches: everything (global), all of our tenant,
/// an object of our tenant on our repository, or a listing filtered to what
/// the caller may see.
#[derive(Debug, PartialEq)]
enum Reach {
    Global,
    WholeTenant,
    OurRepo,
    Filtered,
}

fn reach(method: &str, path: &str) -> Reach {
    if method == "get" && path == "/v1/runs" {
        Reach::Filtered
    } else if path == "/v1/tenants/{tenant}" {
        Reach::Global
    } else if path.starts_with("/v1/runs") || path.contains("{owner}/{name}") {
        Reach::OurRepo
    } else if path.contains("{tenant}") {
        Reach::WholeTenant
    } else {
        Reach::Global
    }
}

struct World {
    app: TestApp,
    repo: String,
    owner_name: (String, String),
}

impl World {
    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, body) = self.app.admin_call(method, path, body).await;
        assert!(status < 300, "fixture {method} {path}: {status} {body}");
        body
    }

    /// A run of our tenant on our repository, requested by the bootstrap
    /// principal (so nobody in the matrix approves their own run).
    async fn run(&self) -> String {
        let body = json!({"repository": self.repo, "base_ref": "main", "task": {"title": "t"}, "tenant": TENANT});
        self.admin("POST", "/v1/runs", body).await["id"].as_str().unwrap().to_owned()
    }

    /// An export that has finished (verifying a running one is a conflict).
    async fn finished_export(&self) -> String {
        let export = self.app.finished_export(json!({"since_ms": common::audit::now_ms() - 1000})).await;
        export["id"].as_str().unwrap().to_owned()
    }

    /// The request that succeeds for an allowed caller: (path, body).
    async fn request(&self, method: &str, template: &str) -> (String, Option<Value>) {
        let (owner, name) = &self.owner_name;
        let unique = ulid::Ulid::new().to_string().to_lowercase();
        let fill = |p: &str| {
            p.replace("{tenant}", TENANT)
                .replace("{owner}", owner)
                .replace("{name}", name)
                .replace("{user}", "someone@example.com")
        };
        let path = fill(template);
        let body = match (method, template) {
            ("post", "/v1/runs") => {
                Some(json!({"repository": self.repo, "base_ref": "main", "task": {"title": "t"}, "tenant": TENANT}))
            }
            ("get", "/v1/runs/{id}") | ("get", "/v1/runs/{id}/logs") | ("get", "/v1/runs/{id}/record") => {
                return (path.replace("{id}", &self.run().await), None);
            }
            ("post", "/v1/runs/{id}/cancel") | ("post", "/v1/runs/{id}/approve") => {
                return (path.replace("{id}", &self.run().await), None);
            }
            ("put", "/v1/limits/tenants/{tenant}") => Some(json!({"max_running": 50})),
            ("put", "/v1/limits/tenants/{tenant}/repositories/{owner}/{name}") => Some(json!({"max_running": 5})),
            // Keeps every run of the tenant waiting for approval.
            ("put", "/v1/policies/tenants/{tenant}") => Some(json!({"approval": "always"})),
            ("put", "/v1/policies/tenants/{tenant}/repositories/{owner}/{name}") => Some(json!({})),
            ("put", "/v1/llm-policy") => Some(
                json!({"allowed_providers": [], "logging": {"prompt_content": "redacted", "metadata": "retained_30_days"}}),
            ),
            // Tenants in configuration are changed there: declare a new one.
            ("put", "/v1/tenants/{tenant}") => {
                let path = format!("/v1/tenants/api-{unique}");
                return (path, Some(json!({"repositories": [format!("acme/api-{unique}-*")]})));
            }
            ("delete", "/v1/tenants/{tenant}") => {
                let path = format!("/v1/tenants/api-{unique}");
                self.admin("PUT", &path, json!({"repositories": [format!("acme/api-{unique}-*")]})).await;
                return (path, None);
            }
            ("put", "/v1/tenants/{tenant}/secrets/{name}") => Some(json!({"value": "matrix-secret-value"})),
            ("delete", "/v1/tenants/{tenant}/secrets/{name}") => {
                let path = path.replace(name.as_str(), &unique);
                self.admin("PUT", &path, json!({"value": "matrix-secret-value"})).await;
                return (path, None);
            }
            ("post", "/v1/rbac/bindings") => {
                Some(json!({"subject": "user:nobody@example.com", "role": "requester", "scope": "global"}))
            }
            ("delete", "/v1/rbac/bindings/{id}") => {
                let body = json!({"subject": "user:nobody@example.com", "role": "requester", "scope": "global"});
                let id = self.admin("POST", "/v1/rbac/bindings", body).await["id"].as_str().unwrap().to_owned();
                return (path.replace("{id}", &id), None);
            }
            ("post", "/v1/people") => Some(json!({"email": format!("p-{unique}@example.com")})),
            ("post", "/v1/service-accounts") => Some(json!({"name": format!("sa-{unique}"), "owner": "o@example.com"})),
            ("post", "/v1/service-accounts/{name}/tokens") => {
                Some(json!({"scopes": ["runs.create"], "expires_in_days": 1}))
            }
            ("delete", "/v1/service-accounts/{name}/tokens/{id}") => {
                let body = json!({"scopes": ["runs.create"], "expires_in_days": 1});
                let issued = self.admin("POST", &format!("/v1/service-accounts/{name}/tokens"), body).await;
                return (path.replace("{id}", issued["id"].as_str().unwrap()), None);
            }
            ("post", "/v1/security/revoke") => Some(json!({"user": "someone@example.com", "reason": "matrix"})),
            ("post", "/v1/users/{user}/deactivate") | ("post", "/v1/users/{user}/activate") => {
                Some(json!({"reason": "matrix"}))
            }
            ("post", "/v1/legal-holds") => Some(json!({"target": {"tenant": TENANT}, "reason": "matrix"})),
            ("post", "/v1/legal-holds/{id}/release") => {
                let body = json!({"target": {"tenant": TENANT}, "reason": "matrix"});
                let id = self.admin("POST", "/v1/legal-holds", body).await["id"].as_str().unwrap().to_owned();
                return (path.replace("{id}", &id), Some(json!({"reason": "matrix"})));
            }
            ("post", "/v1/audit/exports") => Some(json!({"since_ms": common::audit::now_ms() - 1000})),
            ("get", "/v1/audit/exports/{id}" | "/v1/audit/exports/{id}/verify" | "/v1/audit/exports/{id}/bundle") => {
                return (path.replace("{id}", &self.finished_export().await), None);
            }
            ("get", _) => None,
            _ => panic!("no fixture for {method} {template}: add one to the permission matrix test"),
        };
        (path, body)
    }
}

async fn status(app: &TestApp, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> u16 {
    let mut request = app.client.request(method.to_uppercase().parse().unwrap(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status >= 400 {
        let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(kind.as_deref(), Some("application/problem+json"), "{method} {path}: {status}");
    }
    status
}

#[tokio::test]
async fn every_operation_answers_every_role_at_every_scope_as_the_matrix_says() {
    let issuer = OidcIssuer::start().await;
    let oidc = issuer.config_json(&json!({}));
    // Our tenant owns our repository; the other tenant owns the other one.
    let app = spawn_app(&[
        ("PADDOCK_IDENTITY__OIDC", oidc.as_str()),
        ("PADDOCK_SECRETS__ENCRYPTION_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        ("PADDOCK_TENANTS__MATRIX__REPOSITORIES", r#"["acme/matrix-*"]"#),
        ("PADDOCK_TENANTS__ELSEWHERE__REPOSITORIES", r#"["acme/elsewhere"]"#),
    ])
    .await;
    let repo = app.repo_named("matrix-", &[("README.md", b"# matrix\n")]);
    let (owner, name) = repo.split_once('/').map(|(o, n)| (o.to_owned(), n.to_owned())).unwrap();
    // `{name}` doubles as the service account's and the secret's name.
    let world = World { app, repo: repo.clone(), owner_name: (owner, name.clone()) };
    world.app.declare_person("o@example.com").await;
    world.admin("POST", "/v1/service-accounts", json!({"name": name, "owner": "o@example.com"})).await;
    world.admin("PUT", &format!("/v1/policies/tenants/{TENANT}"), json!({"approval": "always"})).await;

    // One person per role and scope, bound through the API.
    let mut callers = Vec::new();
    for role in Role::ALL {
        for at in At::ALL {
            let person = format!("{}-{at:?}", role.as_str()).to_lowercase();
            let binding =
                json!({"subject": format!("user:{person}@example.com"), "role": role, "scope": at.scope(&repo)});
            world.admin("POST", "/v1/rbac/bindings", binding).await;
            callers.push((role, at, issuer.token(&person, &[])));
        }
    }

    let doc: Value = serde_json::from_str(&api::openapi::document_json()).unwrap();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let needs: Vec<Permission> = op["security"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r.get("bearer"))
                .flat_map(|scopes| scopes.as_array().unwrap().iter().map(|s| s.as_str().unwrap().parse().unwrap()))
                .collect();
            if needs.is_empty() {
                continue; // health probes and the signed webhook: not bearer operations
            }
            let reach = reach(method, template);
            let (path, body) = world.request(method, template).await;
            assert_eq!(
                status(&world.app, method, &path, None, body.as_ref()).await,
                401,
                "{method} {path} without a token"
            );
            for (role, at, token) in &callers {
                let holds = role.permissions().iter().any(|p| needs.contains(p));
                let allowed = holds
                    && match reach {
                        Reach::Global => matches!(at, At::Global),
                        Reach::WholeTenant => matches!(at, At::Global | At::OurTenant),
                        Reach::OurRepo => at.covers_our_objects(),
                        Reach::Filtered => true,
                    };
                let (path, body) = world.request(method, template).await;
                let got = status(&world.app, method, &path, Some(token), body.as_ref()).await;
                if allowed {
                    assert!(
                        (200..300).contains(&got),
                        "{role:?} at {at:?}: {method} {path} answered {got}, expected success"
                    );
                } else {
                    assert_eq!(got, 403, "{role:?} at {at:?}: {method} {path} answered {got}, expected 403");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 30 * 30, "only {checked} checks");
    issuer.stop().await;
}
