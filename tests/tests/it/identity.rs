//! Identity: OIDC bearer tokens from a local issuer, roles from groups,
//! permissions checked by each route's extractor, deny by default.

use serde_json::{Value, json};
use tests::oidc::OidcIssuer;
use tests::{TestApp, spawn_app};

pub(crate) async fn app_with(issuer: &OidcIssuer) -> TestApp {
    app_with_env(issuer, &[]).await
}

pub(crate) async fn app_with_env(issuer: &OidcIssuer, env: &[(&str, &str)]) -> TestApp {
    let bindings = json!({
        "devs": ["requester"], "sre": ["log-viewer"], "platform": ["admin"], "security": ["auditor"],
        "leads": ["approver"],
    });
    let oidc = issuer.config_json(&bindings);
    let mut vars = vec![("PADDOCK_IDENTITY__OIDC", oidc.as_str())];
    vars.extend_from_slice(env);
    spawn_app(&vars).await
}

pub(crate) async fn call(app: &TestApp, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
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

/// Bootstrap (break-glass) call helper.
pub(crate) async fn admin(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(app, method, path, &app.token, body).await
}

pub(crate) async fn bind(app: &TestApp, subject: &str, role: &str, scope: &str) -> String {
    let body = json!({"subject": subject, "role": role, "scope": scope});
    let (status, binding) = admin(app, "POST", "/v1/rbac/bindings", Some(body)).await;
    assert_eq!(status, 201, "{binding}");
    binding["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn audit(app: &TestApp, auditor: &str, query: &str) -> Vec<Value> {
    let (status, events) = call(app, "GET", &format!("/v1/audit/events?{query}"), auditor, None).await;
    assert_eq!(status, 200, "{events}");
    events.as_array().unwrap().clone()
}

#[tokio::test]
async fn role_bindings_made_through_the_api_are_scoped_and_audited() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let (mine, other) = (app.repo(&[("README.md", b"# a\n")]), app.repo(&[("README.md", b"# b\n")]));
    let run_on = |repo: &str, tenant: &str| json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}, "tenant": tenant});
    let carol = issuer.token("carol", &[]);
    assert_eq!(call(&app, "POST", "/v1/runs", &carol, Some(run_on(&mine, "default"))).await.0, 403);

    // An admin (from the identity provider) binds carol as requester on one repository.
    let pat = issuer.token("pat", &["platform"]);
    let body = json!({"subject": "user:carol@example.com", "role": "requester", "scope": format!("repo:{mine}")});
    let (status, binding) = call(&app, "POST", "/v1/rbac/bindings", &pat, Some(body)).await;
    assert_eq!(status, 201, "{binding}");
    let (status, accepted) = call(&app, "POST", "/v1/runs", &carol, Some(run_on(&mine, "default"))).await;
    assert_eq!(status, 202, "{accepted}");
    let (status, problem) = call(&app, "POST", "/v1/runs", &carol, Some(run_on(&other, "default"))).await;
    assert_eq!(status, 403, "a repository-scoped requester started a run on another repository");
    assert!(problem["detail"].as_str().unwrap().contains(&other), "{problem}");
    // Runs elsewhere are neither shown nor listed to her.
    let (_, elsewhere) = admin(&app, "POST", "/v1/runs", Some(run_on(&other, "default"))).await;
    let elsewhere = elsewhere["id"].as_str().unwrap();
    assert_eq!(call(&app, "GET", &format!("/v1/runs/{elsewhere}"), &carol, None).await.0, 403);
    assert_eq!(call(&app, "POST", &format!("/v1/runs/{elsewhere}/cancel"), &carol, None).await.0, 403);
    let (_, listed) = call(&app, "GET", "/v1/runs", &carol, None).await;
    let repos: Vec<&str> =
        listed["runs"].as_array().unwrap().iter().map(|r| r["repository"].as_str().unwrap()).collect();
    assert!(!repos.is_empty() && repos.iter().all(|r| *r == mine), "{repos:?}");

    // A tenant binding covers every repository of that tenant, no other tenant.
    let dave = issuer.token("dave", &[]);
    bind(&app, "user:dave@example.com", "requester", "tenant:payments").await;
    assert_eq!(call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/payments-api", "payments"))).await.0, 202);
    assert_eq!(call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/search-api", "search"))).await.0, 403);
    // Group bindings work the same way.
    bind(&app, "group:search-devs", "requester", "tenant:search").await;
    let erin = issuer.token("erin", &["search-devs"]);
    assert_eq!(call(&app, "POST", "/v1/runs", &erin, Some(run_on("acme/search-api", "search"))).await.0, 202);

    // Unbinding takes effect at once.
    let id = binding["id"].as_str().unwrap();
    assert_eq!(call(&app, "DELETE", &format!("/v1/rbac/bindings/{id}"), &pat, None).await.0, 204);
    assert_eq!(call(&app, "POST", "/v1/runs", &carol, Some(run_on(&mine, "default"))).await.0, 403);

    // Bad bindings name the field.
    let (status, problem) = admin(
        &app,
        "POST",
        "/v1/rbac/bindings",
        Some(json!({"subject": "user:x", "role": "requester", "scope": "org:acme"})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    let (status, _) = admin(
        &app,
        "POST",
        "/v1/rbac/bindings",
        Some(json!({"subject": "service-account:ghost", "role": "requester", "scope": "global"})),
    )
    .await;
    assert_eq!(status, 404);
    // Carol cannot bind herself anything.
    let body = json!({"subject": "user:carol@example.com", "role": "admin", "scope": "global"});
    assert_eq!(call(&app, "POST", "/v1/rbac/bindings", &carol, Some(body)).await.0, 403);

    // The auditor sees who changed what, before and after.
    let auditor = issuer.token("sue", &["security"]);
    let created = audit(&app, &auditor, &format!("object={id}")).await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(created[0]["action"], "binding.create");
    assert_eq!(created[0]["actor"]["principal"], "pat@example.com");
    assert_eq!(created[0]["actor"]["method"], "oidc");
    assert!(created[0]["before"].is_null());
    assert_eq!(created[0]["after"]["subject"], "user:carol@example.com");
    assert_eq!(created[0]["after"]["scope"], format!("repo:{mine}"));
    assert_eq!(created[1]["action"], "binding.delete");
    assert_eq!(created[1]["before"]["role"], "requester");
    assert!(created[1]["after"].is_null());
    // Nobody else reads the audit trail: not even the admin.
    assert_eq!(call(&app, "GET", "/v1/audit/events", &pat, None).await.0, 403);
    issuer.stop().await;
}

#[tokio::test]
async fn service_account_tokens_are_shown_once_scoped_and_act_for_a_named_person() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    app.declare_person("olivia@example.com").await;
    let account = json!({"name": "portal", "description": "Developer portal", "owner": "olivia@example.com"});
    assert_eq!(admin(&app, "POST", "/v1/service-accounts", Some(account.clone())).await.0, 201);
    assert_eq!(admin(&app, "POST", "/v1/service-accounts", Some(account)).await.0, 409);
    bind(&app, "service-account:portal", "requester", &format!("repo:{repo}")).await;
    bind(&app, "service-account:portal", "approver", "global").await;
    let (status, problem) = admin(
        &app,
        "POST",
        "/v1/service-accounts/portal/tokens",
        Some(json!({"scopes": ["tools.approve"], "expires_in_days": 1})),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("scopes")), "{problem}");
    let (status, issued) = admin(
        &app,
        "POST",
        "/v1/service-accounts/portal/tokens",
        Some(json!({"scopes": ["runs.create", "logs.read"], "expires_in_days": 30})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pdk_sa_") && token.len() == 53, "{token}");
    assert!(common::identity::is_service_token(&token));
    let token_id = issued["id"].as_str().unwrap().to_owned();

    // Shown once: listings and the audit trail carry its id and last four characters, never the value.
    let (_, listed) = admin(&app, "GET", "/v1/service-accounts/portal/tokens", None).await;
    assert_eq!(listed[0]["last4"], &token[token.len() - 4..]);
    let events = app.queue.identity().audit_events(&Default::default(), 1000).await.unwrap();
    let everything = serde_json::to_string(&events).unwrap() + &listed.to_string();
    assert!(!everything.contains(&token), "the token was stored or shown again");

    // It must name the person; the run records both.
    let run = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    let (status, problem) = call(&app, "POST", "/v1/runs", &token, Some(run.clone())).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("on_behalf_of")), "{problem}");
    // Bob is a known person (he signed in) who may request runs.
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("bob", &["devs"]), None).await.0, 200);
    let mut for_bob = run.clone();
    for_bob["on_behalf_of"] = json!("bob@example.com");
    let (status, accepted) = call(&app, "POST", "/v1/runs", &token, Some(for_bob)).await;
    assert_eq!(status, 202, "{accepted}");
    let shown = app.run(accepted["id"].as_str().unwrap()).await;
    assert_eq!(shown["requested_by"], "bob@example.com");
    assert_eq!(shown["via"], "service-account:portal");
    // People cannot claim to act for someone else.
    let mut spoofed = run.clone();
    spoofed["on_behalf_of"] = json!("bob@example.com");
    bind(&app, "user:carol@example.com", "requester", "global").await;
    let carol = issuer.token("carol", &[]);
    assert_eq!(call(&app, "POST", "/v1/runs", &carol, Some(spoofed)).await.0, 400);

    // Nothing beyond its bindings; and it never approves, though bound as an approver.
    assert_eq!(call(&app, "GET", "/v1/queue", &token, None).await.0, 403);
    let approve = format!("/v1/runs/{}/approve", accepted["id"].as_str().unwrap());
    assert_eq!(call(&app, "POST", &approve, &token, None).await.0, 403);

    // A typo is told apart from a revoked token by its checksum.
    let mut typo: Vec<char> = token.chars().collect();
    typo[12] = if typo[12] == 'x' { 'y' } else { 'x' };
    let (status, problem) = call(&app, "GET", "/v1/runs", &typo.into_iter().collect::<String>(), None).await;
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("checksum"), "{problem}");

    // Revoked: refused at once, and the change is audited.
    let (status, revoked) =
        admin(&app, "DELETE", &format!("/v1/service-accounts/portal/tokens/{token_id}"), None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_by"], "bootstrap-admin");
    let (status, problem) = call(&app, "GET", "/v1/runs", &token, None).await;
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("revoked"), "{problem}");
    let actions: Vec<String> = app
        .queue
        .identity()
        .audit_events(&Default::default(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.object.id == token_id)
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token.create", "token.revoke"]);

    // Expired tokens are refused.
    let expired_token = common::identity::new_service_token();
    let record = store::identity::TokenRecord {
        id: "expired-one".to_owned(),
        account: "portal".to_owned(),
        scopes: vec![common::identity::Permission::RunsCreate],
        expires_at_ms: common::audit::now_ms() - 1,
        last4: "abcd".to_owned(),
        created_by: "test".to_owned(),
        created_at_ms: 0,
        revoked_at_ms: None,
        revoked_by: None,
    };
    let event = common::audit::AuditEvent::new(
        "token.create",
        common::audit::Actor { principal: "test".into(), method: "test".into(), via: None },
        common::audit::ObjectRef::new("token", "expired-one"),
    );
    app.queue.identity().add_token(&api::auth::token_hash_hex(&expired_token), &record, &event).await.unwrap();
    let (status, problem) = call(&app, "GET", "/v1/runs", &expired_token, None).await;
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");
    issuer.stop().await;
}

