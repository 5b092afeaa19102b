//! Identity: OIDC bearer tokens from a local issuer, roles from groups,
//! permissions checked by each route's extractor, deny by default.

use serde_json::{Value, json};
use tests::oidc::OidcIssuer;
use tests::{TestApp, spawn_app};

async fn app_with(issuer: &OidcIssuer) -> TestApp {
    let bindings = json!({
        "devs": ["requester"], "sre": ["log-viewer"], "platform": ["admin"], "security": ["auditor"],
    });
    let oidc = issuer.config_json(&bindings);
    spawn_app(&[("PADDOCK_IDENTITY__OIDC", oidc.as_str())]).await
}

async fn call(app: &TestApp, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.client.request(method.parse().unwrap(), app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let is_problem = response.headers().get("content-type").is_some_and(|v| v == "application/problem+json");
    let body: Value = response.json().await.unwrap_or_default();
    if status >= 400 {
        assert!(is_problem, "{status} without problem+json: {body}");
    }
    (status, body)
}

#[tokio::test]
async fn tokens_that_are_expired_misaddressed_unknown_or_unsigned_are_refused() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let good = issuer.claims("alice", &["devs"]);
    let mut expired = good.clone();
    expired["exp"] = json!(good["iat"].as_u64().unwrap() - 3600);
    let mut audience = good.clone();
    audience["aud"] = json!("another-api");
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("https://evil.example.com");
    let cases = [
        ("expired", issuer.sign(&expired, false)),
        ("wrong audience", issuer.sign(&audience, false)),
        ("wrong issuer", issuer.sign(&wrong_issuer, false)),
        ("unknown key", issuer.sign(&good, true)),
        ("alg none", issuer.unsigned(&good)),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in cases {
        let (status, problem) = call(&app, "GET", "/v1/queue", &token, None).await;
        assert_eq!(status, 401, "{what} was accepted: {problem}");
        assert_eq!(problem["type"], "https://paddock.dev/problems/unauthorized", "{what}");
    }
    let (status, _) = call(&app, "GET", "/v1/runs", &issuer.token("alice", &["devs"]), None).await;
    assert_eq!(status, 200, "a valid token was refused");
    issuer.stop().await;
}

#[tokio::test]
async fn roles_from_groups_grant_separate_permissions_and_nothing_else() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let run = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    let (alice, sam, pat, nobody) = (
        issuer.token("alice", &["devs"]),
        issuer.token("sam", &["sre"]),
        issuer.token("pat", &["platform"]),
        issuer.token("noel", &["unbound-group"]),
    );

    // A requester requests runs, recorded as the person, and sees them...
    let (status, accepted) = call(&app, "POST", "/v1/runs", &alice, Some(run.clone())).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (status, shown) = call(&app, "GET", &format!("/v1/runs/{id}"), &alice, None).await;
    assert_eq!((status, shown["requested_by"].as_str()), (200, Some("alice@example.com")));
    // ...but reads no logs and manages nothing.
    assert_eq!(call(&app, "GET", &format!("/v1/runs/{id}/logs"), &alice, None).await.0, 403);
    assert_eq!(call(&app, "GET", "/v1/limits", &alice, None).await.0, 403);
    // A log viewer reads, and does not request.
    assert_ne!(call(&app, "GET", &format!("/v1/runs/{id}/logs"), &sam, None).await.0, 403);
    let (status, problem) = call(&app, "POST", "/v1/runs", &sam, Some(run.clone())).await;
    assert_eq!(status, 403);
    assert!(problem["detail"].as_str().unwrap().contains("runs.create"), "{problem}");
    // An admin configures, but neither requests runs nor reads logs.
    assert_eq!(call(&app, "GET", "/v1/llm-policy", &pat, None).await.0, 200);
    assert_eq!(call(&app, "GET", "/v1/limits", &pat, None).await.0, 200);
    assert_eq!(call(&app, "POST", "/v1/runs", &pat, Some(run.clone())).await.0, 403);
    assert_eq!(call(&app, "GET", &format!("/v1/runs/{id}/logs"), &pat, None).await.0, 403);
    // No binding, no permission.
    for (method, path) in [("GET", "/v1/runs"), ("GET", "/v1/queue"), ("GET", "/v1/llm-policy")] {
        assert_eq!(call(&app, method, path, &nobody, None).await.0, 403, "{method} {path}");
    }
    assert_eq!(call(&app, "POST", "/v1/runs", &nobody, Some(run)).await.0, 403);
    issuer.stop().await;
}