#[tokio::test]
async fn revocation_refuses_tokens_at_once_and_cancels_the_runs_they_started() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let run = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    let alice = issuer.token("alice", &["devs"]);
    let (_, queued) = call(&app, "POST", "/v1/runs", &alice, Some(run.clone())).await;
    let alices_run = queued["id"].as_str().unwrap().to_owned();
    let (_, queued) = call(&app, "POST", "/v1/runs", &app.token, Some(run.clone())).await;
    let someone_elses = queued["id"].as_str().unwrap().to_owned();

    // Only admins and security responders revoke.
    let revoke_alice = json!({"user": "alice@example.com", "reason": "laptop stolen"});
    assert_eq!(call(&app, "POST", "/v1/security/revoke", &alice, Some(revoke_alice.clone())).await.0, 403);
    let pat = issuer.token("pat", &["platform"]);
    let (status, report) = call(&app, "POST", "/v1/security/revoke", &pat, Some(revoke_alice)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["cancelled_runs"], json!([alices_run]));
    // Her token fails at once; her run ended cancelled with the revoker recorded; others' runs go on.
    assert_eq!(call(&app, "GET", "/v1/runs", &alice, None).await.0, 401);
    let shown = app.run(&alices_run).await;
    assert_eq!(shown["state"], "cancelled");
    assert_eq!(shown["stop_reason"], json!({"kind": "cancelled", "by": "pat@example.com"}));
    assert_eq!(app.run(&someone_elses).await["state"], "queued");
    // Signing in again (a token issued after the revocation) works.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("alice", &["devs"]), None).await.0, 200);

    // Deactivation refuses every token until reactivated.
    let (status, _) =
        call(&app, "POST", "/v1/users/alice@example.com/deactivate", &pat, Some(json!({"reason": "left"}))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, problem) = call(&app, "GET", "/v1/runs", &issuer.token("alice", &["devs"]), None).await;
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("deactivated"), "{problem}");
    assert_eq!(
        call(&app, "POST", "/v1/users/alice@example.com/activate", &pat, Some(json!({"reason": "rehired"}))).await.0,
        200
    );
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("alice", &["devs"]), None).await.0, 200);

    // All service-account tokens at once.
    app.declare_person("olivia@example.com").await;
    admin(&app, "POST", "/v1/service-accounts", Some(json!({"name": "ci", "owner": "olivia@example.com"}))).await;
    bind(&app, "service-account:ci", "requester", "global").await;
    let (_, issued) = admin(
        &app,
        "POST",
        "/v1/service-accounts/ci/tokens",
        Some(json!({"scopes": ["runs.create"], "expires_in_days": 1})),
    )
    .await;
    let sa = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("bob", &["devs"]), None).await.0, 200);
    let mut for_bob = run.clone();
    for_bob["on_behalf_of"] = json!("bob@example.com");
    let (_, queued) = call(&app, "POST", "/v1/runs", &sa, Some(for_bob)).await;
    let sa_run = queued["id"].as_str().unwrap().to_owned();
    let (status, report) =
        admin(&app, "POST", "/v1/security/revoke", Some(json!({"service_accounts": "*", "reason": "key leak"}))).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["revoked_tokens"], json!([issued["id"]]));
    assert_eq!(report["cancelled_runs"], json!([sa_run]));
    assert_eq!(call(&app, "GET", "/v1/runs", &sa, None).await.0, 401);
    assert_eq!(app.run(&someone_elses).await["state"], "queued");
    let (status, problem) = admin(&app, "POST", "/v1/security/revoke", Some(json!({"reason": "?"}))).await;
    assert_eq!(status, 400, "{problem}");
    issuer.stop().await;
}

#[tokio::test]
async fn runs_held_for_approval_start_only_once_someone_else_approves() {
    let issuer = OidcIssuer::start().await;
    let app = app_with_env(&issuer, &[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo approved work")]).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let (status, _) = admin(&app, "PUT", "/v1/policies/tenants/default", Some(json!({"approval": "always"}))).await;
    assert_eq!(status, 200);
    let worker = app.spawn_worker().await;
    // Lee both requests and approves, so he requests here and someone else approves.
    let lee = issuer.token("lee", &["devs", "leads"]);
    let run = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    let (status, accepted) = call(&app, "POST", "/v1/runs", &lee, Some(run)).await;
    assert_eq!((status, accepted["state"].as_str()), (202, Some("awaiting_approval")), "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/runs/{id}/approve");
    // Held: a worker with nothing else to do leaves it alone.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(app.run(&id).await["state"], "awaiting_approval");

    let (status, problem) = call(&app, "POST", &approve, &lee, None).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "https://paddock.dev/problems/self-approval");
    let alice = issuer.token("alice", &["devs"]);
    assert_eq!(call(&app, "POST", &approve, &alice, None).await.0, 403, "a requester approved");
    let lina = issuer.token("lina", &["leads"]);
    let (status, approved) = call(&app, "POST", &approve, &lina, None).await;
    assert_eq!((status, approved["state"].as_str()), (200, Some("queued")), "{approved}");
    let (run, logs) = app.wait_for_success(&id).await;
    assert_eq!(run["approved_by"], "lina@example.com");
    assert!(logs.contains("approved work"), "{logs}");
    assert_eq!(call(&app, "POST", &approve, &lina, None).await.0, 409);
    let auditor = issuer.token("sue", &["security"]);
    let events = audit(&app, &auditor, &format!("object={id}&action=run.approve")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"]["principal"], "lina@example.com");
    worker.shutdown().await;
    issuer.stop().await;
}
